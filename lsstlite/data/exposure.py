"""The exposure: an ``xarray.Dataset`` with image, mask and variance, plus metadata.

Layout
------
- ``image`` (float32), ``mask`` (int32 bit planes), ``variance`` (float32), dims ``("y", "x")``.
- Integer coordinates ``y`` and ``x``: 0-based pixel indices in the *parent* frame (a
  detector, or a patch of a tract). A cut-out keeps them, so its WCS stays valid.
- ``ds["mask"].attrs["planes"]``: mask plane name → bit.
- ``ds.attrs``: plain JSON, so that zarr and FITS round trips are exact:
  ``wcs`` (FITS cards, :mod:`lsstlite.data.wcs`), ``visit_info`` (:class:`VisitInfo` as a
  dict), optionally ``psf`` (:mod:`lsstlite.data.psf` dict), ``photo_calib``
  (:class:`PhotoCalib` as a dict) and ``units`` (``"electron"``, ``"adu"`` or ``"nJy"``).

Nothing in this module computes on pixels: building an exposure from dask arrays stays lazy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from lsstlite.data.masks import DEFAULT_MASK_PLANES, MASK_DTYPE
from lsstlite.data.psf import PsfModel
from lsstlite.data.wcs import wcs_to_cards

if TYPE_CHECKING:
    from typing import TypeAlias

    import xarray as xr

    from lsstlite.data._zarr_chunks import StoredGroup

    #: An exposure: a Dataset, or (what the coadd reads of one) its metadata and stored
    #: planes opened without xarray.
    ExposureLike: TypeAlias = xr.Dataset | StoredGroup

__all__ = [
    "AB_NJY_ZERO_POINT",
    "PhotoCalib",
    "VisitInfo",
    "exposure_label",
    "exposure_metadata",
    "make_exposure",
    "validate_exposure",
]

#: AB magnitude of 1 nJy: ``m = 31.4 - 2.5 log10(f / nJy)``.
AB_NJY_ZERO_POINT = 31.4

_UNITS = ("adu", "electron", "nJy")


class VisitInfo(BaseModel):
    """What was observed, when and how (the exposure-level metadata of a raw)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instrument: str
    exposure: int
    visit: int | None = None
    detector: int | None = None
    band: str | None = None
    physical_filter: str | None = None
    obs_type: str = "science"
    exptime: float | None = None
    darktime: float | None = None
    mjd: float | None = None
    date_obs: str | None = None
    day_obs: int | None = None
    airmass: float | None = None
    boresight_ra: float | None = None
    boresight_dec: float | None = None
    rot_angle: float | None = None


class PhotoCalib(BaseModel):
    """Photometric calibration: ``flux[nJy] = counts × njy_per_count``.

    ``zero_point`` is the AB magnitude of one count (``31.4 - 2.5 log10(njy_per_count)``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    njy_per_count: float
    njy_per_count_err: float = 0.0

    @classmethod
    def from_zero_point(cls, zero_point: float, zero_point_err: float = 0.0) -> PhotoCalib:
        scale = 10.0 ** (-0.4 * (zero_point - AB_NJY_ZERO_POINT))
        return cls(
            njy_per_count=scale, njy_per_count_err=scale * 0.4 * math.log(10) * zero_point_err
        )

    @property
    def zero_point(self) -> float:
        return AB_NJY_ZERO_POINT - 2.5 * math.log10(self.njy_per_count)


def _as_2d(value: Any, name: str, dtype: np.dtype[Any]) -> Any:
    import dask.array as da
    import xarray as xr

    if isinstance(value, xr.DataArray):
        value = value.data
    if not isinstance(value, da.Array):
        value = np.asarray(value)
    if value.ndim != 2:
        raise ValueError(f"exposure {name} must be 2-D (y, x), got shape {value.shape}")
    return value.astype(dtype, copy=False)


def exposure_label(ds: Any) -> str:
    """How an error message names an exposure: its file and its exposure and detector,
    as far as its attributes tell (``"'raw.fits' (exposure 103, detector 0)"``)."""
    attrs = getattr(ds, "attrs", None) or {}
    info = attrs.get("visit_info") or {}
    ids = ", ".join(f"{k} {info[k]}" for k in ("exposure", "detector") if info.get(k) is not None)
    if not attrs.get("filename"):
        return ids or "(an exposure in memory)"
    name = repr(str(attrs["filename"]))
    return f"{name} ({ids})" if ids else name


def make_exposure(
    image: Any,
    *,
    mask: Any | None = None,
    variance: Any | None = None,
    wcs: Any | None = None,
    visit_info: VisitInfo | Mapping[str, Any] | None = None,
    psf: PsfModel | Mapping[str, Any] | None = None,
    photo_calib: PhotoCalib | Mapping[str, Any] | None = None,
    units: str = "electron",
    xy0: tuple[int, int] = (0, 0),
    mask_planes: Mapping[str, int] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Assemble an exposure Dataset (lazy if the inputs are dask arrays).

    Parameters
    ----------
    image
        2-D array (numpy or dask), converted to float32.
    mask, variance
        Same shape; default zeros (mask) and NaN-free zeros (variance).
    wcs
        An astropy ``WCS``, a FITS header or a dict of cards (see :mod:`lsstlite.data.wcs`),
        referring to the parent pixel frame.
    visit_info, psf, photo_calib
        Metadata objects or their dicts.
    units
        ``"adu"``, ``"electron"`` or ``"nJy"``: the unit of ``image`` (variance is in its square).
    xy0
        Parent-frame pixel index ``(x0, y0)`` of the first pixel.
    mask_planes
        Plane → bit mapping; default :data:`DEFAULT_MASK_PLANES`.
    attrs
        Further JSON-serialisable attributes.
    """
    import dask.array as da
    import xarray as xr

    if units not in _UNITS:
        raise ValueError(f"units must be one of {_UNITS}, got {units!r}")
    img = _as_2d(image, "image", np.dtype("float32"))
    shape = img.shape
    zeros = da.zeros if isinstance(img, da.Array) else np.zeros
    chunks = {"chunks": img.chunks} if isinstance(img, da.Array) else {}
    msk = (
        _as_2d(mask, "mask", MASK_DTYPE)
        if mask is not None
        else zeros(shape, dtype=MASK_DTYPE, **chunks)
    )
    var = (
        _as_2d(variance, "variance", np.dtype("float32"))
        if variance is not None
        else zeros(shape, dtype=np.float32, **chunks)
    )
    for name, arr in (("mask", msk), ("variance", var)):
        if arr.shape != shape:
            raise ValueError(f"exposure {name} shape {arr.shape} differs from image shape {shape}")
    meta, plane_attrs, coords = exposure_metadata(
        shape,
        wcs=wcs,
        visit_info=visit_info,
        psf=psf,
        photo_calib=photo_calib,
        units=units,
        xy0=xy0,
        mask_planes=mask_planes,
        attrs=attrs,
    )
    data = {"image": img, "mask": msk, "variance": var}
    return xr.Dataset(
        {name: (("y", "x"), data[name], plane_attrs[name]) for name in plane_attrs},
        coords={name: ((name,), values) for name, values in coords.items()},
        attrs=meta,
    )


