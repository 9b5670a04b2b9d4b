"""Detection kernels against the whole-image scipy formulations they replace."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from lsstlite.stages.detect import _kernels


def test_find_peaks_are_the_maximum_filter_candidates_with_dips() -> None:
    rng = np.random.default_rng(11)
    ny, nx = 150, 170
    yy, xx = np.mgrid[:ny, :nx]
    snr = rng.normal(0.0, 1.0, (ny, nx))
    for x, y, a in rng.uniform((3, 3, 5), (nx - 3, ny - 3, 80), (40, 3)):
        snr += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    snr[0, 5] = snr[-1, -1] = 50.0  # maxima on the edges
    snr[40, 40] = snr[40, 41] = 30.0  # a tie: both are maxima of their 3×3 boxes
    labels, _ = _kernels.footprint_labels(snr >= 5.0, min_area=1, grow_px=1)
    got = _kernels.find_peaks(snr, labels, min_snr=5.0, min_dip_sigma=4.0)

    # reference: candidates from the whole-image maximum filter, then the dip test
    local_max = snr == ndimage.maximum_filter(snr, size=3, mode="nearest")
    iy, ix = np.nonzero(local_max & (labels > 0) & (snr >= 5.0))
    lab = labels[iy, ix]
    order = np.lexsort((-snr[iy, ix], lab))
    kept: list[tuple[int, int, int]] = []
    for i in order:
        ok = True
        for lj, jy, jx in kept:
            if lj != lab[i]:
                continue
            dy, dx = jy - iy[i], jx - ix[i]
            steps = max(abs(dy), abs(dx))
            line = [
                snr[
                    math.floor(iy[i] + dy * s / steps + 0.5),
                    math.floor(ix[i] + dx * s / steps + 0.5),
                ]
                for s in range(1, steps)
            ]
            if snr[iy[i], ix[i]] - min([snr[iy[i], ix[i]], *line]) < 4.0:
                ok = False
                break
        if ok:
            kept.append((int(lab[i]), int(iy[i]), int(ix[i])))
    assert len(kept) > 30
    np.testing.assert_array_equal(got, np.array(kept, dtype=np.int64))


def _disc(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r


def test_grow_kept_is_binary_dilation_by_a_disc() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 6, (90, 110)) * (rng.random((90, 110)) < 0.03)
    labels[0, :4] = labels[-1, -3:] = labels[30:33, 0] = 3  # runs on every edge
    keep = np.array([False, True, False, True, True, False])
    for r in range(6):
        want = keep[labels] if r == 0 else ndimage.binary_dilation(keep[labels], _disc(r))
        np.testing.assert_array_equal(_kernels.grow_kept(labels, keep, r), want)


def test_footprint_labels_as_label_filter_dilate_label() -> None:
    rng = np.random.default_rng(7)
    above = ndimage.gaussian_filter(rng.normal(size=(160, 140)), 1.5) > 0.25
    eight = np.ones((3, 3), dtype=bool)
    for min_area, grow_px in [(1, 0), (1, 2), (5, 0), (5, 2), (12, 3)]:
        labels, n = ndimage.label(above, structure=eight)
        keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_area
        keep[0] = False
        mask = keep[labels]
        if grow_px > 0:
            mask = ndimage.binary_dilation(mask, structure=_disc(grow_px))
        want, n_want = ndimage.label(mask, structure=eight)
        got, n_got = _kernels.footprint_labels(above, min_area=min_area, grow_px=grow_px)
        assert n_got == n_want > 0 and got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


def test_clean_pixels_as_numpy() -> None:
    rng = np.random.default_rng(3)
    shape = (40, 50)
    for dtype in (np.float32, np.float64):
        image = rng.normal(size=shape).astype(dtype)
        variance = rng.uniform(-0.2, 2.0, shape).astype(dtype)
        image[rng.random(shape) < 0.05] = np.nan
        image[rng.random(shape) < 0.02] = np.inf
        variance[rng.random(shape) < 0.05] = np.nan
        variance[rng.random(shape) < 0.02] = -np.inf
        mask = rng.integers(0, 16, shape).astype(np.int32)
        img, var, bad = _kernels.clean_pixels(image, variance, mask, 0b1010)

        want_bad = (mask & 0b1010) != 0
        want_bad |= ~np.isfinite(image) | ~np.isfinite(variance) | (variance <= 0)
        np.testing.assert_array_equal(bad, want_bad)
        assert img.dtype == var.dtype == dtype
        np.testing.assert_array_equal(img, np.where(want_bad, 0.0, image))
        np.testing.assert_array_equal(var, np.where(want_bad, 0.0, variance))
