"""Rendering kernels against the reference PSF model, and the brighter-fatter step."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lsstlite.data.psf import MoffatPsf
from lsstlite.instruments.simcam import PIXEL_SCALE_ARCSEC, SimCam
from lsstlite.sim import true_image, true_psf
from lsstlite.sim._kernels import add_moffat, bleed_columns
from lsstlite.sim.render import brighter_fatter_delta


@pytest.mark.parametrize(
    ("fwhm", "beta", "e1", "e2", "x", "y"),
    [
        (3.0, 2.8, 0.0, 0.0, 30.0, 30.0),
        (4.2, 3.0, 0.04, -0.03, 30.37, 29.71),
        (5.0, 3.3, -0.05, 0.02, 29.52, 30.49),
    ],
)
def test_moffat_kernel_matches_psf_model(
    fwhm: float, beta: float, e1: float, e2: float, x: float, y: float
) -> None:
    """The numba kernel agrees with MoffatPsf.image to 1e-4 of the peak (61 × 61 stamp)."""
    image = np.zeros((61, 61))
    add_moffat(image, x, y, 1.0, fwhm, beta, e1, e2, 30)
    ref = MoffatPsf(fwhm=fwhm, beta=beta, e1=e1, e2=e2).image(x, y, size=61, center=(x, y))
    assert np.max(np.abs(image - ref)) < 1e-4 * ref.max()
    assert abs(image.sum() - ref.sum()) < 1e-4 * ref.sum()


def _moments(image: np.ndarray) -> tuple[float, float, float, float, float]:
    y, x = np.mgrid[: image.shape[0], : image.shape[1]].astype(float)
    f = image.sum()
    xc, yc = (image * x).sum() / f, (image * y).sum() / f
    # Pixel integration adds the top-hat's 1/12 px² to both axes.
    ixx = (image * (x - xc) ** 2).sum() / f - 1 / 12
    iyy = (image * (y - yc) ** 2).sum() / f - 1 / 12
    ixy = (image * (x - xc) * (y - yc)).sum() / f
    return xc, yc, ixx, iyy, ixy


def test_rendered_psf_moments_give_truth(small_dir) -> None:
    """A star drawn with the true PSF has the FWHM and ellipticity listed in the truth."""
    exposures = pd.read_parquet(small_dir / "truth" / "exposures.parquet")
    row = exposures.iloc[0]
    psf = true_psf(small_dir, int(row.visit), int(row.detector))
    xc, yc = psf.x0, psf.y0
    m = psf.params_at(xc, yc)
    size = 401  # Moffat β≈3 moments converge slowly: use a large stamp
    image = np.zeros((size, size))
    add_moffat(image, 200.3, 199.8, 1.0, m.fwhm, m.beta, m.e1, m.e2, 200)
    _, _, ixx, iyy, ixy = _moments(image)
    e1, e2 = (ixx - iyy) / (ixx + iyy), 2 * ixy / (ixx + iyy)
    assert e1 == pytest.approx(row.psf_e1, abs=1e-3)
    assert e2 == pytest.approx(row.psf_e2, abs=1e-3)
    s = math.sqrt(ixx * iyy - ixy * ixy)  # the circular profile's second moment
    alpha = math.sqrt(2 * (m.beta - 2) * s)
    fwhm = 2 * alpha * math.sqrt(2 ** (1 / m.beta) - 1)
    assert fwhm * PIXEL_SCALE_ARCSEC == pytest.approx(row.psf_fwhm_arcsec, rel=0.01)


def test_brighter_fatter_conserves_charge_and_broadens() -> None:
    """Stars grow by 1–2% (Gaussian-weighted size) from faint to a 90 ke⁻ peak; charge is kept."""
    kernel = SimCam("small").bf_kernel()
    yy, xx = np.mgrid[:61, :61].astype(float)
    weight = np.exp(-0.5 * ((xx - 30.2) ** 2 + (yy - 29.9) ** 2) / 2.5**2)
    sizes = []
    for peak in (100.0, 90_000.0):
        image = np.zeros((61, 61))
        add_moffat(image, 30.2, 29.9, 1.0, 4.0, 3.0, 0.0, 0.0, 30)
        image *= peak / image.max()
        delta = brighter_fatter_delta(image, kernel)
        assert abs(delta.sum()) < 1e-9 * image.sum()
        out = (image + delta) * weight
        r2 = (xx - 30.2) ** 2 + (yy - 29.9) ** 2
        sizes.append(math.sqrt((out * r2).sum() / out.sum()))
    growth = sizes[1] / sizes[0] - 1
    assert 0.01 < growth < 0.02


def test_bleed_conserves_charge() -> None:
    image = np.zeros((50, 3))
    image[25, 1] = 5.5e5
    image[10, 2] = 50.0
    total = image.sum()
    bleed_columns(image, np.full(3, 1e5))
    assert image.max() <= 1e5
    assert image.sum() == pytest.approx(total)
    assert np.count_nonzero(image[:, 1] == 1e5) == 5  # bled up and down the column


def test_true_image_is_deterministic_and_sky_dominated(small_dir) -> None:
    exposures = pd.read_parquet(small_dir / "truth" / "exposures.parquet")
    row = exposures.iloc[1]
    a = true_image(small_dir, int(row.visit), int(row.detector))
    b = true_image(small_dir, int(row.visit), int(row.detector))
    assert a.shape == (1024, 512)
    assert np.array_equal(a, b)
    assert np.median(a) == pytest.approx(row.sky, rel=0.02)
    assert (a - np.median(a)).max() > 1e5  # there are bright stars


@pytest.mark.parametrize(
    ("n", "s_xx", "s_xy", "s_yy"),
    [(1.0, 9.0, 2.0, 4.0), (4.0, 4.0, -1.0, 6.0), (1.0, 16.0, 3.0, 9.0), (4.0, 30.0, 5.0, 20.0)],
)
def test_galaxy_rendering_matches_brute_force(
    n: float, s_xx: float, s_xy: float, s_yy: float
) -> None:
    """Both galaxy paths (compact/n = 4 on a 1/3-px grid; extended n = 1 at pixel level) equal
    a brute-force 8×-oversampled convolution binned to pixels, to 0.3% of the peak, and
    keep the flux."""
    from scipy.signal import fftconvolve

    from lsstlite.data.psf import VaryingMoffatPsf
    from lsstlite.sim._kernels import moffat_grid, sersic_grid
    from lsstlite.sim.render import SERSIC_TRUNCATION, _add_galaxy, _GalaxyPsfCache, _sersic_bn

    psf = VaryingMoffatPsf(fwhm_coeffs=[4.0], e1_coeffs=[0.02], e2_coeffs=[-0.01], beta=3.0)
    # flux > 2e4 e⁻: the PSF is kept to 5 FWHM (fainter galaxies use 3 FWHM, renormalised)
    row = pd.Series(
        {
            "x": 60.3,
            "y": 59.6,
            "flux_e": 1e5,
            "sersic_n": n,
            "s_xx": s_xx,
            "s_xy": s_xy,
            "s_yy": s_yy,
        }
    )
    fast = np.zeros((121, 121))
    _add_galaxy(fast, row, _GalaxyPsfCache(psf))
    over, size = 8, 121
    m = np.linalg.inv(np.array([[s_xx, s_xy], [s_xy, s_yy]]))
    mid = (size * over - 1) / 2
    grid = sersic_grid(
        size * over,
        1 / over,
        mid + 0.3 * over,
        mid - 0.4 * over,
        n,
        _sersic_bn(n),
        1.0,
        m[0, 0],
        m[0, 1],
        m[1, 1],
        SERSIC_TRUNCATION[n],
    )
    kernel = moffat_grid(41 * over + 1, 1 / over, 4.0, 3.0, 0.02, -0.01)
    conv = fftconvolve(grid / grid.sum() * 1e5, kernel / kernel.sum(), mode="same")
    ref = conv.reshape(size, over, size, over).sum(axis=(1, 3))
    assert fast.sum() == pytest.approx(1e5, rel=1e-6)
    assert np.max(np.abs(fast - ref)) < 0.003 * ref.max()
