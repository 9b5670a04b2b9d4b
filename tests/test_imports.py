"""Importing the data model and the coadd stays light: heavy modules load on first use."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lsstlite

#: Source tree of the lsstlite under test (the subprocess must import the same one).
SRC = str(Path(lsstlite.__file__).resolve().parents[1])

#: Modules that ``import lsstlite.data`` and ``lsstlite.stages.coadd`` must not load (each
#: was once imported eagerly on that path). astropy.units / astropy.coordinates are not
#: listed: ``astropy.wcs`` imports them.
HEAVY = [
    "matplotlib",
    "pyarrow.parquet",
    "scipy.interpolate",
    "scipy.ndimage",
    "scipy.optimize",
    "scipy.signal",
    "scipy.stats",
    "sep",
    "lsstlite.pipe",
    "lsstlite.repo",
    "lsstlite.stages.calibs",
    "lsstlite.stages.characterize._kernels",
    "lsstlite.stages.characterize.ops",
    "lsstlite.stages.isr",
]

#: Packages whose re-exports are imported lazily (module ``__getattr__``).
LAZY_PACKAGES = [
    "lsstlite",
    "lsstlite.data",
    "lsstlite.repo",
    "lsstlite.stages.characterize",
    "lsstlite.stages.coadd",
    "lsstlite.stages.skymap",
    "lsstlite.stages.warp",
]

#: What the command line must not load before it knows the sub-command: every command
#: pays for its parser, so the parser is built from light modules only.
CLI_HEAVY = ["xarray", "pandas", "pyarrow", "scipy", "dask.array", "numba", "zarr", "astropy"]


def _run(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def test_coadd_import_is_light() -> None:
    code = (
        "import json, sys\n"
        "import lsstlite.data\n"
        "from lsstlite.data.skymap import PatchGeometry\n"
        "from lsstlite.stages.coadd import coadd_exposures\n"
        "import xarray as xr\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps({'loaded': [m for m in heavy if m in sys.modules],"
        " 'accessor': hasattr(xr.Dataset, 'lsst'),"
        " 'file': lsstlite.data.__file__}))\n"
    )
    result = json.loads(_run(code).splitlines()[-1])
    assert result["file"].startswith(SRC)
    assert result["loaded"] == []
    assert result["accessor"], "import lsstlite.data must register the ds.lsst accessor"


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_reexports_resolve(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_command_line_parser_is_light() -> None:
    code = (
        "import json, sys\n"
        "from lsstlite.cli.main import build_parser\n"
        "build_parser()\n"
        f"heavy = {CLI_HEAVY!r}\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    assert json.loads(_run(code).splitlines()[-1]) == []


@pytest.mark.parametrize("order", ["lsstlite first", "xarray first"])
def test_accessor_registered_in_either_order(order: str) -> None:
    imports = ["import lsstlite.data", "import xarray as xr"]
    if order == "xarray first":
        imports.reverse()
    code = "\n".join([*imports, "import xarray as xr", "print(hasattr(xr.Dataset(), 'lsst'))"])
    assert _run(code).splitlines()[-1] == "True"
