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
LAZY_PACKAGES = ["lsstlite", "lsstlite.stages.characterize"]


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
