"""The numba mesh background against ``sep.Background``, whose estimator it reproduces."""

from __future__ import annotations

import numpy as np
import pytest
import sep

from lsstlite.stages.characterize._background import median_walk, mesh_background


def _sky_with_sources(ny: int, nx: int, seed: int) -> np.ndarray:
    """Noise on a sloped sky with Gaussian sources of lognormal flux (the tails that
    make the clipped mode differ from the mean)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ny, :nx]
    image = rng.normal(100.0, 10.0, (ny, nx)) + 0.01 * xx + 0.02 * yy
    for _ in range(ny * nx // 6000):
        x, y, flux = rng.uniform(0, nx), rng.uniform(0, ny), rng.lognormal(6.0, 1.5)
        box = (slice(max(int(y) - 12, 0), int(y) + 13), slice(max(int(x) - 12, 0), int(x) + 13))
        r2 = (xx[box] - x) ** 2 + (yy[box] - y) ** 2
        image[box] += flux * np.exp(-0.5 * r2 / 4.0)
    return image.astype(np.float32)


def _mask(shape: tuple[int, int]) -> np.ndarray:
    bad = np.zeros(shape, dtype=bool)
    bad[:, 300:320] = True  # a bad column block
    bad[500:700, 100:260] = True  # > half of some cells: those take their neighbours'
    return bad


CASES = [
    # (shape, bw, bh, fw, fh, fthresh, masked, nan)
    ((1000, 1300), 64, 64, 3, 3, 0.0, False, False),
    ((1000, 1300), 64, 64, 3, 3, 0.0, True, False),
    ((1000, 1300), 100, 70, 3, 3, 0.0, True, False),  # partial cells on both edges
    ((1000, 1300), 128, 128, 3, 3, 0.0, True, True),
    ((1000, 1300), 64, 64, 5, 3, 0.5, True, False),  # filter threshold
    ((1000, 1300), 2000, 64, 3, 3, 0.0, True, False),  # one cell across
    ((1000, 1300), 64, 2000, 3, 3, 0.0, True, False),  # one cell down
    ((257, 300), 32, 32, 1, 1, 0.0, False, False),  # no filtering
]


@pytest.mark.parametrize(("shape", "bw", "bh", "fw", "fh", "fthresh", "masked", "nan"), CASES)
def test_mesh_background_equals_sep(
    shape: tuple[int, int],
    bw: int,
    bh: int,
    fw: int,
    fh: int,
    fthresh: float,
    masked: bool,
    nan: bool,
) -> None:
    image = _sky_with_sources(*shape, seed=bw + bh)
    if nan:
        image[5:9, 40:60] = np.nan
    mask = _mask(shape) if masked else None
    want = sep.Background(image, mask=mask, bw=bw, bh=bh, fw=fw, fh=fh, fthresh=fthresh)
    got = mesh_background(image, mask, bw=bw, bh=bh, fw=fw, fh=fh, fthresh=fthresh)
    np.testing.assert_array_equal(got.back(), want.back(dtype=np.float32))
    assert got.globalback == want.globalback
    assert got.globalrms == want.globalrms
    subtracted, model = got.subtract(image)
    np.testing.assert_array_equal(model, want.back(dtype=np.float32))
    np.testing.assert_array_equal(subtracted, image - want.back(dtype=np.float32))


def test_mesh_background_rejects_mismatched_mask() -> None:
    with pytest.raises(ValueError, match="mask shape"):
        mesh_background(np.zeros((10, 10), np.float32), np.zeros((10, 9), bool))


def _walk_by_steps(counts: np.ndarray, lcut: int, hcut: int) -> tuple[int, int, int, int]:
    """sep's loop: one step per bin, the side with the smaller sum takes its next bin."""
    lo, hi, low, high = lcut, hcut, 0, 0
    for _ in range(lcut, hcut + 1):
        if low < high:
            low += int(counts[lo])
            lo += 1
        else:
            high += int(counts[hi])
            hi -= 1
    return lo, hi, low, high


def test_median_walk_equals_the_step_by_step_walk() -> None:
    rng = np.random.default_rng(7)
    for trial in range(400):
        n = int(rng.integers(1, 60))
        kind = trial % 4
        if kind == 0:  # sparse: many empty bins and ties
            counts = rng.integers(0, 3, n) * (rng.random(n) < 0.4)
        elif kind == 1:  # peaked, like a sky histogram
            centre = rng.uniform(0, n)
            counts = np.round(50 * np.exp(-0.5 * ((np.arange(n) - centre) / (n / 6 + 1)) ** 2))
        elif kind == 2:
            counts = rng.integers(0, 100, n)
        else:  # all equal: every comparison a tie or an alternation
            counts = np.full(n, int(rng.integers(0, 4)))
        counts = counts.astype(np.int64)
        cum = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        lcut = int(rng.integers(0, n))
        hcut = int(rng.integers(lcut, n))
        assert median_walk(cum, lcut, hcut) == _walk_by_steps(counts, lcut, hcut)


def test_mesh_background_with_nothing_usable_equals_sep() -> None:
    """Every pixel masked, or every pixel NaN: no usable cell, sep's fallbacks (level 0,
    rms 1)."""
    image = np.random.default_rng(5).normal(5.0, 1.0, (300, 400)).astype(np.float32)
    for data, mask in ((image, np.ones(image.shape, bool)), (np.full_like(image, np.nan), None)):
        want = sep.Background(data, mask=mask, bw=64, bh=64)
        got = mesh_background(data, mask, bw=64, bh=64)
        np.testing.assert_array_equal(got.back(), want.back(dtype=np.float32))
        assert (got.globalback, got.globalrms) == (want.globalback, want.globalrms)
