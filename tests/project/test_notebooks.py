"""The analysis notebooks: each runs end to end in quick mode and is committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"

# notebook -> figures it must draw under $LOTTERY_NOTEBOOK_OUT/<notebook>/figures/
FIGURES = {
    "mask_overlap": ("accuracy_vs_density.png", "overlap_heatmap.png", "layer_density.png"),
    "rewind_points": (
        "accuracy_vs_density.png",
        "rewind_overlap.png",
        "barrier_vs_step.png",
        "error_curves_dense.png",
        "error_curves_ticket.png",
    ),
    "schedules": ("schedule_curves.png", "gradual_pruning.png"),
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_committed_notebook_has_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_in_quick_mode(name, tmp_path, monkeypatch):
    # the kernel inherits this process's environment
    monkeypatch.setenv("LOTTERY_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("LOTTERY_NOTEBOOK_OUT", str(tmp_path))
    # tiny models gain nothing from intra-op threads, and idle spinning threads slow a busy CPU
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError if any cell fails
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= len(FIGURES[name])
    for figure in FIGURES[name]:
        path = tmp_path / name / "figures" / figure
        assert path.read_bytes().startswith(PNG_MAGIC), path
