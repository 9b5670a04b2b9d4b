"""Forced photometry on calibrated exposures (LSST's ``forcedPhotCcd``): the PSF flux of
every object of a tract's object table at its coadd position, in each calexp that
covers it, so that each object has a light curve.

The table (``forced_src``, one per calexp) has one row per object inside the detector:

=====================  ======  ==========================================================
``object_id``          int64   the object's ``id`` in the object table
``ra``, ``dec``        f8      the object's position (degrees; the coadd's, not refitted)
``exposure``           int64   visit
``detector``           int64
``band``               str
``mjd``                f8      middle of the exposure (MJD, UTC)
``x``, ``y``           f8      where the calexp's WCS puts the object (parent frame, px)
``psf_flux``           f8      PSF-fit flux at fixed position, aperture-corrected to a
                               total flux as the ``src`` table's (nJy)
``psf_flux_err``       f8      1σ, from the variance plane (nJy)
``flag_edge``          bool    the PSF stamp leaves the detector
``flag_masked``        bool    BAD, NO_DATA, SAT, CR, INTRP or STREAK pixels within 2 PSF
                               FWHM of the position
``flag_saturated``     bool    SAT pixels within 2 PSF FWHM
``flag_blended``       bool    another object of the table within 2 PSF FWHM (its light
                               enters this fit: no deblending here)
``flag_psf_flux``      bool    no usable pixel: the flux is NaN
=====================  ======  ==========================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.spatial import cKDTree

from lsstlite.data.masks import mask_bits, mask_planes
from lsstlite.data.wcs import cached_wcs
from lsstlite.stages.characterize.ops import psf_photometry
from lsstlite.stages.detect.ops import exposure_psf
from lsstlite.stages.skymap.ops import exposure_corners

__all__ = ["FORCED_SRC_COLUMNS", "forced_photometry_ccd"]

#: Columns of a ``forced_src`` table, in order, with their dtypes.
FORCED_SRC_COLUMNS: dict[str, str] = {
    "object_id": "int64",
    "ra": "float64",
    "dec": "float64",
    "exposure": "int64",
    "detector": "int64",
    "band": "object",
    "mjd": "float64",
    "x": "float64",
    "y": "float64",
    "psf_flux": "float64",
    "psf_flux_err": "float64",
    "flag_edge": "bool",
    "flag_masked": "bool",
    "flag_saturated": "bool",
    "flag_blended": "bool",
    "flag_psf_flux": "bool",
}

#: Objects of two tables (overlapping tracts) closer than this are one object.
DUPLICATE_RADIUS_ARCSEC = 0.5

#: Mask planes that make ``flag_masked`` (those the exposure has).
MASKED_PLANES = ("BAD", "NO_DATA", "SAT", "CR", "INTRP", "STREAK")


def _unit(ra: Any, dec: Any) -> np.ndarray:
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _inside(calexp: xr.Dataset, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, ...]:
    """Indices of the objects on the detector and their pixel positions (parent frame)."""
    ny, nx = calexp.sizes["y"], calexp.sizes["x"]
    x0, y0 = calexp.lsst.xy0
    cra, cdec = exposure_corners(calexp, n_per_side=3)
    # Candidates within the circle around the detector's centre through its farthest
    # corner (the WCS is only evaluated near the detector).
    wcs = cached_wcs(calexp.attrs["wcs"])
    mra, mdec = wcs.all_pix2world([x0 + (nx - 1) / 2.0], [y0 + (ny - 1) / 2.0], 0)
    centre = _unit(mra[0], mdec[0])
    cos_max = float(np.min(_unit(cra, cdec) @ centre)) - 1e-6
    near = np.flatnonzero(_unit(ra, dec) @ centre >= cos_max)
    x, y = wcs.all_world2pix(ra[near], dec[near], 0, quiet=True)
    x, y = np.asarray(x, float), np.asarray(y, float)
    on = (x >= x0 - 0.5) & (x < x0 + nx - 0.5) & (y >= y0 - 0.5) & (y < y0 + ny - 0.5)
    return near[on], x[on], y[on]


def forced_photometry_ccd(
    calexp: xr.Dataset, objects: pd.DataFrame | Sequence[pd.DataFrame]
) -> pd.DataFrame:
    """PSF fluxes of ``objects`` (``id``, ``ra``, ``dec``: an object table, or several:
    an object in two of them, within :data:`DUPLICATE_RADIUS_ARCSEC`, is measured once,
    as the first one's) on one calexp, at their positions (see the module docs for the
    columns).

    The fit and its aperture correction are those of the calexp's ``src`` table
    (:func:`~lsstlite.stages.characterize.ops.psf_photometry`), so a star's forced flux
    and its ``src`` flux agree. Objects off the detector are left out; an empty table
    (with the columns) when none is on it.
    """
    tables = [objects] if isinstance(objects, pd.DataFrame) else list(objects)
    missing = [c for t in tables for c in ("id", "ra", "dec") if c not in t.columns]
    if missing:
        raise ValueError(
            f"forced photometry: object table without column(s) {sorted(set(missing))}"
        )
    frame = (
        pd.concat([t[["id", "ra", "dec"]].assign(_table=k) for k, t in enumerate(tables)],
                  ignore_index=True)
        if tables
        else pd.DataFrame({"id": [], "ra": [], "dec": [], "_table": []})
    )  # fmt: skip
    if len(tables) > 1 and len(frame):
        # Overlapping tracts hold the same object twice: the first table's copy is kept.
        chord = 2.0 * math.sin(math.radians(DUPLICATE_RADIUS_ARCSEC / 3600.0) / 2.0)
        table_of = frame["_table"].to_numpy()
        pairs = cKDTree(_unit(frame["ra"], frame["dec"])).query_pairs(chord, output_type="ndarray")
        twins = pairs[table_of[pairs[:, 0]] != table_of[pairs[:, 1]]]
        drop = np.where(table_of[twins[:, 0]] < table_of[twins[:, 1]], twins[:, 1], twins[:, 0])
        keep = np.ones(len(frame), bool)
        keep[drop] = False
        frame = frame[keep].reset_index(drop=True)
    vi = calexp.attrs.get("visit_info") or {}
    ra, dec = frame["ra"].to_numpy(float), frame["dec"].to_numpy(float)
    idx, x, y = _inside(calexp, ra, dec) if len(frame) else (np.zeros(0, int),) * 3
    n = len(idx)
    psf = exposure_psf(calexp)
    if n:
        flux, err, off = psf_photometry(calexp, x, y)
    else:
        flux, err, off = np.zeros(0), np.zeros(0), np.zeros(0, bool)
    # Mask flags within 2 PSF FWHM, the radius of the object table's flags.
    x0, y0 = calexp.lsst.xy0
    ny, nx = calexp.sizes["y"], calexp.sizes["x"]
    fwhm = float(psf.fwhm_at(x0 + (nx - 1) / 2.0, y0 + (ny - 1) / 2.0))
    r = math.ceil(2.0 * fwhm)
    planes = mask_planes(calexp)
    mask = np.asarray(calexp["mask"].values)
    masked_bits = mask_bits(planes, [p for p in MASKED_PLANES if p in planes])
    sat_bits = mask_bits(planes, "SAT") if "SAT" in planes else 0
    flag_masked = np.zeros(n, bool)
    flag_saturated = np.zeros(n, bool)
    ix, iy = np.floor(x - x0 + 0.5).astype(int), np.floor(y - y0 + 0.5).astype(int)
    for k in range(n):
        box = mask[max(iy[k] - r, 0) : iy[k] + r + 1, max(ix[k] - r, 0) : ix[k] + r + 1]
        flag_masked[k] = bool((box & masked_bits).any())
        flag_saturated[k] = bool((box & sat_bits).any())
    # Neighbours among all the objects given (also those just off the detector).
    flag_blended = np.zeros(n, bool)
    if n and len(frame) > 1:
        scale_deg = float(
            np.sqrt(abs(np.linalg.det(cached_wcs(calexp.attrs["wcs"]).pixel_scale_matrix)))
        )
        chord = 2.0 * math.sin(math.radians(2.0 * fwhm * scale_deg) / 2.0)
        tree = cKDTree(_unit(ra, dec))
        pairs = tree.query_ball_point(_unit(ra[idx], dec[idx]), chord)
        flag_blended = np.array([len(p) > 1 for p in pairs], bool)
    exptime = float(vi.get("exptime") or 0.0)
    mjd = float(vi["mjd"]) + exptime / 2.0 / 86400.0 if vi.get("mjd") is not None else math.nan
    out = pd.DataFrame(
        {
            "object_id": frame["id"].to_numpy(np.int64)[idx],
            "ra": ra[idx],
            "dec": dec[idx],
            "exposure": np.full(n, int(vi.get("exposure", -1)), np.int64),
            "detector": np.full(n, int(vi.get("detector", -1)), np.int64),
            "band": np.full(n, vi.get("band"), object),
            "mjd": np.full(n, mjd),
            "x": x,
            "y": y,
            "psf_flux": flux,
            "psf_flux_err": err,
            "flag_edge": np.asarray(off, bool),
            "flag_masked": flag_masked,
            "flag_saturated": flag_saturated,
            "flag_blended": flag_blended,
            "flag_psf_flux": ~np.isfinite(flux),
        }
    )
    return out.astype(FORCED_SRC_COLUMNS)
