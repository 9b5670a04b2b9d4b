"""The warp's vector tap sums against plain numpy sums."""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

from lsstlite.stages.warp._kernels import _taps6, kernel_table


@numba.njit
def _call(
    fimg: NDArray[np.float32],
    fvar: NDArray[np.float32],
    base: NDArray[np.int64],
    nx: int,
    table: NDArray[np.float32],
    px: NDArray[np.int64],
    py: NDArray[np.int64],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    out_i = np.empty(base.size, np.float32)
    out_v = np.empty(base.size, np.float32)
    for k in range(base.size):
        out_i[k], out_v[k] = _taps6(fimg, fvar, base[k], nx, table, px[k], py[k])
    return out_i, out_v


def test_vector_taps_equal_the_weighted_sums() -> None:
    """Image Σ wy wx I and variance Σ wy² wx² V over the 6×6 taps, at random positions
    (row ends included) and phases, to float32 rounding; a NaN tap gives NaN."""
    rng = np.random.default_rng(8)
    ny, nx = 37, 53
    img = rng.normal(100.0, 30.0, (ny, nx)).astype(np.float32)
    var = rng.uniform(10.0, 200.0, (ny, nx)).astype(np.float32)
    table = kernel_table("lanczos3")
    n = 2000
    y0 = rng.integers(0, ny - 5, n)
    x0 = rng.integers(0, nx - 5, n)
    x0[:50] = nx - 6  # the last taps are the row's last pixels
    px = rng.integers(0, table.shape[0], n)
    py = rng.integers(0, table.shape[0], n)
    got_i, got_v = _call(img.ravel(), var.ravel(), y0 * nx + x0, nx, table, px, py)
    wx = table[px].astype(np.float64)
    wy = table[py].astype(np.float64)
    rows = y0[:, None, None] + np.arange(6)[None, :, None]
    cols = x0[:, None, None] + np.arange(6)[None, None, :]
    w2 = wy[:, :, None] * wx[:, None, :]
    want_i = (w2 * img[rows, cols]).sum(axis=(1, 2))
    want_v = (w2 * w2 * var[rows, cols]).sum(axis=(1, 2))
    np.testing.assert_allclose(got_i, want_i, rtol=2e-6, atol=2e-5)
    np.testing.assert_allclose(got_v, want_v, rtol=2e-6, atol=2e-5)
    img[10, 20] = np.nan
    bad_i, bad_v = _call(
        img.ravel(), var.ravel(), np.array([8 * nx + 17]), nx, table, px[:1], py[:1]
    )
    assert np.isnan(bad_i[0]) and np.isfinite(bad_v[0])
