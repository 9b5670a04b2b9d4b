"""Characterisation against the simulator's truth (medians over the 12 small detectors)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from dask.delayed import Delayed
from scipy.spatial import cKDTree

from lsstlite.data import make_exposure
from lsstlite.data.psf_pixel import PixelPsf
from lsstlite.data.sources import SRC_COLUMNS
from lsstlite.sim import true_image, true_psf, true_wcs
from lsstlite.stages.characterize import (
    BackgroundConfig,
    CharacterizeConfig,
    DetectionConfig,
    MeasurementConfig,
    characterize_exposure,
    detect_sources,
    measure_sources,
    subtract_background,
)
from tests.stages._postisr import Processed, cosmic_rays, truth_tables

Results = dict[tuple[int, int], Processed]


def _truth_on_detector(outdir: str, p: Processed) -> pd.DataFrame:
    obj = truth_tables(outdir)["objects"]
    x, y = true_wcs(outdir, p.visit, p.detector).all_world2pix(obj["ra"], obj["dec"], 0)
    out = obj.assign(x=x, y=y)
    njy = 10.0 ** (-0.4 * (p.truth["zero_point"] - 31.4))
    out["flux_e"] = out[f"flux_{p.truth['band']}"] / njy
    return out[(x > -20) & (x < 532) & (y > -20) & (y < 1044)]


def test_psf_model_matches_truth(processed: Results) -> None:
    """FWHM within 1% and ellipticity within 0.005 at the star positions; χ² ≈ 1."""
    fwhm_err, e1_err, e2_err, chi2 = [], [], [], []
    for p in processed.values():
        psf = p.characterized.psf
        assert isinstance(psf, PixelPsf)
        assert p.characterized.metadata["psf_model"] == "pixel"
        src = p.characterized.sources
        stars = src[src["is_psf_star"]]
        tp = _true_psf(p)
        # Evaluate on a 3 × 3 grid of the star-covered area (the spatial variation).
        xs = np.quantile(stars["x"], [0.1, 0.5, 0.9])
        ys = np.quantile(stars["y"], [0.1, 0.5, 0.9])
        for x in xs:
            for y in ys:
                fwhm_err.append(psf.fwhm_at(x, y) / tp.fwhm_at(x, y) - 1)
                e1, e2 = psf.ellipticity_at(x, y)
                t1, t2 = tp.ellipticity_at(x, y)
                e1_err.append(e1 - t1)
                e2_err.append(e2 - t2)
        chi2.append(_reserved_chi2(p))
    assert abs(np.median(fwhm_err)) < 0.01
    assert np.percentile(np.abs(fwhm_err), 90) < 0.02  # the spatial variation is followed
    assert abs(np.median(e1_err)) < 0.005 and abs(np.median(e2_err)) < 0.005
    assert np.median(np.abs(e1_err)) < 0.005 and np.median(np.abs(e2_err)) < 0.005
    assert np.median(chi2) < 1.2


_OUTDIR: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _remember_outdir(sim_small: Any) -> None:
    _OUTDIR["path"] = str(sim_small.outdir)


def _true_psf(p: Processed) -> Any:
    return true_psf(_OUTDIR["path"], p.visit, p.detector)


def _reserved_chi2(p: Processed) -> float:
    """χ²/dof of the PSF model fitted (flux only) to the reserved stars."""
    exp = p.characterized.exposure
    img, var = exp["image"].values, exp["variance"].values
    src = p.characterized.sources
    vals = []
    for row in src[src["is_psf_reserved"]].itertuples():
        ix, iy = int(np.floor(row.x + 0.5)), int(np.floor(row.y + 0.5))
        h = 10
        if not (h <= ix < img.shape[1] - h and h <= iy < img.shape[0] - h):
            continue
        d = img[iy - h : iy + h + 1, ix - h : ix + h + 1]
        v = var[iy - h : iy + h + 1, ix - h : ix + h + 1]
        m = p.characterized.psf.image(row.x, row.y, size=2 * h + 1)
        f = (m * d / v).sum() / (m * m / v).sum()
        vals.append(float((((d - f * m) ** 2) / v).sum() / (d.size - 1)))
    return float(np.median(vals)) if vals else np.nan


def test_cosmic_rays_masked(processed: Results) -> None:
    """≥ 95% of CR pixels above 5σ masked; < 0.1% of star pixels wrongly masked."""
    n_cr = n_hit = n_star = n_wrong = 0
    outdir = _OUTDIR["path"]
    for p in processed.values():
        exp = p.characterized.exposure
        planes = exp["mask"].attrs["planes"]
        masked = (exp["mask"].values & (1 << planes["CR"])) != 0
        crs = cosmic_rays(outdir, p.visit, p.detector)
        sigma = np.sqrt(p.post_isr["variance"].values)
        strong = crs[crs["electrons"].to_numpy() > 5 * sigma[crs["y"], crs["x"]]]
        n_cr += len(strong)
        n_hit += int(masked[strong["y"], strong["x"]].sum())
        cr_near = np.zeros_like(masked)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                cr_near[np.clip(crs["y"] + dy, 0, 1023), np.clip(crs["x"] + dx, 0, 511)] = True
        truth = _truth_on_detector(outdir, p)
        star = np.zeros_like(masked)
        for row in truth[truth["is_star"] & (truth["flux_e"] > 2000)].itertuples():
            ix, iy = round(row.x), round(row.y)
            star[max(iy - 5, 0) : iy + 6, max(ix - 5, 0) : ix + 6] = True
        star &= ~cr_near
        n_star += int(star.sum())
        n_wrong += int((masked & star).sum())
    assert n_cr > 100
    assert n_hit / n_cr >= 0.95
    assert n_wrong / n_star < 0.001


def test_detection_completeness_and_purity(processed: Results) -> None:
    """≥ 98% of isolated point sources with S/N ≥ 10 detected; < 1% spurious detections.

    Isolated: no other object brighter than 1% of the star within 3 FWHM (the simulation
    boosts close pairs; blends are the deblender's job, not detection's).
    """
    outdir = _OUTDIR["path"]
    found = total = spurious = n_det = 0
    for p in processed.values():
        truth = _truth_on_detector(outdir, p)
        src = p.characterized.sources
        meta = p.characterized.metadata
        fwhm = meta["psf_fwhm_px"]
        sky = meta["sky_mean"] + 6.0**2
        # Optimal (PSF-weighted) S/N of a Moffat: n_eff = π α² (2β − 1) / (β − 1)².
        beta = meta["psf_beta"]
        alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
        n_eff = np.pi * alpha**2 * (2 * beta - 1) / (beta - 1) ** 2
        f = truth["flux_e"].to_numpy()
        snr = f / np.sqrt(f + n_eff * sky)
        tree = cKDTree(np.c_[truth["x"], truth["y"]])
        pairs = tree.query_pairs(3 * fwhm, output_type="ndarray")
        crowded = np.zeros(len(truth), bool)
        for i, j in pairs:
            crowded[i] |= f[j] > 0.01 * f[i]
            crowded[j] |= f[i] > 0.01 * f[j]
        inside = truth["x"].between(10, 501) & truth["y"].between(10, 1013)
        sel = (truth["is_star"] & (snr >= 10) & ~crowded & inside).to_numpy()
        dist, _ = cKDTree(np.c_[src["x"], src["y"]]).query(np.c_[truth["x"], truth["y"]][sel])
        found += int((dist < 0.5 * fwhm).sum())
        total += int(sel.sum())
        # Spurious: no truth object within 2 FWHM. Satellite trails are not masked yet and
        # break into many detections, so purity is measured on detectors without one.
        if p.truth["has_trail"]:
            continue
        bright = truth[truth["flux_e"] > 100]
        d_src, _ = cKDTree(np.c_[bright["x"], bright["y"]]).query(np.c_[src["x"], src["y"]])
        spurious += int((d_src > 2 * fwhm).sum())
        n_det += len(src)
    assert total > 300
    assert found / total >= 0.98
    assert spurious / n_det < 0.01


def test_source_table_schema(processed: Results) -> None:
    p = next(iter(processed.values()))
    src = p.characterized.sources
    assert list(src.columns) == list(SRC_COLUMNS)
    for name, dtype in SRC_COLUMNS.items():
        assert src[name].dtype == np.dtype(dtype), name
    assert src["is_psf_star"].sum() >= 15 and src["is_psf_reserved"].sum() >= 2


def test_lazy_equals_eager(processed: Results) -> None:
    p = processed[(101, 0)]
    lazy = p.post_isr.chunk({"y": 300, "x": 200})
    with dask.config.set(scheduler="sync"):
        result = characterize_exposure(lazy)
        assert isinstance(result, Delayed)  # building the graph computed nothing
        (computed,) = dask.compute(result)
    assert computed.psf.to_dict() == p.characterized.psf.to_dict()
    pd.testing.assert_frame_equal(computed.sources, p.characterized.sources)


def test_few_stars_fall_back_to_analytic_psf(processed: Results) -> None:
    p = processed[(103, 0)]
    cut = p.post_isr.lsst.cutout(0, 0, 512, 220)
    result = characterize_exposure(cut)
    meta = result.metadata
    assert meta["psf_model"] == "varying_moffat"
    assert "min_pixel_stars" in meta["psf_fallback_reason"]
    assert result.exposure.attrs["characterize"]["psf_model"] == "varying_moffat"
    tp = _true_psf(p)
    assert result.psf.fwhm_at(256, 110) == pytest.approx(tp.fwhm_at(256, 110), rel=0.05)


def test_real_data_matches_source_extractor(real_data: Path) -> None:
    """sep_ntt_emmi: positions within 0.05 px of XWIN_IMAGE, 5-px-radius fluxes within 1%."""
    folder = real_data / "sep_ntt_emmi"
    with warnings.catch_warnings():
        # A 1992 ESO header with non-standard keywords.
        warnings.simplefilter("ignore", AstropyUserWarning)
        data = fits.getdata(folder / "image.fits").astype(np.float32)
        rms = float(fits.getdata(folder / "rms.fits").mean())
    exp = make_exposure(data, variance=np.ones_like(data), units="adu")
    sub, _ = subtract_background(exp, BackgroundConfig(mesh_size=64, filter_size=3, mask_planes=()))
    kernel = np.loadtxt(folder / "default.conv", skiprows=1).tolist()
    cfg = DetectionConfig(
        threshold=1.5, threshold_type="global", filter_type="conv", filter_kernel=kernel, min_area=5
    )
    det, seg = detect_sources(sub, cfg, global_rms=rms)
    src = measure_sources(
        sub, det, seg, aperture_radii=(5.0,), config=MeasurementConfig(blended_window="light")
    )
    names = [
        "number",
        "x",
        "y",
        "xwin",
        "ywin",
        "x2",
        "y2",
        "xy",
        "ex2",
        "ey2",
        "exy",
        "a",
        "flux_aper",
        "fluxerr_aper",
        "kron",
        "flux_auto",
        "fluxerr_auto",
        "r1",
        "r2",
        "r3",
        "flags",
    ]
    ref = pd.DataFrame(np.loadtxt(folder / "image.cat", comments="#"), columns=names)
    ref = ref[ref["flags"] == 0]
    d, k = cKDTree(np.c_[src["x"], src["y"]]).query(np.c_[ref["xwin"] - 1, ref["ywin"] - 1])
    assert len(ref) > 30 and np.mean(d < 0.05) > 0.9
    assert np.median(d) < 0.01
    ratio = src["ap_flux_5"].to_numpy()[k] / ref["flux_aper"].to_numpy()
    assert np.median(np.abs(ratio - 1)) < 0.01
    assert np.percentile(np.abs(ratio - 1), 90) < 0.02


def test_whole_pipeline_config_round_trip() -> None:
    cfg = CharacterizeConfig.build({"psf": {"spatial_degree": 1}, "detection": {"threshold": 6}})
    assert CharacterizeConfig.build(cfg.to_dict()) == cfg


def test_true_image_is_available(sim_small: Any) -> None:
    assert true_image(sim_small.outdir, 101, 0).shape == (1024, 512)
