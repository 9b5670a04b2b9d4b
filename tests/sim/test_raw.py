"""Raw frames against the truth: bias levels, geometry, and a star's position and flux."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from lsstlite.data.psf import MoffatPsf
from lsstlite.instruments import get_instrument
from lsstlite.instruments.simcam import SimCam
from lsstlite.sim import true_image, true_psf, true_wcs
from lsstlite.sim.raw import bias_levels, raw_path
from lsstlite.sim.render import njy_per_electron


def test_overscan_equals_bias_level(small_dir) -> None:
    """Per amp, the overscan's mean is the true bias level (to its error), row by row."""
    cam = SimCam("small")
    for obs_type, exposure in (("bias", 1), ("science", 101)):
        for det in cam.detectors:
            raw = cam.read_raw(raw_path(small_dir, obs_type, exposure, det))
            levels = bias_levels(1, exposure, det, cam)
            for amp, info in zip(
                cam.amplifier_parameters(det), raw.attrs["amplifiers"], strict=True
            ):
                y0, y1, x0, x1 = info["serial_overscan"]
                over = raw["image"].values[y0:y1, x0:x1].astype(float)
                sigma = amp.read_noise / amp.gain
                n = over.size
                # the median of integers is quantised: allow half an ADU on top of the noise
                assert np.median(over) == pytest.approx(
                    levels[amp.index].mean(), abs=3 * 1.25 * sigma / math.sqrt(n) + 0.5
                )
                rows = over.mean(axis=1) - levels[amp.index]
                assert abs(rows.mean()) < 5 * sigma / math.sqrt(n) + 0.05
                # the residual per row is read noise (+ rounding) only: the drift is modelled
                expected = math.sqrt((sigma**2 + 1 / 12) / over.shape[1])
                assert rows.std() == pytest.approx(expected, rel=0.15)


