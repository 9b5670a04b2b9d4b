"""Outputs of a processed simulated survey measured against the simulator's truth.

:func:`truth_metrics` reads the truth tables written by :func:`lsstlite.sim.simulate_survey`
and the repository's ``visit_summary``, ``src``, ``coadd`` and ``object`` datasets, and
returns the figures survey teams look at first: PSF size error, astrometric scatter,
photometric offset, completeness and purity of the object table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

__all__ = ["format_metrics", "match_sky", "truth_metrics"]


def _unit_vectors(ra: Any, dec: Any) -> np.ndarray:
    r, d = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)


def match_sky(
    ra1: Any, dec1: Any, ra2: Any, dec2: Any, radius_arcsec: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest neighbour of each position 1 among positions 2 within ``radius_arcsec``.

    Returns ``(index1, index2, separation_arcsec)`` of the matched pairs.
    """
    if len(ra1) == 0 or len(ra2) == 0:
        empty = np.zeros(0, int)
        return empty, empty, np.zeros(0)
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    dist, j = cKDTree(_unit_vectors(ra2, dec2)).query(
        _unit_vectors(ra1, dec1), distance_upper_bound=chord
    )
    i = np.flatnonzero(np.isfinite(dist))
    sep = np.degrees(2.0 * np.arcsin(dist[i] / 2.0)) * 3600.0
    return i, j[i], sep


