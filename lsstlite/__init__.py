"""lsstlite: survey image processing, from raw frames to multi-band catalogs, on xarray, zarr and Dask.

>>> import lsstlite as ll
>>> butler = ll.Butler("repo", collections="demo/drp")          # doctest: +SKIP
>>> calexp = butler.get("calexp", visit=101, detector=0, instrument="SimCam")  # doctest: +SKIP
>>> ll.run_pipeline("repo", "drp.yaml#step1", inputs=["SimCam/raw/all"], output="u/me/step1")  # doctest: +SKIP
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from lsstlite import data
from lsstlite._lazy import lazy_exports

if TYPE_CHECKING:
    from lsstlite.data import make_exposure, open_exposure_zarr, read_exposure_fits
    from lsstlite.pipe.clusters import local_cluster
    from lsstlite.pipe.run import run_pipeline
    from lsstlite.repo import Butler

try:
    __version__ = version("lsstlite")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = [
    "Butler",
    "__version__",
    "data",
    "local_cluster",
    "make_exposure",
    "open_exposure_zarr",
    "read_exposure_fits",
    "run_pipeline",
]

# Everything is imported on first use (``lsstlite.data`` is itself lazy), so that
# ``import lsstlite`` or one stage stays light: a command such as ``lsstlite coadd``
# loads xarray, pandas or the repository (pyarrow.parquet) only if it needs them.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "data": ["make_exposure", "open_exposure_zarr", "read_exposure_fits"],
        "pipe.clusters": ["local_cluster"],
        "pipe.run": ["run_pipeline"],
        "repo": ["Butler"],
    },
)
