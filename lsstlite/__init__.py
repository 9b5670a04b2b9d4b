"""lsstlite: survey image processing, from raw frames to multi-band catalogs, on xarray, zarr and Dask."""

from importlib.metadata import PackageNotFoundError, version

from lsstlite import data
from lsstlite.data import make_exposure, open_exposure_zarr, read_exposure_fits

try:
    __version__ = version("lsstlite")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "data", "make_exposure", "open_exposure_zarr", "read_exposure_fits"]
