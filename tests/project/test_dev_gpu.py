"""`./dev gpu-pack` and `./dev gpu` on CPU: everything but the CUDA calls (a rehearsal in a copy)."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
import torch

from experiments.benchmarks.bench_disk import round_bytes
from lottery.datasets.fashion_mnist import DEBIAN_FASHION_MNIST
from lottery.datasets.loading import load_dataset
from tests.datasets.test_datasets import patch_files

REPO = Path(__file__).resolve().parents[2]
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

# Run inside the copy by the rehearsal: what the suite sees under ./dev gpu, and a planted failure.
PROBE = """
import os
import shutil
from pathlib import Path

import lottery

ROOT = Path(__file__).resolve().parents[1]


def test_environment_of_the_run():
    import lottery_gpu_probe

    assert lottery_gpu_probe.VALUE == 42
    assert Path(lottery.__file__).resolve() == ROOT / "lottery" / "__init__.py"
    assert Path(os.environ["LOTTERY_DATA"]).resolve() == ROOT / ".data"
    assert os.environ["LOTTERY_REQUIRE_CUDA"] == "0"
    assert "lottery-gpu-site" in shutil.which("lottery")


def test_planted_failure():
    assert False, "planted"
"""


def dev(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`root/dev ARGS` with a clean environment (no $OUT, $PYTHONPATH or data settings inherited)."""
    drop = {"OUT", "PYTHONPATH", "LOTTERY_DATA", "LOTTERY_REQUIRE_CUDA", "LOTTERY_GPU_PYTHON"}
    base = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        ["bash", str(root / "dev"), *args],
        cwd=root,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in proc.stderr


def tiny_wheel(folder: Path) -> None:
    """A pure-Python wheel by hand, standing in for a carried one."""
    dist = "lottery_gpu_probe-0.1.dist-info"
    with zipfile.ZipFile(folder / "lottery_gpu_probe-0.1-py3-none-any.whl", "w") as z:
        z.writestr("lottery_gpu_probe/__init__.py", "VALUE = 42\n")
        z.writestr(
            f"{dist}/METADATA", "Metadata-Version: 2.1\nName: lottery-gpu-probe\nVersion: 0.1\n"
        )
        z.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{dist}/RECORD", "")


