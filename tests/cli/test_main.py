"""The command line: help, version, errors as one line with exit code 2, the demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lsstlite
from lsstlite.cli.main import main


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in (
        "sim",
        "demo",
        "run",
        "qgraph",
        "pipeline",
        "ingest",
        "query",
        "certify",
        "export",
    ):
        assert command in out, command


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lsstlite", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"lsstlite {lsstlite.__version__}"


def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["qgraph", str(tmp_path / "nothing"), "-p", "x.yaml", "-i", "a", "-o", "b"])
    err = capsys.readouterr().err
    assert code == 2 and "not an lsstlite repository" in err and "Traceback" not in err


def test_demo_runs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lsstlite.demo import run_demo

    result = run_demo(tmp_path / "demo", preset="small", seed=3)
    assert (result.sim / "truth" / "objects.parquet").is_file()
    assert (result.repo / "zarr.json").is_file()
    assert result.pictures and all(p.stat().st_size > 10_000 for p in result.pictures)
    assert "science" in result.figures["raws in the repository"]
    again = run_demo(tmp_path / "demo", preset="small", seed=3)
    out = capsys.readouterr().out
    assert "reused" in out and "already there" in out
    assert again.figures == result.figures
