"""Every notebook in notebooks/ runs top to bottom in fast mode, without writing into the repo.

The notebooks read ``GENLIT_FAST=1`` and shrink their budgets to seconds; the committed copies
keep the outputs of their full runs, which this test never writes back.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _files(folder: Path, recursive: bool) -> set[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return {p for p in found if "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts}


def _stdout(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )


def test_there_are_eight_notebooks():
    assert [p.name[:3] for p in NOTEBOOKS] == [f"0{i}_" for i in range(1, 9)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENLIT_FAST", "1")  # the kernel inherits the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    committed = path.read_bytes()
    before = _files(REPO, recursive=False) | _files(REPO / "notebooks", recursive=True)
    notebook = nbformat.reads(committed.decode(), as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,  # per cell
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},  # the working directory
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    assert "fast mode" in _stdout(notebook)
    assert path.read_bytes() == committed
    after = _files(REPO, recursive=False) | _files(REPO / "notebooks", recursive=True)
    assert after == before, f"the notebook wrote into the repository: {sorted(after - before)}"
