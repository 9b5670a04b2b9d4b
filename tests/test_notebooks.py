"""The notebooks run top to bottom on the small survey (resuming the session's demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute_notebook(path: Path, cwd: Path) -> Any:
    """Run a notebook in a fresh kernel; returns the executed notebook (raises on error)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


def _outputs(nb: Any, kind: str) -> list[Any]:
    return [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})
    ]


def test_walkthrough(demo_run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LSSTLITE_DEMO_DIR", str(demo_run.workdir))
    monkeypatch.setenv("LSSTLITE_DEMO_SEED", "3")
    nb = execute_notebook(NOTEBOOKS / "01_walkthrough.ipynb", tmp_path)
    # the calexp, the PSF stamps, the quality plot, the colour coadd and the CMD
    assert len(_outputs(nb, "image/png")) >= 5
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "objects;" in text and "unflagged" in text


def test_slurm_notebook_builds_its_graph(
    demo_run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without SLURM here it builds the graph only; tests/pipe/test_slurm.py runs it on a
    real single-node SLURM."""
    monkeypatch.setenv("LSSTLITE_DEMO_DIR", str(demo_run.workdir))
    monkeypatch.setenv("LSSTLITE_SLURM", "0")
    nb = execute_notebook(NOTEBOOKS / "02_slurm.ipynb", tmp_path)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "isr" in text and "calibrate" in text