def truth_metrics(
    sim_dir: str | Path,
    repo: str | Path,
    collections: str | Sequence[str],
    *,
    snr_min: float = 20.0,
    completeness_mag: float = 23.0,
    isolation_arcsec: float = 3.0,
) -> dict[str, float]:
    """Figures of merit of a processed simulated survey (NaN where an input is missing).

    Parameters
    ----------
    sim_dir
        Output directory of :func:`lsstlite.sim.simulate_survey` (its ``truth/``).
    repo, collections
        Repository and collections holding the processed outputs.
    snr_min
        PSF-flux S/N of the single-frame stars used for astrometry and photometry.
    completeness_mag
        Completeness and purity are for true objects brighter than this (AB, first band
        of the object table) inside the area the coadds cover.
    isolation_arcsec
        Astrometry and photometry use true stars with no other true object this close.

    Returns
    -------
    dict
        ``psf_fwhm_error_median``/``_max`` (model/true − 1 over detectors);
        ``astrometry_median_mas``/``_p90_mas`` (offset from the true position) and
        ``photometry_offset_mmag`` (median) of the unflagged single-frame detections of
        isolated true stars with S/N > ``snr_min``, ``n_stars`` of them, and
        ``photometry_pull_sigma`` (1.4826 MAD of ``(psf_flux − true) / psf_flux_err`` at
        S/N ``snr_min``–100);
        ``forced_offset_mmag``, ``forced_pull_sigma`` and ``n_forced`` of the same stars'
        ``forced_src`` rows (see :func:`_forced_metrics`);
        ``object_position_median_mas``/``_p90_mas`` (the same for the object table);
        ``completeness`` (true objects above ``completeness_mag`` in the covered area
        found in the object table) and ``purity`` (unflagged objects above it with a true
        counterpart within 1″); ``n_objects``.
    """
    from lsstlite.repo import Butler

    truth_dir = Path(sim_dir) / "truth"
    exposures = pd.read_parquet(truth_dir / "exposures.parquet")
    objects = pd.read_parquet(truth_dir / "objects.parquet")
    butler = Butler(str(repo))
    cols = [collections] if isinstance(collections, str) else list(collections)
    out: dict[str, float] = {}

    # PSF size per detector: visit_summary (model at the detector centre) vs truth.
    summaries = butler.query_datasets("visit_summary", collections=cols)
    assert isinstance(summaries, list)
    if summaries:
        summary = pd.concat([butler.get(r) for r in summaries], ignore_index=True)
        both = summary.merge(exposures, on=["visit", "detector"], suffixes=("", "_true"))
        err = both["psf_fwhm_arcsec"] / both["psf_fwhm_arcsec_true"] - 1.0
        out["psf_fwhm_error_median"] = float(np.median(err))
        out["psf_fwhm_error_max"] = float(err.abs().max())
    else:
        out["psf_fwhm_error_median"] = out["psf_fwhm_error_max"] = math.nan

    # Single-frame stars: astrometric scatter and photometric offset against truth, on
    # isolated stars (blends test the deblender, not the calibration).
    stars = objects[objects["is_star"].to_numpy() & _isolated(objects, isolation_arcsec)]
    seps, dmag, pulls = [], [], []
    srcs = butler.query_datasets("src", collections=cols)
    assert isinstance(srcs, list)
    band_of = exposures.set_index("visit")["band"].to_dict()
    for ref in srcs:
        src = butler.get(ref)
        band = band_of.get(int(ref.data_id["exposure"]))
        good = src[(src["psf_flux"] > snr_min * src["psf_flux_err"]) & (src["flags"] == 0)]
        i, j, sep = match_sky(good["ra"], good["dec"], stars["ra"], stars["dec"], 1.0)
        seps.append(sep)
        if band is not None and f"flux_{band}" in stars:
            flux, err = good["psf_flux"].to_numpy()[i], good["psf_flux_err"].to_numpy()[i]
            true = stars[f"flux_{band}"].to_numpy()[j]
            ratio = flux / true
            dmag.append(-2.5 * np.log10(ratio[ratio > 0]))
            noisy = flux < 100.0 * err
            pulls.append((flux[noisy] - true[noisy]) / err[noisy])
    sep_all = np.concatenate(seps) if seps else np.zeros(0)
    out["astrometry_median_mas"] = float(np.median(sep_all) * 1000) if len(sep_all) else math.nan
    out["astrometry_p90_mas"] = (
        float(np.percentile(sep_all, 90) * 1000) if len(sep_all) else math.nan
    )
    out["photometry_offset_mmag"] = (
        float(np.median(np.concatenate(dmag)) * 1000) if dmag else math.nan
    )
    out["n_stars"] = float(len(sep_all))
    out["photometry_pull_sigma"] = _robust_sigma(np.concatenate(pulls) if pulls else np.zeros(0))

    # Forced photometry on the calexps (light curves): the same stars, unflagged rows.
    out.update(_forced_metrics(butler, cols, stars, band_of, snr_min))

    # Object table: completeness and purity inside the covered area.
    obj_refs = butler.query_datasets("object", collections=cols)
    assert isinstance(obj_refs, list)
    if not obj_refs:
        out.update(
            object_position_median_mas=math.nan,
            object_position_p90_mas=math.nan,
            completeness=math.nan,
            purity=math.nan,
        )
        out["n_objects"] = 0.0
        return out
    table = pd.concat([butler.get(r) for r in obj_refs], ignore_index=True)
    out["n_objects"] = float(len(table))
    covered = _covered(butler, cols, objects["ra"].to_numpy(), objects["dec"].to_numpy())
    flux_cols = [c for c in objects.columns if c.startswith("flux_")]
    zp_ab = 31.4  # nJy: m = 31.4 - 2.5 log10(f)
    bright_flux = 10 ** ((zp_ab - completeness_mag) / 2.5)
    bright = (objects[flux_cols].max(axis=1) > bright_flux).to_numpy()
    sample = objects[bright & covered]
    i, _, _ = match_sky(sample["ra"], sample["dec"], table["ra"], table["dec"], 0.5)
    out["completeness"] = len(i) / len(sample) if len(sample) else math.nan
    # purity: detected objects above the limit with a true counterpart (any brightness)
    band = flux_cols[0].removeprefix("flux_")
    fcol = f"{band}_psf_flux"
    flag_cols = [c for c in table.columns if c.startswith("flag_")]
    clean = table[~table[flag_cols].any(axis=1)] if flag_cols else table
    if fcol in table:
        det = clean[clean[fcol] > bright_flux]
        k, _, _ = match_sky(det["ra"], det["dec"], objects["ra"], objects["dec"], 1.0)
        out["purity"] = len(k) / len(det) if len(det) else math.nan
    else:
        out["purity"] = math.nan
    i, j, sep = match_sky(clean["ra"], clean["dec"], stars["ra"], stars["dec"], 0.5)
    if fcol in table:
        snr = (clean[fcol] / clean[f"{band}_psf_flux_err"]).to_numpy()[i]
        sep = sep[snr > snr_min]
    out["object_position_median_mas"] = float(np.median(sep) * 1000) if len(sep) else math.nan
    out["object_position_p90_mas"] = float(np.percentile(sep, 90) * 1000) if len(sep) else math.nan
    return out


def _forced_metrics(
    butler: Any,
    collections: list[str],
    stars: pd.DataFrame,
    band_of: Mapping[Any, str],
    snr_min: float,
) -> dict[str, float]:
    """``forced_offset_mmag`` (median of ``−2.5 log10(psf_flux / true)`` over the
    unflagged ``forced_src`` rows of ``stars`` with S/N > ``snr_min``), ``forced_pull_sigma``
    (1.4826 MAD of ``(psf_flux − true) / psf_flux_err`` at S/N ``snr_min``–100, where the
    noise dominates) and ``n_forced``; NaN without ``forced_src``."""
    refs = butler.query_datasets("forced_src", collections=collections)
    assert isinstance(refs, list)
    dmag, pulls = [], []
    for ref in refs:
        table = butler.get(ref)
        band = band_of.get(int(ref.data_id["exposure"]))
        if band is None or f"flux_{band}" not in stars or not len(table):
            continue
        flags = table[[c for c in table.columns if c.startswith("flag_")]].any(axis=1)
        good = table[~flags.to_numpy()]
        good = good[good["psf_flux"] > snr_min * good["psf_flux_err"]]
        i, j, _ = match_sky(good["ra"], good["dec"], stars["ra"], stars["dec"], 0.5)
        flux = good["psf_flux"].to_numpy()[i]
        err = good["psf_flux_err"].to_numpy()[i]
        true = stars[f"flux_{band}"].to_numpy()[j]
        dmag.append(-2.5 * np.log10(flux[flux > 0] / true[flux > 0]))
        noisy = flux < 100.0 * err
        pulls.append((flux[noisy] - true[noisy]) / err[noisy])
    d = np.concatenate(dmag) if dmag else np.zeros(0)
    return {
        "forced_offset_mmag": float(np.median(d) * 1000) if len(d) else math.nan,
        "forced_pull_sigma": _robust_sigma(np.concatenate(pulls) if pulls else np.zeros(0)),
        "n_forced": float(len(d)),
    }


