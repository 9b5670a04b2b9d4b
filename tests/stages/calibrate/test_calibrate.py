"""Calibration against the simulator's truth (medians over the 12 small detectors)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from lsstlite.data.sources import validate_source_table
from lsstlite.sim import true_wcs
from lsstlite.stages.calibrate import CalibrationError, calibrate_exposure
from tests.stages._postisr import Processed, truth_tables

Results = dict[tuple[int, int], Processed]


def _wcs_rms_mas(outdir: str, p: Processed) -> float:
    true = true_wcs(outdir, p.visit, p.detector)
    fitted = p.calibrated.calexp.lsst.wcs
    yy, xx = np.mgrid[0:1024:32, 0:512:32]
    ra1, de1 = true.all_pix2world(xx.ravel(), yy.ravel(), 0)
    ra2, de2 = fitted.all_pix2world(xx.ravel(), yy.ravel(), 0)
    d2 = ((ra2 - ra1) * np.cos(np.radians(de1))) ** 2 + (de2 - de1) ** 2
    return float(np.sqrt(np.mean(d2)) * 3.6e6)


def test_astrometry_from_offset_header(processed: Results, sim_small: Any) -> None:
    """Fitted WCS vs true WCS < 10 mas rms (header WCS 1–2″ off), trail + CR visits too."""
    outdir = str(sim_small.outdir)
    header = []
    rms = {}
    for key, p in processed.items():
        rms[key] = _wcs_rms_mas(outdir, p)
        header.append(p.truth["header_pointing_error_arcsec"])
    assert min(header) > 0.9  # the headers really are off
    assert np.median(list(rms.values())) < 10
    with_trail = [k for k, p in processed.items() if p.truth["has_trail"]]
    assert with_trail and max(rms[k] for k in with_trail) < 10
    assert all(p.calibrated.metadata["n_astrometry_stars"] >= 20 for p in processed.values())


def test_photometry_against_truth(processed: Results, sim_small: Any) -> None:
    """psf_flux / true flux of bright stars: median within 0.3%, pulls ~ noise; ZP < 3 mmag."""
    outdir = str(sim_small.outdir)
    obj = truth_tables(outdir)["objects"]
    ratios, pulls, dzp = [], [], []
    for p in processed.values():
        src = p.calibrated.src
        x, y = true_wcs(outdir, p.visit, p.detector).all_world2pix(obj["ra"], obj["dec"], 0)
        d, k = cKDTree(np.c_[x, y]).query(np.c_[src["x"], src["y"]])
        true_flux = obj[f"flux_{p.truth['band']}"].to_numpy()[k]
        snr = src["psf_flux"] / src["psf_flux_err"]
        bright = (
            (d < 0.3)
            & obj["is_star"].to_numpy()[k]
            & (snr > 100)
            & (snr < 1000)
            & (src["flags"] == 0)
        )
        ratios.extend((src["psf_flux"] / true_flux)[bright])
        pulls.extend(((src["psf_flux"] - true_flux) / src["psf_flux_err"])[bright])
        dzp.append(p.calibrated.metadata["zero_point"] - p.truth["zero_point"])
    ratios_a, pulls_a = np.asarray(ratios), np.asarray(pulls)
    assert len(ratios_a) > 150
    assert abs(np.median(ratios_a) - 1) < 0.003
    # Robust rms of the pulls: noise, plus PSF-model errors at the 0.3% level at S/N ≤ 1000.
    robust = 1.4826 * np.median(np.abs(pulls_a - np.median(pulls_a)))
    assert robust < 2.0
    assert abs(np.median(dzp)) < 0.003
    assert np.median(np.abs(dzp)) < 0.003


def test_calexp_and_src_products(processed: Results) -> None:
    p = processed[(102, 1)]
    calexp, src = p.calibrated.calexp, p.calibrated.src
    validate_source_table(src, what="src")
    assert calexp.attrs["units"] == "nJy" and calexp["image"].attrs["units"] == "nJy"
    assert calexp.lsst.photo_calib.njy_per_count == 1.0
    assert calexp.attrs["wcs"]["CTYPE1"].startswith("RA---TAN")
    assert calexp.lsst.psf is not None
    njy = p.calibrated.metadata["njy_per_count"]
    np.testing.assert_allclose(
        calexp["image"].values,
        p.characterized.exposure["image"].values * np.float32(njy),
        rtol=1e-6,
    )
    assert np.isfinite(src["ra"]).all() and np.isfinite(src["dec"]).all()


def test_no_reference_match_fails_with_data_id(processed: Results, sim_small: Any) -> None:
    p = processed[(101, 0)]
    refcat = pd.read_parquet(sim_small.refcat_path).assign(dec=lambda t: t["dec"] + 1.0)
    with pytest.raises(CalibrationError, match=r"exposure=101, detector=0.*reference"):
        calibrate_exposure(p.characterized.exposure, p.characterized.sources, refcat)
