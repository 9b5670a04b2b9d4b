"""Numba kernels of characterisation against the scipy calls they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lsstlite.stages.calibs._kernels import dilate_diamond
from lsstlite.stages.characterize import _kernels


@pytest.mark.parametrize(("ny", "nx", "ry", "rx"), [(300, 257, 4, 4), (64, 90, 1, 6), (7, 5, 4, 3)])
def test_correlate_separable_matches_scipy(ny: int, nx: int, ry: int, rx: int) -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(10.0, 3.0, (ny, nx)).astype(np.float32)
    ky = rng.uniform(0.1, 1.0, 2 * ry + 1)
    kx = rng.uniform(-0.2, 1.0, 2 * rx + 1)  # asymmetric: correlation, not convolution
    want = ndimage.correlate1d(
        ndimage.correlate1d(data.astype(np.float64), ky, axis=0, mode="constant"),
        kx,
        axis=1,
        mode="constant",
    )
    got = _kernels.correlate_separable(data, ky, kx)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_gaussian_taps_are_gaussian_filters() -> None:
    rng = np.random.default_rng(4)
    data = rng.normal(size=(120, 130)).astype(np.float32)
    for sigma in (0.5, 1.7, 3.2):
        g = _kernels.gaussian_taps(sigma)
        want = ndimage.gaussian_filter(data.astype(np.float64), sigma, mode="constant", truncate=4)
        np.testing.assert_allclose(_kernels.correlate_separable(data, g, g), want, atol=1e-5)


def test_local_maxima_match_maximum_filter() -> None:
    rng = np.random.default_rng(5)
    snr = (ndimage.gaussian_filter(rng.normal(size=(400, 300)), 2) * 10).astype(np.float32)
    snr[0, 0], snr[3, 299], snr[399, 150] = 60.0, 50.0, 70.0  # peaks at the edges
    snr[200, 100] = snr[200, 101] = 40.0  # a tie: both count, as with maximum_filter
    seg = (snr > 1.0).astype(np.int32)
    want = np.nonzero((snr == ndimage.maximum_filter(snr, size=9)) & (snr > 2.0) & (seg > 0))
    got = _kernels.local_maxima(snr, seg, 2.0, 4)
    assert len(got[0]) > 100
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_dilate_diamond_is_iterated_binary_dilation() -> None:
    mask = np.random.default_rng(6).random((200, 180)) < 0.003
    mask[0, :3] = mask[-1, -1] = True
    for radius in (1, 3):
        want = ndimage.binary_dilation(mask, iterations=radius)
        np.testing.assert_array_equal(dilate_diamond(mask, radius), want)
