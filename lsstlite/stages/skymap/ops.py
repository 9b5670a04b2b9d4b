"""Sky map construction and lookup (metadata only: nothing here reads pixels)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from lsstlite.data.skymap import PatchInfo, SkyMap, tract_enclosing
from lsstlite.data.wcs import wcs_from_cards

if TYPE_CHECKING:
    import xarray as xr

    from lsstlite.data.exposure import ExposureLike

__all__ = [
    "exposure_corners",
    "make_discrete_skymap",
    "make_rings_skymap",
    "make_skymap",
    "patches_for_exposure",
]


def _data_id_text(ds: ExposureLike) -> str:
    vi = ds.attrs.get("visit_info") or {}
    keys = ("instrument", "visit", "exposure", "detector")
    parts = [f"{k}={vi[k]!r}" for k in keys if vi.get(k) is not None]
    return "{" + ", ".join(parts) + "}" if parts else "<exposure without visit_info>"


def exposure_corners(
    exposure: ExposureLike, *, n_per_side: int = 2
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Sky coordinates (deg) of points around an exposure's edge (its corners by default).

    Parameters
    ----------
    exposure
        An exposure with a WCS in its attrs (lazy is fine: only coordinates are read).
    n_per_side
        Points per side, corners included (2: the four corners).

    Raises
    ------
    ValueError
        Naming the exposure's data ID if it has no WCS or the WCS gives non-finite values.
    """
    cards = exposure.attrs.get("wcs")
    if not cards:
        raise ValueError(f"exposure {_data_id_text(exposure)} has no WCS")
    x = exposure["x"].values
    y = exposure["y"].values
    x0, x1 = float(x[0]) - 0.5, float(x[-1]) + 0.5
    y0, y1 = float(y[0]) - 0.5, float(y[-1]) + 0.5
    t = np.linspace(0.0, 1.0, max(2, n_per_side))
    xs = np.concatenate(
        [x0 + t * (x1 - x0), np.full_like(t, x1), x1 - t * (x1 - x0), np.full_like(t, x0)]
    )
    ys = np.concatenate(
        [np.full_like(t, y0), y0 + t * (y1 - y0), np.full_like(t, y1), y1 - t * (y1 - y0)]
    )
    try:
        ra, dec = wcs_from_cards(cards).all_pix2world(xs, ys, 0)
    except Exception as exc:  # astropy raises many types for malformed cards
        raise ValueError(
            f"exposure {_data_id_text(exposure)}: WCS cannot be evaluated: {exc}"
        ) from exc
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        raise ValueError(
            f"exposure {_data_id_text(exposure)}: WCS gives non-finite sky coordinates"
        )
    return np.asarray(ra, float), np.asarray(dec, float)


def _mean_direction(ra: NDArray[np.float64], dec: NDArray[np.float64]) -> tuple[float, float]:
    r, d = np.radians(ra), np.radians(dec)
    v = np.array([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)]).sum(axis=1)
    v /= np.linalg.norm(v)
    return math.degrees(math.atan2(v[1], v[0])) % 360.0, math.degrees(math.asin(v[2]))


def _pixel_scale_arcsec(exposure: xr.Dataset) -> float:
    wcs = wcs_from_cards(exposure.attrs["wcs"])
    x = float(exposure["x"].values.mean())
    y = float(exposure["y"].values.mean())
    ra, dec = wcs.all_pix2world([x, x + 1, x], [y, y, y + 1], 0)
    ra = np.asarray(ra)
    dec = np.asarray(dec)
    cosd = math.cos(math.radians(dec[0]))
    j = np.array(
        [[(ra[1] - ra[0]) * cosd, (ra[2] - ra[0]) * cosd], [dec[1] - dec[0], dec[2] - dec[0]]]
    )
    return math.sqrt(abs(np.linalg.det(j))) * 3600.0


def make_discrete_skymap(
    exposures: Sequence[xr.Dataset],
    *,
    name: str = "discrete",
    pixel_scale_arcsec: float | None = None,
    patch_inner: int = 4000,
    patch_border: int = 100,
    margin_px: int = 0,
) -> SkyMap:
    """One tract enclosing the given exposures (LSST's ``makeDiscreteSkyMap``).

    Parameters
    ----------
    exposures
        Calexps (lazy is fine; only WCS and coordinates are read).
    name
        Sky map name (the ``skymap`` dimension value).
    pixel_scale_arcsec
        Tract pixel scale; default the median pixel scale of the exposures.
    patch_inner, patch_border
        Patch inner size and border (tract pixels).
    margin_px
        Extra margin around the exposures' footprint.

    Raises
    ------
    ValueError
        If ``exposures`` is empty or one of them has no usable WCS (named by data ID).
    """
    if not exposures:
        raise ValueError("make_discrete_skymap: no exposures given")
    ras, decs = [], []
    for ds in exposures:
        ra, dec = exposure_corners(ds, n_per_side=3)
        ras.append(ra)
        decs.append(dec)
    ra_all, dec_all = np.concatenate(ras), np.concatenate(decs)
    ra_c, dec_c = _mean_direction(ra_all, dec_all)
    scale = pixel_scale_arcsec or float(np.median([_pixel_scale_arcsec(ds) for ds in exposures]))
    tract = tract_enclosing(
        0,
        ra_c,
        dec_c,
        ra_all,
        dec_all,
        pixel_scale_arcsec=scale,
        patch_inner=patch_inner,
        patch_border=patch_border,
        margin_px=margin_px,
    )
    return SkyMap.discrete(name, [tract])


def make_rings_skymap(
    *,
    name: str = "rings",
    n_rings: int = 120,
    pixel_scale_arcsec: float = 0.2,
    patch_inner: int = 4000,
    patch_border: int = 100,
    tract_overlap_deg: float = 1.0 / 60.0,
    ra_start_deg: float = 0.0,
) -> SkyMap:
    """A whole-sky sky map: tracts on ``n_rings`` declination rings plus two polar caps.

    TAN projection per tract; each tract covers its ring cell grown by
    ``tract_overlap_deg`` on every side, rounded up to whole patches.
    """
    return SkyMap.rings(
        name,
        n_rings=n_rings,
        pixel_scale_arcsec=pixel_scale_arcsec,
        patch_inner=patch_inner,
        patch_border=patch_border,
        tract_overlap_deg=tract_overlap_deg,
        ra_start_deg=ra_start_deg,
    )


def make_skymap(kind: str, *, exposures: Sequence[xr.Dataset] = (), **options: Any) -> SkyMap:
    """Build a sky map of ``kind`` ``"discrete"`` (needs ``exposures``) or ``"rings"``.

    ``options`` are the keyword arguments of :func:`make_discrete_skymap` or
    :func:`make_rings_skymap`.
    """
    if kind == "discrete":
        return make_discrete_skymap(exposures, **options)
    if kind == "rings":
        return make_rings_skymap(**options)
    raise ValueError(f"make_skymap: kind must be 'discrete' or 'rings', got {kind!r}")


def patches_for_exposure(
    skymap: SkyMap | Mapping[str, Any], exposure: xr.Dataset
) -> dict[int, list[PatchInfo]]:
    """Tract id → patches (outer boxes) an exposure overlaps, from its edge points."""
    sm = skymap if isinstance(skymap, SkyMap) else SkyMap.from_dict(dict(skymap))
    ra, dec = exposure_corners(exposure, n_per_side=5)
    return sm.find_patches(ra, dec)