@pytest.fixture
def script_only(tmp_path) -> Path:
    """A folder holding only the dev script: enough for every check made before any work."""
    shutil.copy(REPO / "dev", tmp_path / "dev")
    return tmp_path


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A committed copy of the package with `./dev gpu-pack --no-wheels` run in it."""
    if not (DEBIAN_FASHION_MNIST / FILES[0]).is_file():
        pytest.skip(f"Fashion-MNIST not installed at {DEBIAN_FASHION_MNIST}")
    root = tmp_path_factory.mktemp("repo")
    for name in ("dev", "pyproject.toml", "README.md", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("lottery", "experiments"):
        shutil.copytree(REPO / name, root / name, ignore=skip)
    (root / "tests").mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", root / "tests" / "conftest.py")
    (root / "tests" / "test_probe.py").write_text(PROBE)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(root)]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], check=True)
    proc = dev(root, "gpu-pack", "--no-wheels")
    assert proc.returncode == 0, proc.stderr
    return root


def head(root: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_pack_copies_the_four_idx_files_and_the_loader_reads_them(packed, monkeypatch):
    got = sorted(p.name for p in (packed / ".data" / "fashion-mnist").iterdir())
    assert got == sorted(FILES)
    for f in FILES:
        assert filecmp.cmp(DEBIAN_FASHION_MNIST / f, packed / ".data/fashion-mnist" / f, False)
    assert (packed / ".data" / "COMMIT").read_text().strip() == head(packed)
    assert not (packed / ".whl").exists()
    status = ["git", "-C", str(packed), "status", "--porcelain", "--untracked-files=all"]
    assert (
        subprocess.run(status, capture_output=True, text=True, check=True).stdout == ""
    )  # ignored
    kwargs = dict(val_size=200, train_limit=1000, test_limit=300)
    debian = load_dataset("fashion_mnist", DEBIAN_FASHION_MNIST, **kwargs)
    # as under ./dev gpu: found through $LOTTERY_DATA alone, with no Debian copy to fall back on
    patch_files(monkeypatch, "fashion_mnist", system_dirs=(packed / "absent",))
    monkeypatch.setenv("LOTTERY_DATA", str(packed / ".data"))
    carried = load_dataset("fashion_mnist", **kwargs)
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(carried, field), getattr(debian, field)), field
    assert carried.train_x.shape == (1000, 1, 28, 28) and carried.test_y.shape == (300,)


def test_pack_refuses_bad_input_before_writing(script_only):
    one_line_error(dev(script_only, "gpu-pack", "--wheels"), "--wheels")
    proc = dev(script_only, "gpu-pack", "--no-wheels", LOTTERY_FASHION_MNIST_SRC=str(script_only))
    one_line_error(proc, str(script_only / FILES[0]), "dataset-fashion-mnist")
    assert sorted(p.name for p in script_only.iterdir()) == ["dev"]


def test_gpu_refuses_bad_input_and_a_machine_without_cuda(script_only):
    one_line_error(dev(script_only, "gpu", "--out"), "--out")
    one_line_error(dev(script_only, "gpu", "--bench-only", "nosuch"), "nosuch")
    missing = str(script_only / "no-python")
    one_line_error(dev(script_only, "gpu", LOTTERY_GPU_PYTHON=missing), missing)
    if torch.cuda.is_available():
        return  # the refusal below is for machines without a GPU
    proc = dev(script_only, "gpu", LOTTERY_GPU_PYTHON=sys.executable)
    one_line_error(proc, "sees no CUDA GPU", "--rehearse-on-cpu")
    assert sorted(p.name for p in script_only.iterdir()) == ["dev"]


@pytest.mark.slow
def test_cpu_rehearsal_writes_every_expected_file(packed, tmp_path):
    whl = packed / ".whl"
    whl.mkdir()
    tiny_wheel(whl)
    (whl / "PYTHON").write_text(PYTHON + "\n")
    out = tmp_path / "out"
    sha = head(packed)
    # as on a device machine, which receives the files but not the git history
    (packed / ".git").rename(packed / ".git-away")
    try:
        proc = dev(
            packed,
            "gpu",
            "--rehearse-on-cpu",
            "--quick",
            "--bench-only",
            "disk",
            "--out",
            str(out),
            "tests/test_probe.py",
            LOTTERY_GPU_PYTHON=sys.executable,
        )
    finally:
        (packed / ".git-away").rename(packed / ".git")
        shutil.rmtree(whl)
    # the planted failure makes the run fail, yet the benchmarks still run and everything is written
    assert proc.returncode == 1, proc.stderr
    expected = {"summary.md", "environment.txt", "install.log", "pytest.log", "junit.xml"}
    expected |= {"bench.md", "bench.log"}
    assert {p.name for p in out.iterdir()} == expected  # the device returns at most 8 files
    env = (out / "environment.txt").read_text().splitlines()
    assert f"commit: {sha} (as recorded by ./dev gpu-pack)" in env
    assert f"fashion-mnist: LOTTERY_DATA={packed / '.data'}" in env
    assert "carried wheels: 1 installed from .whl/" in env
    assert f"torch: {torch.__version__}" in "\n".join(env)
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    assert suite.get("skipped") == "0"
    ours, base = round_bytes()
    row = f"| disk per IMP round, LeNet-300-100 at 21% density | {ours / 1e6:.4g} MB | "
    row += f"{base / 1e6:.4g} MB |"
    assert row in (out / "bench.md").read_text()
    summary = (out / "summary.md").read_text()
    assert "mode: CPU rehearsal" in summary and f"commit: {sha}" in summary
    assert "## Tests (LOTTERY_REQUIRE_CUDA=0): exit status 1" in summary
    assert "FAILED tests/test_probe.py::test_planted_failure" in summary
    assert "1 failed, 1 passed" in summary
    assert "## Benchmarks (--device cpu --quick --only disk): exit status 0" in summary
    assert row in summary


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="shows the failure on a machine without one")
def test_require_cuda_turns_a_cuda_skip_into_a_failure():
    node = "tests/core/test_batches.py::test_batch_stream_same_batches_on_cuda"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", node]
    env = {k: v for k, v in os.environ.items() if k != "LOTTERY_REQUIRE_CUDA"}
    env["PYTHONPATH"] = str(REPO)
    plain = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and "1 skipped" in plain.stdout, plain.stdout
    strict = subprocess.run(
        cmd,
        cwd=REPO,
        env={**env, "LOTTERY_REQUIRE_CUDA": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert strict.returncode == 1 and "1 error" in strict.stdout, strict.stdout
    assert "LOTTERY_REQUIRE_CUDA=1 but this CUDA test would skip" in strict.stdout
