"""Whole-survey properties: determinism, resumption, truth tables, star counts."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pandas as pd
import pytest

from lsstlite.instruments.simcam import SimCam
from lsstlite.sim import PRESETS, simulate_survey, true_wcs
from lsstlite.sim.render import njy_per_electron
from lsstlite.sim.sky import make_catalog
from lsstlite.sim.survey import _build_state, _init_worker, _write_one


def _hashes(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_serial_vs_parallel(small_dir, tmp_path) -> None:
    """A serial run reproduces the parallel fixture byte for byte (every file)."""
    again = simulate_survey(tmp_path / "again", preset="small", seed=1, n_workers=1)
    a, b = _hashes(small_dir), _hashes(again.outdir)
    assert len(a) > 40
    assert a == b


def test_different_seed_different_data(small_dir, tmp_path) -> None:
    cat1, cat2 = make_catalog(PRESETS["small"], 1), make_catalog(PRESETS["small"], 2)
    assert len(cat1) != len(cat2) or not np.allclose(cat1.ra, cat2.ra)
    _init_worker(_build_state(PRESETS["small"], 2))
    _write_one((101, 0, str(tmp_path)))
    _write_one((1, 0, str(tmp_path)))
    for obs_type, exposure in (("science", 101), ("bias", 1)):
        rel = f"raw/{obs_type}/{exposure:07d}/SimCam_{exposure:07d}_000.fits"
        assert (tmp_path / rel).read_bytes() != (small_dir / rel).read_bytes()


def test_rerun_returns_at_once_and_foreign_dir_is_refused(small_survey, tmp_path) -> None:
    t0 = time.perf_counter()
    again = simulate_survey(small_survey.outdir, preset="small", seed=1)
    assert time.perf_counter() - t0 < 1.0
    assert again.resumed and again.n_science_raws == small_survey.n_science_raws
    with pytest.raises(FileExistsError, match="seed=1"):
        simulate_survey(small_survey.outdir, preset="small", seed=2)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="other files"):
        simulate_survey(tmp_path, preset="small", seed=1)
    with pytest.raises(KeyError, match="unknown preset"):
        simulate_survey(tmp_path / "x", preset="huge")


def test_counts_and_truth_tables(small_survey) -> None:
    root = small_survey.outdir
    cfg = PRESETS["small"]
    cam = SimCam("small")
    n_calib = cfg.n_bias + cfg.n_dark + cfg.n_flat * len(cfg.bands)
    assert small_survey.n_science_raws == len(cfg.bands) * cfg.n_visits_per_band * 2
    assert small_survey.n_calib_raws == n_calib * 2
    assert (
        len(list((root / "raw").rglob("*.fits")))
        == small_survey.n_science_raws + small_survey.n_calib_raws
    )
    objects = pd.read_parquet(root / "truth" / "objects.parquet")
    exposures = pd.read_parquet(root / "truth" / "exposures.parquet")
    assert set(exposures.band) == {"r", "i"}
    assert exposures.psf_fwhm_arcsec.between(0.55, 1.1).all()
    assert exposures.airmass.between(1.0, 1.5).all()
    assert (exposures.fringe_amplitude[exposures.band == "i"] > 0).all()
    assert (exposures.fringe_amplitude[exposures.band == "r"] == 0).all()
    # ≥ 100 stars with S/N > 20 on every detector (sky-limited S/N, noise-equivalent area
    # of a β≈3 Moffat ≈ 1.4 × that of a Gaussian of the same FWHM)
    for row in exposures.itertuples():
        wcs = true_wcs(root, row.visit, row.detector)
        x, y = wcs.all_world2pix(objects.ra, objects.dec, 0)
        on = objects[(x >= 0) & (x < 512) & (y >= 0) & (y < 1024) & objects.is_star]
        flux_e = on[f"flux_{row.band}"] / njy_per_electron(row.zero_point)
        nea = 4 * np.pi * (row.psf_fwhm_arcsec / 0.2 / 2.355) ** 2 * 1.4
        snr = flux_e / np.sqrt(flux_e + nea * (row.sky + 36.0))
        assert (snr > 20).sum() >= 100
        assert (flux_e * 0.04 > 1e5).sum() >= 1  # and a saturated one
    # counts: stars rise ~0.15 dex/mag, galaxies ~0.35 dex/mag
    mag = 31.4 - 2.5 * np.log10(objects.flux_r)
    for is_star, slope in ((True, 0.15), (False, 0.35)):
        n1 = ((mag > 21) & (mag < 22) & (objects.is_star == is_star)).sum()
        n2 = ((mag > 23) & (mag < 24) & (objects.is_star == is_star)).sum()
        assert np.log10(n2 / n1) / 2 == pytest.approx(slope, abs=0.06)
    # in the default (high-latitude-like) density, galaxies dominate beyond r ≈ 21
    ci = make_catalog(PRESETS["ci"], 1)
    mag = 31.4 - 2.5 * np.log10(ci.flux_r)
    for lo in (21.5, 22.5, 23.5):
        sel = (mag > lo) & (mag < lo + 1)
        assert (sel & ~ci.is_star).sum() > (sel & ci.is_star).sum()
    pairs = objects[objects.blend_group > 0].groupby("blend_group").size()
    assert (pairs == 2).all() and len(pairs) > 10
    crs = pd.read_parquet(root / "truth" / "cosmic_rays.parquet")
    science = crs[crs.exposure >= 101]
    assert science.groupby(["exposure", "detector"]).cr_id.nunique().min() >= 1
    assert crs.electrons.max() > 1000
    refcat = pd.read_parquet(root / "refcat" / "refcat.parquet")
    assert {
        "id",
        "ra",
        "dec",
        "ra_err",
        "dec_err",
        "r_flux",
        "r_flux_err",
        "i_flux",
        "i_flux_err",
    } <= set(refcat.columns)
    assert refcat.ra_err.between(0.01, 2.0).all()
    camera = json.loads((root / "truth" / "camera.json").read_text())
    assert camera["geometry"]["name"] == "small"
    assert len(camera["detectors"]) == len(cam.detectors)


def test_interrupted_run_resumes(small_dir, tmp_path) -> None:
    """Without the final marker, a rerun rewrites only what is missing, to the same bytes."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_dir, copy)
    (copy / "simulation.json").unlink()
    victim = copy / "raw" / "science" / "0000103" / "SimCam_0000103_001.fits"
    victim.unlink()
    untouched = copy / "raw" / "science" / "0000101" / "SimCam_0000101_000.fits"
    mtime = untouched.stat().st_mtime_ns
    summary = simulate_survey(copy, preset="small", seed=1, n_workers=1)
    assert summary.resumed
    assert untouched.stat().st_mtime_ns == mtime
    assert _hashes(copy) == _hashes(small_dir)
