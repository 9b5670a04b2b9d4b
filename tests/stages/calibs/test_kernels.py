"""The calibration kernels give what the scipy / numpy calls they replace give."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lsstlite.stages.calibs import _kernels as ck
from lsstlite.stages.isr import _kernels as isr_kernels


def test_dilate_diamond_is_iterated_cross_dilation() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((120, 97)) > 0.97
    mask[0, 0] = mask[-1, -1] = mask[60, -1] = True  # corners and edges
    for radius in (1, 3):
        want = ndimage.binary_dilation(mask, iterations=radius)
        np.testing.assert_array_equal(ck.dilate_diamond(mask, radius), want)
        assert want.sum() > mask.sum()


def test_plane_fit_matches_lstsq() -> None:
    rng = np.random.default_rng(2)
    ny, nx = 300, 410
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    img = 1000.0 + 0.3 * xx - 0.2 * yy + rng.normal(0, 5, (ny, nx))
    good = rng.random((ny, nx)) > 0.3
    design = np.stack([np.ones(good.sum()), xx[good], yy[good]], axis=1)
    coef, *_ = np.linalg.lstsq(design, img[good], rcond=None)
    want = coef[0] + coef[1] * xx + coef[2] * yy
    np.testing.assert_allclose(ck.plane_fit(img, good), want, rtol=1e-10)
    with pytest.raises(ValueError, match="at least 3 good pixels"):
        ck.plane_fit(img, np.zeros_like(good))


def test_nanmedian_axis0_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 4, 5):
        stack = rng.normal(0, 1, (n, 40, 50)).astype(np.float32)
        stack[rng.random(stack.shape) < 0.2] = np.nan
        stack[:, 3, 4] = np.nan  # all NaN
        got = ck.nanmedian_axis0(stack)
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            want = np.nanmedian(stack.astype(np.float64), axis=0)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_row_median_filter_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    img = rng.normal(1.0, 0.05, (30, 200))
    img[:, 50] = 0.1  # a dead column
    img[5, :20] = 1.0  # ties
    for window in (1, 3, 15):
        want = ndimage.median_filter(img, size=(1, window), mode="nearest")
        np.testing.assert_array_equal(ck.row_median_filter(img, window), want)


def _clipped_combine_reference(stack: np.ndarray, var: np.ndarray, n_sigma: float) -> np.ndarray:
    data = stack.astype(np.float64)
    sig = np.sqrt(np.maximum(var.astype(np.float64), 1e-12))
    ref = np.median(data, axis=0) if data.shape[0] >= 3 else np.min(data, axis=0)
    keep = np.abs(data - ref) <= n_sigma * sig
    n = keep.sum(axis=0)
    total = np.where(keep, data, 0.0).sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), ref).astype(np.float32)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_clipped_combine_matches_numpy(n: int) -> None:
    rng = np.random.default_rng(5 + n)
    var = np.full((n, 60, 70), 25.0, np.float32)
    stack = (100.0 + rng.normal(0, 5, var.shape)).astype(np.float32)
    stack[0, 10:13, 20:40] += 500.0  # a cosmic ray in one frame
    got = isr_kernels.clipped_combine(stack, var, 5.0)
    np.testing.assert_allclose(got, _clipped_combine_reference(stack, var, 5.0), rtol=1e-6)
    if n >= 2:
        assert np.all(np.abs(got[10:13, 20:40] - 100.0) < 30.0)  # the ray is rejected


def test_nanmedian_all_matches_numpy() -> None:
    rng = np.random.default_rng(6)
    for n in (1, 2, 3, 4, 1000, 1001, 200_000):
        for scale in (1.0, 1e-30, 1e30):
            vals = (rng.normal(0, 1, n) * scale).astype(np.float32)
            vals[: n // 3] = np.round(vals[: n // 3])  # ties, zeros
            vals[rng.random(n) < 0.2] = np.nan
            got = ck.nanmedian_all(vals)
            want = np.float32(np.nanmedian(vals))
            assert got.dtype == np.float32
            if np.isnan(want):
                assert np.isnan(got)
            else:
                assert got == want, (n, scale)
    narrow = rng.normal(2e4, 100, (500, 401)).astype(np.float32)  # big numpy path, float32
    assert ck.nanmedian_all(narrow).tobytes() == np.nanmedian(narrow).tobytes()
    assert np.isnan(ck.nanmedian_all(np.full(4, np.nan, np.float32)))
    assert ck.nanmedian_all(np.array([np.inf, -np.inf, 1.0], np.float32)) == 1.0


def test_robust_mean_level_matches_dask_formulation() -> None:
    import dask.array as da

    from lsstlite.data.exposure import make_exposure
    from lsstlite.data.masks import mask_bits, mask_planes
    from lsstlite.stages.calibs import ops

    rng = np.random.default_rng(7)
    img = rng.normal(2e4, 150, (1088, 300)).astype(np.float32)  # 17 chunks: 3 sum levels
    img[rng.random(img.shape) < 0.01] *= 3.0  # outliers to clip
    exp = make_exposure(da.from_array(img, chunks=(64, -1)))
    bits = mask_bits(mask_planes(exp), ["BAD", "SAT"])
    mask = np.where(rng.random(img.shape) < 0.05, bits, 0).astype(exp["mask"].dtype)
    exp["mask"] = (("y", "x"), da.from_array(mask, chunks=(64, -1)), exp["mask"].attrs)
    # the dask formulation robust_mean_level replaced
    bad = da.from_array(mask, chunks=(64, -1)).ravel() != 0
    vals = da.where(bad, np.nan, exp["image"].data.ravel())
    med = da.nanmedian(vals.rechunk(-1), axis=0)
    mad = 1.4826 * da.nanmedian(da.fabs(vals - med).rechunk(-1), axis=0)
    keep = da.fabs(vals - med) <= 4.0 * mad
    want = float((da.where(keep, vals, 0).sum() / keep.sum()).compute())
    got = float(ops.robust_mean_level(exp).compute())
    assert got == want


def test_middle_values_give_numpy_float64_median() -> None:
    rng = np.random.default_rng(8)
    for n in (1, 2, 7, 1000, 100_001):
        img = rng.normal(500.0, 30.0, n).astype(np.float32)
        good = rng.random(n) > 0.1
        img[rng.random(n) < 0.01] = np.inf
        good &= np.isfinite(img)
        m, lo, hi = ck.middle_values(np.where(good, img, np.float32(np.nan)))
        assert m == good.sum()
        got = np.float64(lo) if m % 2 else (np.float64(lo) + np.float64(hi)) / 2.0
        assert got == np.median(img.astype(np.float64)[good])


def test_above_sky_and_sky_fraction_match_numpy() -> None:
    rng = np.random.default_rng(9)
    img = rng.normal(1000.0, 30.0, (70, 90))
    img[5, 5] = np.nan
    sky = 1000.0 + 0.01 * np.arange(90)[None, :] - 0.02 * np.arange(70)[:, None]
    var = rng.uniform(0.5, 900.0, img.shape).astype(np.float32)
    noise = 3.0 * np.sqrt(np.maximum(var, 1.0))
    np.testing.assert_array_equal(ck.above_sky(img, sky, noise), img > sky + noise)
    keep = rng.random(img.shape) > 0.2
    want = np.where(keep, img / sky - 1.0, np.nan).astype(np.float32)
    got = ck.sky_fraction(img, sky, keep)
    assert got.dtype == np.float32
    assert got.tobytes() == want.tobytes()


def test_add_scaled_matches_numpy() -> None:
    rng = np.random.default_rng(10)
    img = rng.normal(1.0, 0.1, (40, 60)).astype(np.float32)
    acc = rng.normal(3.0, 1.0, img.shape)
    want = acc + img.astype(np.float64) / 0.987654321
    ck.add_scaled(acc, img, 0.987654321)
    assert acc.tobytes() == want.tobytes()


def test_find_defects_flat_levels_match_numpy_median() -> None:
    import xarray as xr

    from lsstlite.stages.calibs import ops

    rng = np.random.default_rng(11)
    dark = xr.Dataset({"image": (("y", "x"), np.zeros((64, 80), np.float32))})
    flats = []
    for level in (1000.0, 2000.0):
        img = rng.normal(level, 20.0, (64, 80)).astype(np.float32)
        img[10, 20:23] = 0.2 * level  # dead
        flats.append(xr.Dataset({"image": (("y", "x"), img)}))
    got = ops.find_defects(dark, flats)
    # the numpy formulation the radix selection and add_scaled replaced
    mean_flat = np.zeros((64, 80))
    for f in flats:
        img64 = np.asarray(f["image"].values, dtype=np.float64)
        mean_flat += img64 / np.median(img64.ravel()[::7])
    mean_flat /= len(flats)
    local = ck.row_median_filter(mean_flat, 15)
    dead = mean_flat < 0.5 * local
    assert got["n_pixels"].sum() == dead.sum() == 3
    flats[0]["image"].values[0, 0] = np.nan  # a NaN in the sample: NaN level, as np.median
    with np.errstate(invalid="ignore"):
        assert len(ops.find_defects(dark, flats)) == 0
