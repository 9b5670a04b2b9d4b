"""Visit quality: per-detector summaries, visit selection and focal-plane plots.

Everything here reads metadata (exposure attrs written by characterisation and
calibration) and small tables; no pixel is read, so the functions are cheap on lazy
exposures and need no dask wrapping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import Field

from lsstlite.data import psf_from_dict
from lsstlite.data import psf_pixel as _psf_pixel  # noqa: F401  (registers "pixel" PSFs)
from lsstlite.pipe import Config

__all__ = [
    "SUMMARY_COLUMNS",
    "SelectVisitsConfig",
    "make_visit_summary",
    "plot_visit_quality",
    "select_good_detectors",
    "summarize_detector",
]

#: Columns of a ``visit_summary`` table (one row per detector) and what they hold.
SUMMARY_COLUMNS: dict[str, str] = {
    "visit": "visit (= exposure) id",
    "detector": "detector id",
    "band": "band",
    "physical_filter": "physical filter",
    "mjd": "MJD of the exposure start",
    "airmass": "airmass",
    "ra": "RA of the detector centre (deg, fitted WCS)",
    "dec": "Dec of the detector centre (deg)",
    "pixel_scale_arcsec": "pixel scale at the centre (arcsec)",
    "psf_model": "pixel / varying_moffat / gaussian",
    "psf_fwhm_arcsec": "FWHM of the PSF model at the centre (Moffat fit to the star-built model)",
    "psf_e1": "distortion e1 at the centre",
    "psf_e2": "distortion e2 at the centre",
    "psf_e": "|e|",
    "psf_beta": "Moffat β at the centre",
    "n_psf_stars": "stars used by the PSF fit",
    "star_fwhm_arcsec": "median Gaussian-equivalent FWHM of the PSF stars (adaptive moments)",
    "n_ref_matched": "reference stars matched with the fitted WCS",
    "astrometry_rms_mas": "rms of the WCS fit residuals (mas)",
    "zero_point": "AB magnitude of one input unit (electron)",
    "zero_point_err": "its 1σ error",
    "sky": "mean sky (input units per pixel)",
    "sky_rms": "background noise (input units per pixel)",
    "sky_mag_arcsec2": "sky brightness (AB mag / arcsec²)",
    "n_sources": "sources in src",
    "n_cosmic_ray_pixels": "pixels masked as cosmic rays",
}


def summarize_detector(calexp: xr.Dataset, src: pd.DataFrame | None = None) -> dict[str, Any]:
    """One ``visit_summary`` row from a calibrated exposure (and its source table).

    Parameters
    ----------
    calexp
        Output of :func:`lsstlite.stages.calibrate.calibrate_exposure` (lazy is fine:
        only attrs and the WCS are read).
    src
        Its source table, for the star-based FWHM; optional.
    """
    vi = calexp.attrs.get("visit_info") or {}
    ch = calexp.attrs.get("characterize") or {}
    cal = calexp.attrs.get("calibrate") or {}
    wcs = calexp.lsst.wcs
    x0, y0, x1, y1 = calexp.lsst.bbox
    xc, yc = (x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0
    ra, dec = wcs.all_pix2world([xc], [yc], 0)
    scale = float(math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
    psf = psf_from_dict(calexp.attrs["psf"]) if calexp.attrs.get("psf") else None
    fwhm_px = psf.fwhm_at(xc, yc) if psf is not None else math.nan
    e1, e2 = psf.ellipticity_at(xc, yc) if psf is not None else (math.nan, math.nan)
    star_fwhm = math.nan
    if src is not None and len(src):
        stars = src[src["is_psf_star"]]
        if len(stars):
            t = 0.5 * (stars["ixx"] + stars["iyy"]) - 1.0 / 12.0
            star_fwhm = float(np.median(2.0 * math.sqrt(2.0 * math.log(2.0)) * np.sqrt(t))) * scale
    zp = float(cal.get("zero_point", math.nan))
    sky = float(ch.get("sky_mean", math.nan))
    sky_mag = zp - 2.5 * math.log10(sky / scale**2) if sky > 0 and np.isfinite(zp) else math.nan
    return {
        "visit": int(vi.get("visit") or vi.get("exposure") or -1),
        "detector": int(vi.get("detector", -1)),
        "band": vi.get("band"),
        "physical_filter": vi.get("physical_filter"),
        "mjd": vi.get("mjd"),
        "airmass": vi.get("airmass"),
        "ra": float(ra[0]),
        "dec": float(dec[0]),
        "pixel_scale_arcsec": scale,
        "psf_model": ch.get("psf_model"),
        "psf_fwhm_arcsec": float(fwhm_px) * scale,
        "psf_e1": float(e1),
        "psf_e2": float(e2),
        "psf_e": float(math.hypot(e1, e2)),
        "psf_beta": float(ch.get("psf_beta", math.nan)),
        "n_psf_stars": int(ch.get("n_psf_stars", 0)),
        "star_fwhm_arcsec": star_fwhm,
        "n_ref_matched": int(cal.get("n_reference_matches", 0)),
        "astrometry_rms_mas": float(cal.get("astrometry_rms_mas", math.nan)),
        "zero_point": zp,
        "zero_point_err": float(cal.get("zero_point_err", math.nan)),
        "sky": sky,
        "sky_rms": float(ch.get("sky_rms", math.nan)),
        "sky_mag_arcsec2": sky_mag,
        "n_sources": int(ch.get("n_sources", len(src) if src is not None else 0)),
        "n_cosmic_ray_pixels": int(ch.get("n_cosmic_ray_pixels", 0)),
    }


def make_visit_summary(
    calexps: Sequence[xr.Dataset], srcs: Sequence[pd.DataFrame] | None = None
) -> pd.DataFrame:
    """The ``visit_summary`` table: one :func:`summarize_detector` row per detector."""
    rows = [
        summarize_detector(c, srcs[i] if srcs is not None and i < len(srcs) else None)
        for i, c in enumerate(calexps)
    ]
    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return table.sort_values(["visit", "detector"]).reset_index(drop=True)


class SelectVisitsConfig(Config):
    """Cuts that make a detector (and a visit) good enough for coaddition."""

    max_fwhm_arcsec: float = Field(default=1.2, gt=0)
    max_ellipticity: float = Field(default=0.13, gt=0)
    min_ref_matched: int = Field(
        default=5, ge=0, description="reference stars matched per detector"
    )
    min_good_detectors: int = Field(default=1, ge=1, description="good detectors for a good visit")
    dataset_types: tuple[str, ...] = Field(
        default=("calexp", "src", "background", "sky_model"),
        description="what the TAGGED collection receives (per detector or per visit); "
        "calexp is required, the others are tagged where they exist",
    )


def select_good_detectors(summary: pd.DataFrame, config: SelectVisitsConfig) -> pd.DataFrame:
    """Apply the cuts to a (concatenated) visit summary.

    Returns
    -------
    pandas.DataFrame
        ``summary`` plus ``good_detector``, ``good_visit`` and ``reason`` (why not).
    """
    out = summary.copy()
    reasons = []
    row: Any
    for row in out.itertuples():
        why = []
        if not (row.psf_fwhm_arcsec < config.max_fwhm_arcsec):
            why.append(f"fwhm {row.psf_fwhm_arcsec:.2f}″ ≥ {config.max_fwhm_arcsec}")
        if not (row.psf_e < config.max_ellipticity):
            why.append(f"e {row.psf_e:.3f} ≥ {config.max_ellipticity}")
        if row.n_ref_matched < config.min_ref_matched:
            why.append(f"{row.n_ref_matched} ref stars < {config.min_ref_matched}")
        reasons.append("; ".join(why))
    out["reason"] = reasons
    out["good_detector"] = out["reason"] == ""
    n_good = out.groupby("visit")["good_detector"].transform("sum")
    out["good_visit"] = n_good >= config.min_good_detectors
    bad_visit = ~out["good_visit"] & out["good_detector"]
    out.loc[bad_visit, "reason"] = (
        f"visit has fewer than {config.min_good_detectors} good detectors"
    )
    return out


def plot_visit_quality(summary: pd.DataFrame, path: str | Path) -> Path:
    """Focal-plane plot of each visit: detectors at their sky positions, coloured by PSF
    FWHM, with ellipticity whiskers (length ∝ ``|e|``, along the major axis). Writes a PNG.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from matplotlib.figure import Figure

    visits = sorted(summary["visit"].unique())
    n = max(len(visits), 1)
    ncol = min(n, 4)
    nrow = math.ceil(n / ncol)
    # A Figure of its own: no pyplot state, no change of the caller's backend.
    fig = Figure(figsize=(3.2 * ncol, 3.2 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    vmin = float(np.nanmin(summary["psf_fwhm_arcsec"])) if len(summary) else 0.0
    vmax = float(np.nanmax(summary["psf_fwhm_arcsec"])) if len(summary) else 1.0
    ra0 = float(np.nanmedian(summary["ra"])) if len(summary) else 0.0
    dec0 = float(np.nanmedian(summary["dec"])) if len(summary) else 0.0
    sc = None
    for ax, visit in zip(axes.ravel(), visits, strict=False):
        rows = summary[summary["visit"] == visit]
        x = (rows["ra"] - ra0) * math.cos(math.radians(dec0)) * 60.0
        y = (rows["dec"] - dec0) * 60.0
        sc = ax.scatter(
            x, y, c=rows["psf_fwhm_arcsec"], s=250, marker="s", cmap="viridis", vmin=vmin, vmax=vmax
        )
        e = np.hypot(rows["psf_e1"], rows["psf_e2"])
        angle = 0.5 * np.arctan2(rows["psf_e2"], rows["psf_e1"])
        length = 20.0 * e
        ax.quiver(
            x,
            y,
            length * np.cos(angle),
            length * np.sin(angle),
            headwidth=0,
            headlength=0,
            headaxislength=0,
            pivot="middle",
            angles="xy",
            scale_units="xy",
            scale=1.0,
            color="r",
        )
        for xi, yi, det in zip(x, y, rows["detector"], strict=True):
            ax.annotate(str(det), (xi, yi), fontsize=7, ha="center", va="center", color="w")
        ax.set_title(f"visit {visit}", fontsize=9)
        ax.set_xlabel("ΔRA cos δ [arcmin]", fontsize=8)
        ax.set_ylabel("ΔDec [arcmin]", fontsize=8)
        ax.set_aspect("equal", adjustable="datalim")
        ax.invert_xaxis()
    for ax in axes.ravel()[len(visits) :]:
        ax.axis("off")
    if sc is not None:
        fig.colorbar(sc, ax=axes.ravel().tolist(), label="PSF FWHM [arcsec]")
    path = Path(path)
    fig.savefig(path, dpi=80)
    return path