def test_raw_geometry_matches_detsize(small_dir) -> None:
    cam = get_instrument("SimCam")
    path = raw_path(small_dir, "science", 101, 1)
    raw = cam.read_raw(path)
    header = raw.attrs["header"]
    nx, ny = (int(v.split(":")[1]) for v in header["DETSIZE"].strip("[]").split(","))
    covered = np.zeros((ny, nx), int)
    for amp in raw.attrs["amplifiers"]:
        y0, y1, x0, x1 = amp["data_section"]
        dy0, dy1, dx0, dx1 = amp["detector_section"]
        assert (y1 - y0, x1 - x0) == (dy1 - dy0, dx1 - dx0)
        by0, by1, bx0, bx1 = amp["bbox_raw"]
        for sec in ("data_section", "serial_overscan", "prescan"):
            sy0, sy1, sx0, sx1 = amp[sec]
            assert by0 <= sy0 < sy1 <= by1 and bx0 <= sx0 < sx1 <= bx1
        assert amp["flip_x"] == (dx0 >= nx // 2)
        covered[dy0:dy1, dx0:dx1] += 1
    assert np.all(covered == 1)
    assert raw["image"].shape == (
        ny,
        sum(a["bbox_raw"][3] - a["bbox_raw"][2] for a in raw.attrs["amplifiers"]),
    )
    with fits.open(path) as hdul:
        assert hdul[2].header["DETSEC"] == "[512:257,1:1024]"
        assert hdul[1].header["DETSEC"] == "[1:256,1:1024]"
        assert hdul[1].data.dtype.kind == "u" or hdul[1].header["BZERO"] == 32768


def _assemble(small_dir, exposure: int, det: int) -> np.ndarray:
    """Simple ISR: per-row overscan, linearity, gain, assembly with flips, true flat."""
    cam = SimCam("small")
    raw = cam.read_raw(raw_path(small_dir, "science", exposure, det))
    image = raw["image"].values.astype(np.float64)
    out = np.zeros((1024, 512))
    lin = cam.linearity(det)
    for info, amp in zip(raw.attrs["amplifiers"], cam.amplifier_parameters(det), strict=True):
        y0, y1, x0, x1 = info["serial_overscan"]
        level = np.median(image[y0:y1, x0:x1], axis=1)[:, None]
        y0, y1, x0, x1 = info["data_section"]
        data = lin[amp.index].correct(image[y0:y1, x0:x1] - level) * info["gain"]
        if info["flip_x"]:
            data = data[:, ::-1]
        dy0, dy1, dx0, dx1 = info["detector_section"]
        out[dy0:dy1, dx0:dx1] = data
    band = raw.attrs["visit_info"]["band"]
    flat = fits.getdata(small_dir / "truth" / "calibs" / f"flat_{band}_{det:03d}.fits", 1)
    return out / flat


def _isolated_stars(small_dir, exposure: int, det: int) -> pd.DataFrame:
    objects = pd.read_parquet(small_dir / "truth" / "objects.parquet")
    exposures = pd.read_parquet(small_dir / "truth" / "exposures.parquet")
    row = exposures[(exposures.visit == exposure) & (exposures.detector == det)].iloc[0]
    wcs = true_wcs(small_dir, exposure, det)
    x, y = wcs.all_world2pix(objects.ra, objects.dec, 0, tolerance=1e-10)
    objects = objects.assign(
        x=x, y=y, flux_e=objects[f"flux_{row.band}"] / njy_per_electron(row.zero_point)
    )
    on = objects[(x > 40) & (x < 472) & (y > 40) & (y < 984)]
    crs = pd.read_parquet(small_dir / "truth" / "cosmic_rays.parquet")
    crs = crs[(crs.exposure == exposure) & (crs.detector == det)]
    defects = pd.read_parquet(small_dir / "truth" / "defects.parquet")
    defects = defects[defects.detector == det]
    good = []
    for s in on[on.is_star & (on.flux_e > 1.5e5) & (on.flux_e < 1.5e6)].itertuples():
        d = np.hypot(objects.x - s.x, objects.y - s.y)
        near = ((d > 0) & (d < 40) & (objects.flux_e > 1e-2 * s.flux_e)) | (
            (d > 0) & (d < 70) & (objects.flux_e > 0.05 * s.flux_e)
        )
        cr_near = np.hypot(crs.x - s.x, crs.y - s.y).min() < 30 if len(crs) else False
        def_near = np.any(
            (np.abs(defects.x0 - s.x) < 30)
            & (defects.y0 - 30 < s.y)
            & (defects.y0 + defects.height + 30 > s.y)
        )
        if not near.any() and not cr_near and not def_near:
            good.append(s.Index)
    return objects.loc[good].assign(zero_point=row.zero_point, sky=row.sky)


def test_star_position_and_flux_in_raw(small_dir, small_survey) -> None:
    """An isolated bright star measured in the raw lands on its catalog position (0.02 px)
    through the true WCS, and its flux matches the truth within the noise."""
    exposures = pd.read_parquet(small_dir / "truth" / "exposures.parquet")
    rows = exposures[~exposures.has_trail]
    n_checked = 0
    for row in rows.itertuples():
        exposure, det = int(row.visit), int(row.detector)
        image = _assemble(small_dir, exposure, det)
        wcs = true_wcs(small_dir, exposure, det)
        psf = true_psf(small_dir, exposure, det)
        for s in _isolated_stars(small_dir, exposure, det).itertuples():
            m = psf.params_at(s.x, s.y)
            alpha = m.fwhm / (2 * math.sqrt(2 ** (1 / m.beta) - 1))
            if s.flux_e * (m.beta - 1) / (math.pi * alpha**2) > 40_000:
                continue  # keep to < 40% of full well: nonlinearity and BF stay small
            ix, iy = round(s.x), round(s.y)
            yy, xx = np.mgrid[iy - 30 : iy + 31, ix - 30 : ix + 31].astype(float)
            stamp = image[iy - 30 : iy + 31, ix - 30 : ix + 31]
            r = np.hypot(xx - s.x, yy - s.y)
            annulus = stamp[(r > 22) & (r < 30)]
            for _ in range(5):  # 3σ-clipped mean: robust to faint neighbours' wings
                keep = np.abs(annulus - annulus.mean()) < 3 * annulus.std()
                annulus = annulus[keep]
            background = annulus.mean()
            signal = stamp - background
            # Iterated Gaussian-weighted centroid: unbiased for point-symmetric profiles.
            xc, yc = float(s.x) + 0.3, float(s.y) - 0.3
            sw = psf.fwhm_at(s.x, s.y)
            for _ in range(30):
                w = np.exp(-0.5 * ((xx - xc) ** 2 + (yy - yc) ** 2) / sw**2) * signal
                xc, yc = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
            ra, dec = wcs.all_pix2world(xc, yc, 0)
            dx = (ra - s.ra) * math.cos(math.radians(s.dec)) * 3600 / 0.2
            dy = (dec - s.dec) * 3600 / 0.2
            assert math.hypot(dx, dy) < 0.02, (exposure, det, s.id, dx, dy)
            aperture = r < 20
            flux = signal[aperture].sum()
            model = MoffatPsf(fwhm=m.fwhm, beta=m.beta, e1=m.e1, e2=m.e2).image(
                s.x, s.y, size=61, center=(s.x - ix + 30, s.y - iy + 30)
            )
            expected = s.flux_e * model[aperture].sum()
            sigma = math.sqrt(expected + aperture.sum() * (s.sky + 40.0))
            assert flux == pytest.approx(expected, abs=4 * sigma + 0.003 * expected)
            n_checked += 1
    assert n_checked >= 3


def test_saturated_stars_bleed(small_dir) -> None:
    cam = SimCam("small")
    for det in cam.detectors:
        raw = cam.read_raw(raw_path(small_dir, "science", 101, det))
        img = raw["image"].values
        n_sat = sum(
            int(
                np.count_nonzero(
                    img[:, a["bbox_raw"][2] : a["bbox_raw"][3]] >= a["saturation_adu"] - 100
                )
            )
            for a in raw.attrs["amplifiers"]
        )
        assert n_sat > 20


def test_crosstalk_ghosts_are_mirrored(small_dir) -> None:
    """Saturated stars on one amplifier leave ghosts of C[source, victim] × their signal on
    the other, at the same readout position (hence mirrored in the assembled frame)."""
    cam = SimCam("small")
    best = None
    for path in sorted((small_dir / "raw" / "science").rglob("*.fits")):
        raw = cam.read_raw(path)
        img = raw["image"].values.astype(float)
        amps = []
        for a in raw.attrs["amplifiers"]:
            y0, y1, x0, x1 = a["serial_overscan"]
            level = np.median(img[y0:y1, x0:x1], axis=1)[:, None]
            y0, y1, x0, x1 = a["data_section"]
            amps.append(img[y0:y1, x0:x1] - level)  # readout order for both amplifiers
        for src in (0, 1):
            n_sat = np.count_nonzero(amps[src] > 30_000)
            if best is None or n_sat > best[0]:
                best = (n_sat, raw.attrs["visit_info"], src, amps)
    assert best is not None and best[0] > 100
    _, info, src, amps = best
    det, victim = info["detector"], 1 - src
    # What the victim would hold without crosstalk: flat × true image + bias structure.
    flat = fits.getdata(small_dir / "truth" / "calibs" / f"flat_{info['band']}_{det:03d}.fits", 1)
    bias = fits.getdata(small_dir / "truth" / "calibs" / f"bias_{det:03d}.fits", "ADU")
    amp = cam.amplifier_parameters(det)[victim]
    _, _, x0, x1 = amp.detector_section
    expected = (true_image(small_dir, info["exposure"], det) * flat)[:, x0:x1] / amp.gain
    expected = expected + bias[:, x0:x1]
    if amp.flip_x:
        expected = expected[:, ::-1]
    mask = amps[src] > 30_000
    ghost = np.median((amps[victim] - expected)[mask]) / np.median(amps[src][mask])
    assert ghost == pytest.approx(cam.crosstalk_matrix(det)[src, victim], rel=0.25)