def _robust_sigma(values: np.ndarray) -> float:
    """1.4826 × the median absolute deviation (NaN when empty)."""
    if not len(values):
        return math.nan
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _isolated(objects: pd.DataFrame, radius_arcsec: float) -> np.ndarray:
    """True for objects with no other true object within ``radius_arcsec``."""
    vec = _unit_vectors(objects["ra"], objects["dec"])
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    counts = cKDTree(vec).query_ball_point(vec, chord, return_length=True)
    return np.asarray(counts) == 1


def _covered(butler: Any, collections: list[str], ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """True where a position falls on data of every band's coadd (inner patch area)."""
    from lsstlite.data.masks import mask_bits, mask_planes
    from lsstlite.data.wcs import wcs_from_cards

    refs = butler.query_datasets("coadd", collections=collections)
    assert isinstance(refs, list)
    by_band: dict[str, np.ndarray] = {}
    for ref in refs:
        coadd = butler.get(ref)
        wcs = wcs_from_cards(coadd.attrs["wcs"])
        x, y = wcs.all_world2pix(ra, dec, 0)
        x0, y0 = int(coadd["x"].values[0]), int(coadd["y"].values[0])
        ix = np.floor(np.asarray(x) - x0 + 0.5).astype(int)
        iy = np.floor(np.asarray(y) - y0 + 0.5).astype(int)
        ny, nx = coadd["image"].shape
        margin = 10  # px: objects at the very edge of the data are not a fair test
        inside = (ix >= margin) & (iy >= margin) & (ix < nx - margin) & (iy < ny - margin)
        mask = np.asarray(coadd["mask"].values)
        no_data = (mask & mask_bits(mask_planes(coadd), "NO_DATA")) != 0
        ok = np.zeros(len(ra), bool)
        k = np.flatnonzero(inside)
        ok[k] = ~no_data[iy[k], ix[k]]
        for dy, dx in ((-margin, 0), (margin, 0), (0, -margin), (0, margin)):
            ok[k] &= ~no_data[iy[k] + dy, ix[k] + dx]
        band = str(ref.data_id["band"])
        by_band[band] = by_band.get(band, np.zeros(len(ra), bool)) | ok
    if not by_band:
        return np.zeros(len(ra), bool)
    return np.logical_and.reduce(list(by_band.values()))


def format_metrics(metrics: dict[str, float]) -> dict[str, str]:
    """Printable lines of :func:`truth_metrics` (label → value with unit)."""

    def pct(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{100 * v:+.2f}%"

    m = metrics
    return {
        "PSF FWHM error (model/true − 1)": f"median {pct(m['psf_fwhm_error_median'])}, "
        f"max |{pct(m['psf_fwhm_error_max']).lstrip('+')}|",
        "astrometric offset (single-frame stars)": f"median {m['astrometry_median_mas']:.1f} "
        f"mas, 90% < {m['astrometry_p90_mas']:.1f} mas ({int(m['n_stars'])} detections)",
        "photometric offset (PSF flux vs true)": f"{m['photometry_offset_mmag']:+.1f} mmag, "
        f"pulls σ {m['photometry_pull_sigma']:.2f} at S/N < 100",
        "forced photometry on calexps": (
            "n/a"
            if math.isnan(m.get("forced_offset_mmag", math.nan))
            else f"{m['forced_offset_mmag']:+.1f} mmag, pulls σ {m['forced_pull_sigma']:.2f} "
            f"at S/N < 100 ({int(m['n_forced'])} measurements)"
        ),
        "object positions (coadd stars)": f"median {m['object_position_median_mas']:.1f} mas, "
        f"90% < {m['object_position_p90_mas']:.1f} mas",
        "completeness / purity (objects)": (
            "n/a"
            if math.isnan(m["completeness"])
            else f"{100 * m['completeness']:.1f}% / {100 * m['purity']:.1f}% "
            f"({int(m['n_objects'])} objects)"
        ),
    }
