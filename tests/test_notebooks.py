"""Every notebook in notebooks/ runs top to bottom (nbclient, python3 kernel, cwd = repo root),
and the committed notebooks are what scripts/make_notebooks.py generates, without outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("plotly")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_expected_notebooks_exist() -> None:
    names = {p.name for p in NOTEBOOKS}
    for name in ("select_backward", "sm_contention", "comm_gap", "slow_step",
                 "reading_your_own_trace"):
        assert f"{name}.ipynb" in names


def test_notebooks_are_generated_and_have_no_outputs() -> None:
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "make_notebooks.py"),
                          "--check"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError on any error, naming the cell
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "Traceback" not in text
