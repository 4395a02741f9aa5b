"""Progress bars are drawn on a terminal only, unless --progress asks for them."""

from __future__ import annotations

import pytest

from lottery.cli.main import main

TRAIN = ["train", "--model", "lenet_32", "--dataset", "synthetic", "--steps", "20"]
TRAIN += ["--batch-size", "16", "--device", "cpu"]


@pytest.mark.parametrize(("flags", "drawn"), [([], False), (["--progress"], True)])
def test_bars_only_on_a_terminal_unless_asked(tmp_path, capsys, flags, drawn):
    assert main([*TRAIN, *flags, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert ("it/s" in err) is drawn, err


def test_progress_and_no_progress_exclude_each_other(tmp_path, capsys):
    assert main([*TRAIN, "--progress", "--no-progress", "--out", str(tmp_path / "r")]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
