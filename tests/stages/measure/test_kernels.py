"""Measurement kernels against the library calls they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve

from lsstlite.stages.measure._kernels import model_templates


def _gaussian(size: int, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    g = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    return g / g.sum()


def test_batched_model_templates_equal_separate_convolutions() -> None:
    """The batched FFT (padded by half the kernel only) is scipy's linear "same"
    convolution (to float32 round-off), also for profiles that fill the stamp and stamps smaller than the PSF."""
    profiles = [(1.0, 0.4), (1.0, 2.5), (4.0, 0.8), (4.0, 3.0)]
    delta = np.ones((1, 1))
    for size, psf_size in [(41, 25), (27, 23), (15, 25), (60, 23)]:
        psf = _gaussian(psf_size, 1.7)
        psf[0, -1] = psf[-1, 0] = 0.01  # power in the corners: wrapping would show
        cx, cy = size / 2 - 0.2, size / 2 - 0.9
        models = model_templates(profiles, 0.2, -0.1, cx, cy, size, psf)
        galaxies = model_templates(profiles, 0.2, -0.1, cx, cy, size, delta)
        assert models.shape == (len(profiles), size, size)
        for model, gal in zip(models, galaxies, strict=True):
            expected = fftconvolve(gal, psf, mode="same")
            # float32 transforms: round-off ~1e-7 of the peak (wrapping would be ~1e-2)
            np.testing.assert_allclose(model, expected, rtol=0, atol=1e-6 * gal.max())
    psf = _gaussian(25, 1.7)
    models = model_templates(profiles, 0.2, -0.1, 20.3, 19.6, 41, psf)
    # unit flux where the pixel sampling resolves the profile (r_e = 0.4 px: 1.4% low)
    np.testing.assert_allclose(models[1:].sum(axis=(1, 2)), 1.0, atol=0.005)


def test_sersic_grid_and_binning_match_the_formula() -> None:
    """Cells beyond r_e are the profile at their centre (n = 1 and 4 take a pow-free
    path); binning ``over × over`` cells is numpy's reshape-sum."""
    from lsstlite.sim._kernels import sersic_grid
    from lsstlite.stages.measure._kernels import _bin, sersic_bn

    size, cx, cy, r_e = 40, 19.3, 20.6, 3.0
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(xx - cx, yy - cy)
    for n in (1.0, 4.0, 2.5):
        b = sersic_bn(n)
        grid = sersic_grid(size, 1.0, cx, cy, n, b, r_e, 1.0, 0.0, 1.0, 4.0 * r_e)
        outer = (r > r_e * 1.01) & (r < 4.0 * r_e * 0.99)
        want = np.exp(-b * (r / r_e) ** (1.0 / n))
        np.testing.assert_allclose(grid[outer], want[outer], rtol=1e-13)
        np.testing.assert_allclose(
            _bin(grid, 4, 0.5), 0.5 * grid.reshape(10, 4, 10, 4).sum(axis=(1, 3)), rtol=1e-13
        )


def test_centred_sersic_grid_is_the_mirrored_half() -> None:
    """A profile centred on the grid's middle computes half the rows and mirrors them:
    the same grid to rounding, for odd and even sizes, elliptical, cuspy and truncated
    within the grid; an off-centre call is refused."""
    from lsstlite.sim._kernels import sersic_grid
    from lsstlite.stages.measure._kernels import sersic_bn

    for size, step in ((108, 0.25), (54, 0.5), (41, 1.0)):
        c = 0.5 * (size - 1)
        for n, r_e, (m00, m01, m11) in (
            (1.0, 2.0, (1.2, 0.3, 0.9083333333333333)),
            (4.0, 0.4, (1.0, 0.0, 1.0)),
            (4.0, 6.0, (0.8, -0.2, 1.3)),
        ):
            args = (size, step, c, c, n, sersic_bn(n), r_e, m00, m01, m11, 4.0 * r_e, 9)
            full, half = sersic_grid(*args, False), sersic_grid(*args, True)
            assert full.max() > 0
            np.testing.assert_allclose(half, full, rtol=1e-14, atol=1e-300)
    with pytest.raises(ValueError, match="centred"):
        sersic_grid(40, 1.0, 19.5, 19.0, 1.0, 1.678, 3.0, 1.0, 0.0, 1.0, 12.0, 9, True)


def test_ellipse_cells_hold_every_cell_inside_the_ellipse() -> None:
    """The loops of ``sersic_grid`` and ``_bin`` visit only this box: every cell centre
    inside the truncation ellipse must be in it (cells outside it are zero)."""
    from lsstlite.sim._kernels import ellipse_cells

    rng = np.random.default_rng(11)
    for _ in range(200):
        size, step = int(rng.integers(20, 120)), float(rng.choice([0.25, 0.5, 1.0]))
        e1, e2 = rng.uniform(-0.6, 0.6, 2)
        e = min(np.hypot(e1, e2), 0.95)
        norm = np.sqrt(1 - e * e)
        s = e / max(np.hypot(e1, e2), 1e-12)
        m00, m01, m11 = (1 - e1 * s) / norm, -e2 * s / norm, (1 + e1 * s) / norm
        cx, cy = rng.uniform(-10, size + 10, 2)
        r = float(rng.uniform(0.5, 30.0))
        j0, j1, i0, i1 = ellipse_cells(size, step, cx, cy, m00, m01, m11, r)
        yy, xx = np.mgrid[0:size, 0:size]
        dx, dy = (xx - cx) * step, (yy - cy) * step
        inside = m00 * dx * dx + 2 * m01 * dx * dy + m11 * dy * dy < r * r
        box = np.zeros_like(inside)
        box[j0:j1, i0:i1] = True
        assert not (inside & ~box).any()
        assert box.sum() <= max(inside.sum(), 1) * 4 + 8 * (j1 - j0 + i1 - i0) + 16
