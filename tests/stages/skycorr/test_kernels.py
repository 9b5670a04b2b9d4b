"""The sky-correction kernel against the numpy statistics it replaces."""

from __future__ import annotations

import warnings

import numpy as np

from lsstlite.stages.skycorr._kernels import clipped_block_stats


def _numpy_stats(
    image: np.ndarray, bad: np.ndarray, bin_px: int, n_sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ny, nx = image.shape
    by, bx = ny // bin_px, nx // bin_px
    blocks = np.where(bad, np.nan, image)[: by * bin_px, : bx * bin_px]
    blocks = blocks.reshape(by, bin_px, bx, bin_px).transpose(0, 2, 1, 3).reshape(by, bx, -1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(blocks, axis=2)
        mad = np.nanmedian(np.abs(blocks - med[..., None]), axis=2) * 1.4826
        keep = np.abs(blocks - med[..., None]) <= n_sigma * np.maximum(mad, 1e-30)[..., None]
        clipped = np.where(keep, blocks, np.nan)
        return (
            np.nanmedian(clipped, axis=2),
            np.sum(np.isfinite(clipped), axis=2),
            np.nanstd(clipped, axis=2),
        )


def test_clipped_block_stats_equal_numpy() -> None:
    rng = np.random.default_rng(3)
    ny, nx, bin_px = 200, 270, 32  # partial superpixels on both axes are left out
    image = 100.0 + 5.0 * rng.standard_normal((ny, nx))
    image[rng.random((ny, nx)) < 0.02] += 500.0  # outliers to clip
    image[10:20, 40:45] = np.nan
    image[64:96, 0:32] = 7.0  # constant superpixel: mad 0, every pixel kept
    bad = rng.random((ny, nx)) < 0.1
    bad[96:128, 32:64] = True  # a fully masked superpixel
    value, count, sigma = clipped_block_stats(image, bad, bin_px, 3.0)
    ref_value, ref_count, ref_sigma = _numpy_stats(image, bad, bin_px, 3.0)
    assert value.shape == (ny // bin_px, nx // bin_px)
    np.testing.assert_array_equal(count, ref_count)
    np.testing.assert_array_equal(value, ref_value)  # medians of the same values
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-12)
    assert np.isnan(value[3, 1]) and count[3, 1] == 0 and np.isnan(sigma[3, 1])
    assert value[2, 0] == 7.0 and count[2, 0] == (~bad[64:96, 0:32]).sum() and sigma[2, 0] == 0.0
    # the outliers were clipped: the kept scatter is that of the noise
    assert np.nanmedian(sigma) < 6.0
