"""The data model: exposures, masks, WCS, PSF models and their serialisation.

Nothing here computes on pixels. The ``ds.lsst`` accessor is registered as soon as both
this package and xarray are imported, in either order. The names below are imported on
first use, so that a light submodule (the WCS cards, the masks' bits, the PSF models,
the zarr chunk reader) does not load xarray, pandas and Dask's arrays with it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from lsstlite._lazy import lazy_exports

if TYPE_CHECKING:
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

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "exposure": [
            "AB_NJY_ZERO_POINT",
            "PhotoCalib",
            "VisitInfo",
            "make_exposure",
            "validate_exposure",
        ],
        "io": [
            "DEFAULT_CHUNKS",
            "ExposureReadError",
            "open_exposure_zarr",
            "read_exposure_fits",
            "write_exposure_fits",
            "write_exposure_zarr",
        ],
        "masks": [
            "DEFAULT_MASK_PLANES",
            "MASK_DTYPE",
            "add_mask_plane",
            "mask_bits",
            "mask_planes",
        ],
        "psf": ["GaussianPsf", "MoffatPsf", "PsfModel", "VaryingMoffatPsf", "psf_from_dict"],
        "wcs": ["make_tan_wcs", "wcs_from_cards", "wcs_to_cards"],
    },
)

_ACCESSOR = "lsstlite.data.accessor"


class _AccessorAfterXarray(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``xarray`` is first imported, it has the module's own
    loader import the accessor right after executing it (then leaves ``sys.meta_path``)."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "xarray":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            importlib.import_module(_ACCESSOR)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "xarray" in sys.modules:
    importlib.import_module(_ACCESSOR)
elif not any(isinstance(f, _AccessorAfterXarray) for f in sys.meta_path):
    sys.meta_path.insert(0, _AccessorAfterXarray())