def exposure_metadata(
    shape: tuple[int, int],
    *,
    wcs: Any | None = None,
    visit_info: VisitInfo | Mapping[str, Any] | None = None,
    psf: PsfModel | Mapping[str, Any] | None = None,
    photo_calib: PhotoCalib | Mapping[str, Any] | None = None,
    units: str = "electron",
    xy0: tuple[int, int] = (0, 0),
    mask_planes: Mapping[str, int] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, NDArray[np.int64]]]:
    """What :func:`make_exposure` attaches to the pixels of an exposure of ``shape``
    (parameters as there): ``(attrs, {plane: attrs} for image, mask and variance in
    that order, {"y": …, "x": …} parent coordinates)``, without building the Dataset."""
    if units not in _UNITS:
        raise ValueError(f"units must be one of {_UNITS}, got {units!r}")
    x0, y0 = (int(v) for v in xy0)
    meta: dict[str, Any] = {"lsstlite_kind": "exposure", "schema_version": 1, "units": units}
    if wcs is not None:
        meta["wcs"] = wcs_to_cards(wcs)
    if visit_info is not None:
        vi = visit_info if isinstance(visit_info, VisitInfo) else VisitInfo(**visit_info)
        meta["visit_info"] = vi.model_dump()
    if psf is not None:
        meta["psf"] = psf.to_dict() if isinstance(psf, PsfModel) else dict(psf)
    if photo_calib is not None:
        pc = photo_calib if isinstance(photo_calib, PhotoCalib) else PhotoCalib(**photo_calib)
        meta["photo_calib"] = pc.model_dump()
    if attrs:
        meta.update(attrs)
    planes = dict(DEFAULT_MASK_PLANES if mask_planes is None else mask_planes)
    plane_attrs: dict[str, dict[str, Any]] = {
        "image": {"units": units},
        "mask": {"planes": planes},
        "variance": {"units": f"{units}^2"},
    }
    coords = {
        "y": np.arange(y0, y0 + shape[0], dtype=np.int64),
        "x": np.arange(x0, x0 + shape[1], dtype=np.int64),
    }
    return meta, plane_attrs, coords


def validate_exposure(ds: ExposureLike, *, what: str = "exposure") -> None:
    """Raise ``ValueError`` naming the problem if ``ds`` is not a well-formed exposure."""
    for name, dtype in (("image", "float32"), ("mask", "int32"), ("variance", "float32")):
        if name not in ds:
            raise ValueError(f"{what}: missing variable {name!r}")
        if ds[name].dims != ("y", "x"):
            raise ValueError(f"{what}: {name} has dims {ds[name].dims}, expected ('y', 'x')")
        if ds[name].dtype != np.dtype(dtype):
            raise ValueError(f"{what}: {name} has dtype {ds[name].dtype}, expected {dtype}")
    if "planes" not in ds["mask"].attrs:
        raise ValueError(f"{what}: mask has no 'planes' attribute")
