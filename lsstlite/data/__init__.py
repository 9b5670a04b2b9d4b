"""The data model: exposures, masks, WCS, PSF models and their serialisation.

Nothing here computes on pixels. Importing this package registers the ``ds.lsst`` accessor.
"""

from lsstlite.data import accessor as _accessor  # noqa: F401  (registers ds.lsst)
from lsstlite.data.exposure import (
    AB_NJY_ZERO_POINT,
    PhotoCalib,
    VisitInfo,
    make_exposure,
    validate_exposure,
)
from lsstlite.data.io import (
    DEFAULT_CHUNKS,
    ExposureReadError,
    open_exposure_zarr,
    read_exposure_fits,
    write_exposure_fits,
    write_exposure_zarr,
)
from lsstlite.data.masks import (
    DEFAULT_MASK_PLANES,
    MASK_DTYPE,
    add_mask_plane,
    mask_bits,
    mask_planes,
)
from lsstlite.data.psf import GaussianPsf, MoffatPsf, PsfModel, VaryingMoffatPsf, psf_from_dict
from lsstlite.data.wcs import make_tan_wcs, wcs_from_cards, wcs_to_cards

__all__ = [
    "AB_NJY_ZERO_POINT",
    "DEFAULT_CHUNKS",
    "DEFAULT_MASK_PLANES",
    "MASK_DTYPE",
    "ExposureReadError",
    "GaussianPsf",
    "MoffatPsf",
    "PhotoCalib",
    "PsfModel",
    "VaryingMoffatPsf",
    "VisitInfo",
    "add_mask_plane",
    "make_exposure",
    "make_tan_wcs",
    "mask_bits",
    "mask_planes",
    "open_exposure_zarr",
    "psf_from_dict",
    "read_exposure_fits",
    "validate_exposure",
    "wcs_from_cards",
    "wcs_to_cards",
    "write_exposure_fits",
    "write_exposure_zarr",
]
