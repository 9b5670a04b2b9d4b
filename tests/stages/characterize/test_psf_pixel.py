"""PixelPsf: serialisation, evaluation, PSFEx files, and the pixel-basis fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lsstlite.data import MoffatPsf, psf_from_dict
from lsstlite.data.psf_pixel import PixelPsf, lanczos_weights
from lsstlite.stages.characterize import _kernels

PSFEX = Path("psf_models_real") / "DECam_00154912_12_psfcat.psf"


def _moffat_stars(
    psf: MoffatPsf, n: int, size: int, seed: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cx = size // 2 + rng.uniform(-0.5, 0.5, n)
    cy = size // 2 + rng.uniform(-0.5, 0.5, n)
    stamps = np.stack(
        [psf.image(0, 0, size=size, center=(a, b)) for a, b in zip(cx, cy, strict=False)]
    )
    return stamps, cx, cy


def test_fit_recovers_moffat_without_noise() -> None:
    true = MoffatPsf(fwhm=4.2, beta=3.0, e1=0.03, e2=-0.02)
    stamps, cx, cy = _moffat_stars(true, 30, 25)
    basis, _, _, _ = _kernels.fit_pixel_basis(
        stamps * 1e5, cx, cy, np.ones((1, 30)), np.ones(30), n=25, step=1.0
    )
    model = PixelPsf.from_array(basis, degree=0).moffat_at(0, 0)
    assert model.fwhm == pytest.approx(true.fwhm, rel=2e-3)
    assert model.e1 == pytest.approx(true.e1, abs=1e-3)
    assert model.e2 == pytest.approx(true.e2, abs=1e-3)


def test_round_trip_and_normalisation() -> None:
    true = MoffatPsf(fwhm=4.0, beta=3.0)
    basis = np.stack(
        [true.image(0, 0, size=21, center=(10, 10)), np.zeros((21, 21)), np.zeros((21, 21))]
    )
    psf = PixelPsf.from_array(basis / basis[0].sum(), degree=1, x0=100.0, y0=200.0)
    again = psf_from_dict(psf.to_dict())
    assert isinstance(again, PixelPsf)
    np.testing.assert_allclose(again.image(3.3, 7.8), psf.image(3.3, 7.8))
    img = psf.image(50.4, 60.7, size=31)
    assert img.sum() == pytest.approx(1.0, abs=2e-3)
    # The centroid follows the requested sub-pixel position.
    yy, xx = np.mgrid[0:31, 0:31]
    assert (img * xx).sum() / img.sum() == pytest.approx(15 + 0.4, abs=0.02)
    assert (img * yy).sum() / img.sum() == pytest.approx(15 - 0.3, abs=0.02)


def test_bad_basis_shape_names_the_problem() -> None:
    with pytest.raises(ValueError, match="shape"):
        PixelPsf(basis=np.zeros((2, 5, 5)).tolist(), degree=1)


def test_read_psfex_model(real_data: Path) -> None:
    psf = PixelPsf.from_psfex(real_data / PSFEX)
    assert (psf.degree, psf.size, psf.lanczos_order) == (2, 25, 3)
    # PSF_FWHM of the file (pixels) is that of the pixelised model; ours is the intrinsic
    # FWHM of the best-matching Moffat (DECam's header says 4.52 px measured on stars).
    header_fwhm = 4.58513832
    centre = psf.fwhm_at(1023.3, 2047.3)
    assert 0.8 < centre / header_fwhm < 1.0
    corners = [psf.fwhm_at(x, y) for x, y in ((50, 50), (2000, 4000))]
    assert all(abs(c / centre - 1) < 0.15 for c in corners)
    e1, e2 = psf.ellipticity_at(1023.3, 2047.3)
    assert np.hypot(e1, e2) < 0.35
    img = psf.image(500.2, 1000.7, size=31)
    assert img.sum() == pytest.approx(1.0, abs=0.02)
    assert np.unravel_index(np.argmax(img), img.shape) == (15, 15)
    # The model varies across the CCD: the images at two corners differ.
    assert np.abs(psf.image(10, 10) - psf.image(2000, 4000)).max() > 1e-4


@pytest.mark.parametrize("order", [3, 5])
def test_lanczos_weights_match_the_dense_formula(order: int) -> None:
    """The sparse numba weights equal the dense table: ``sinc(t) sinc(t/a)`` over the grid
    extended by ``a``, normalised per row, cropped to the grid (zeros beyond it)."""
    rng = np.random.default_rng(0)
    n = 25
    offsets = np.concatenate([rng.uniform(-10, n + 10, 300), np.arange(-8.0, n + 8.0, 0.5)])
    t = offsets[:, None] - np.arange(-order, n + order)[None, :]
    dense = np.where(np.abs(t) < order, np.sinc(t) * np.sinc(t / order), 0.0)
    total = dense.sum(axis=1, keepdims=True)
    dense = np.where(np.abs(total) > 1e-12, dense / np.where(total == 0, 1.0, total), 0.0)
    want = dense[:, order : order + n]
    got = lanczos_weights(offsets, n, order)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
    inside = (offsets >= order) & (offsets <= n - 1 - order)
    np.testing.assert_allclose(got[inside].sum(axis=1), 1.0, rtol=1e-12)


def test_gather_stamps_match_padded_fancy_indexing() -> None:
    """Stamps at corners inside, across the edges and wholly outside the image."""
    rng = np.random.default_rng(2)
    image = rng.normal(0, 1, (50, 70)).astype(np.float32)
    m = 9
    x0 = np.array([0, 10, -4, 65, -20, 30, 61], dtype=np.int64)
    y0 = np.array([0, 20, 45, -3, 5, 100, 41], dtype=np.int64)
    for fill in (0.0, np.inf):
        padded = np.pad(image.astype(np.float64), m, constant_values=fill)
        off = np.arange(m)
        yy = np.clip((y0 + m)[:, None, None] + off[None, :, None], 0, 50 + 2 * m - 1)
        xx = np.clip((x0 + m)[:, None, None] + off[None, None, :], 0, 70 + 2 * m - 1)
        want = padded[yy, xx]
        got = _kernels.gather_stamps(image, x0, y0, m, fill)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float64
