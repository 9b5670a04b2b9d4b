"""The documentation builds with Sphinx, warnings as errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    if (
        shutil.which("sphinx-build") is None
        and not (Path(sys.executable).parent / "sphinx-build").exists()
    ):
        pytest.fail("sphinx-build is missing: install the test extra (pip install '.[test]')")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-q",
            "-W",
            "--keep-going",
            "-b",
            "html",
            str(ROOT / "docs"),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (tmp_path / "html" / "index.html").is_file()
    assert (tmp_path / "html" / "guide" / "migrating.html").is_file()
