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
    "coadd_holes",
    "fill_holes",
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


def coadd_holes(mask: np.ndarray, planes: Mapping[str, int]) -> np.ndarray:
    """Pixels of a coadd that inputs covered but none could be used for: NO_DATA and
    INEXACT_PSF (the core of a star saturated in every visit, a defect under every one;
    the coadd adds the planes that kept the inputs out). All False without those planes."""
    if "NO_DATA" not in planes or "INEXACT_PSF" not in planes:
        return np.zeros(np.shape(mask), bool)
    both = mask_bits(planes, ["NO_DATA", "INEXACT_PSF"])
    return (np.asarray(mask) & both) == both


def fill_holes(values: np.ndarray, holes: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Fill ``holes`` of ``values`` in place from their edges inwards, and return which
    were filled.

    Each connected hole is peeled a ring at a time: every hole pixel next to a ``data``
    pixel (8-connected) gets the mean of those neighbours (already filled ones count),
    until none is left; a hole with no data pixel around it is left as it is. For
    pictures and for finding sources, not for measuring: the pixels keep their mask.
    """
    from scipy import ndimage

    holes = np.asarray(holes, bool) & ~np.asarray(data, bool)
    filled = np.zeros(holes.shape, bool)
    if not holes.any():
        return filled
    ones = np.ones((3, 3))
    labels, _ = ndimage.label(holes, structure=np.ones((3, 3)))
    ny, nx = holes.shape
    for k, box in enumerate(ndimage.find_objects(labels), 1):
        if box is None:
            continue
        # the hole's bounding box and a pixel around it, where its data neighbours are
        ys = slice(max(box[0].start - 1, 0), min(box[0].stop + 1, ny))
        xs = slice(max(box[1].start - 1, 0), min(box[1].stop + 1, nx))
        mine = labels[ys, xs] == k
        todo = mine.copy()
        known = np.asarray(data[ys, xs], bool) & ~holes[ys, xs]
        window = np.where(known, values[ys, xs], 0.0).astype(float)
        while True:
            n = ndimage.correlate(known.astype(float), ones, mode="constant")
            edge = todo & (n > 0)
            if not edge.any():
                break
            sums = ndimage.correlate(window, ones, mode="constant")
            window[edge] = sums[edge] / n[edge]
            known |= edge
            todo &= ~edge
        done = mine & known
        values[ys, xs][done] = window[done]
        filled[ys, xs] |= done
    return filled
