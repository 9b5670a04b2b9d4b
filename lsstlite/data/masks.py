"""Mask planes: named bits of the integer ``mask`` variable of an exposure.

The plane name → bit mapping travels with the data, in ``ds["mask"].attrs["planes"]``,
so an exposure written by one version and read by another is never misread. New planes
may be added per exposure with :func:`add_mask_plane`; existing bits never move.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "DEFAULT_MASK_PLANES",
    "MASK_DTYPE",
    "add_mask_plane",
    "mask_bits",
    "mask_planes",
]

#: Integer type of the ``mask`` variable (31 usable bits).
MASK_DTYPE = np.dtype("int32")

#: The standard planes and their bits, with what each means.
DEFAULT_MASK_PLANES: dict[str, int] = {
    "BAD": 0,  # known bad pixel (defect list)
    "SAT": 1,  # saturated, including bleed trails
    "INTRP": 2,  # value interpolated over
    "CR": 3,  # cosmic ray
    "EDGE": 4,  # too close to the image edge for detection/measurement
    "DETECTED": 5,  # inside a positive detection footprint
    "DETECTED_NEGATIVE": 6,  # inside a negative detection footprint
    "SUSPECT": 7,  # above the linearity limit; value uncertain
    "NO_DATA": 8,  # no input data (off-detector in a warp, no inputs in a coadd)
    "CLIPPED": 9,  # a coadd input was clipped here
    "REJECTED": 10,  # an input was rejected here (artifact rejection)
    "SENSOR_EDGE": 11,  # near a detector edge in a warp
    "INEXACT_PSF": 12,  # the set of coadd inputs changes here: PSF model inexact
    "STREAK": 13,  # satellite or meteor trail
    "CROSSTALK": 14,  # crosstalk correction applied above threshold
    "UNMASKEDNAN": 15,  # NaN found in input and not otherwise masked
}


def mask_planes(mask: xr.DataArray | xr.Dataset | Any) -> dict[str, int]:
    """The plane name → bit mapping of an exposure (or its ``mask`` variable)."""
    var = mask["mask"] if "mask" in getattr(mask, "variables", ()) else mask
    planes = var.attrs.get("planes")
    if planes is None:
        raise KeyError("mask has no 'planes' attribute; was it made by lsstlite.data?")
    return {str(k): int(v) for k, v in planes.items()}


def mask_bits(planes: Mapping[str, int], names: str | Iterable[str]) -> int:
    """OR of the bit values of the named planes.

    Raises
    ------
    KeyError
        Naming the unknown plane and listing the known ones.
    """
    if isinstance(names, str):
        names = [names]
    value = 0
    for name in names:
        if name not in planes:
            raise KeyError(f"unknown mask plane {name!r}; known planes: {sorted(planes)}")
        value |= 1 << planes[name]
    return value


def add_mask_plane(ds: xr.Dataset, name: str) -> xr.Dataset:
    """Return ``ds`` with plane ``name`` defined (at the lowest free bit), metadata only."""
    planes = mask_planes(ds)
    if name in planes:
        return ds
    used = set(planes.values())
    free = next((b for b in range(MASK_DTYPE.itemsize * 8 - 1) if b not in used), None)
    if free is None:
        raise ValueError(f"no free bit left for mask plane {name!r}")
    out = ds.copy()
    out["mask"].attrs = {**ds["mask"].attrs, "planes": {**planes, name: free}}
    return out
