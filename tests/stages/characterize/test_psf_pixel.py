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


def test_psf_fit_sums_match_padded_cutouts() -> None:
    """Stamps inside, across the edges and wholly outside the image; a pixel with an
    infinite variance is left out like one outside."""
    rng = np.random.default_rng(2)
    image = rng.normal(0, 1, (50, 70)).astype(np.float32)
    variance = rng.uniform(1, 2, (50, 70)).astype(np.float32)
    variance[20:23, 12:14] = np.inf
    m = 9
    x0 = np.array([0, 10, -4, 65, -20, 30, 61], dtype=np.int64)
    y0 = np.array([0, 20, 45, -3, 5, 100, 41], dtype=np.int64)
    stamps = rng.uniform(0, 1, (len(x0), m, m))

    def cutouts(array: np.ndarray, fill: float) -> np.ndarray:
        padded = np.pad(array.astype(np.float64), m, constant_values=fill)
        off = np.arange(m)
        yy = np.clip((y0 + m)[:, None, None] + off[None, :, None], 0, 50 + 2 * m - 1)
        xx = np.clip((x0 + m)[:, None, None] + off[None, None, :], 0, 70 + 2 * m - 1)
        return padded[yy, xx]  # type: ignore[no-any-return]

    d, v = cutouts(image, 0.0), cutouts(variance, np.inf)
    p = np.where(np.isfinite(v), stamps, 0.0)
    pp, pd, ppv = _kernels.psf_fit_sums(image, variance, stamps, x0, y0)
    np.testing.assert_allclose(pp, (p * p).sum(axis=(1, 2)), rtol=1e-13)
    np.testing.assert_allclose(pd, (p * d).sum(axis=(1, 2)), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ppv, (p * p * np.where(p > 0, v, 0)).sum(axis=(1, 2)), rtol=1e-13)
    assert pp[5] == 0.0  # wholly outside


def _gaussian_pixel_psf(sigma: float = 2.0, step: float = 0.5, n: int = 41) -> PixelPsf:
    """A spatially constant PixelPsf whose samples are a Gaussian (sample units)."""
    yy, xx = (np.mgrid[0:n, 0:n] - n // 2) * step
    g = np.exp(-0.5 * (xx**2 + yy**2) / sigma**2)
    return PixelPsf.from_array((g / g.sum())[None], degree=0, step=step)


def test_affine_image_identity_is_image() -> None:
    true = MoffatPsf(fwhm=4.0, beta=3.0, e1=0.05)
    grid = true.image(0, 0, size=41, center=(20, 20))
    psf = PixelPsf.from_array(np.stack([grid, 0.2 * grid, np.zeros_like(grid)]), degree=1)
    out = np.zeros((25, 25))
    psf.add_affine_image(out, 1500.3, 700.8, np.eye(2), (12.3, 11.8), weight=2.0)
    np.testing.assert_allclose(
        out, 2.0 * psf.image(1500.3, 700.8, size=25), rtol=0, atol=1e-7 * out.max()
    )


def test_affine_image_vector_taps_are_the_tabulated_sums() -> None:
    """The order-5 interior pixels (LLVM vector code) are the separable sums of the
    tap table's interpolated rows, as the scalar path computes them (to rounding)."""
    from lsstlite.data.psf_pixel import _tap_table

    rng = np.random.default_rng(2)
    n, step, order = 61, 0.5, 5
    grid = rng.random((n, n))
    psf = PixelPsf.from_array(grid[None], degree=0, step=step)
    assert psf.lanczos_order == order
    jac = np.array([[1.03, 0.21], [-0.17, 0.94]])
    out = np.zeros((17, 17))
    psf.add_affine_image(out, 0.0, 0.0, jac, (8.4, 7.7), weight=1.5)
    table = _tap_table(order)
    samples = psf.samples(0.0, 0.0)
    scale = 1.5 * abs(np.linalg.det(jac)) / step**2
    want = np.zeros_like(out)
    for row in range(17):
        for col in range(17):
            su, sv = (jac @ [col - 8.4, row - 7.7]) / step + n // 2
            kx, ky = int(np.floor(su)) - order + 1, int(np.floor(sv)) - order + 1
            assert 0 <= kx and kx + 10 <= n and 0 <= ky and ky + 10 <= n  # all interior
            w = []
            for off in (su, sv):
                pos = (off - np.floor(off)) * (table.shape[0] - 1)
                p = min(int(pos), table.shape[0] - 2)
                w.append(table[p] + (pos - p) * (table[p + 1] - table[p]))
            want[row, col] = scale * (w[1] @ samples[ky : ky + 10, kx : kx + 10] @ w[0])
    np.testing.assert_allclose(out, want, rtol=1e-13, atol=1e-15 * np.abs(want).max())


def test_affine_image_edges_are_the_scalar_taps() -> None:
    """A grid barely wider than the stamp (as the fitted models: 29 samples of 1 px for a
    27-px stamp): pixels whose kernel overhangs the grid take the padded vector path and
    equal the scalar taps (:func:`_taps`: weights of the extended lattice, zero off the
    grid), to rounding; pixels beyond the grid stay zero."""
    from lsstlite.data.psf_pixel import _tap_table, _taps

    rng = np.random.default_rng(4)
    n, step, a = 29, 1.0, 5
    psf = PixelPsf.from_array(rng.random((n, n))[None], degree=0, step=step)
    samples = psf.samples(0.0, 0.0)
    jac = np.array([[1.02, 0.05], [-0.04, 0.97]])
    out = np.zeros((41, 41))
    psf.add_affine_image(out, 0.0, 0.0, jac, (20.3, 19.6))
    table = _tap_table(a)
    wx, wy = np.empty(2 * a), np.empty(2 * a)
    want = np.zeros_like(out)
    for row in range(41):
        for col in range(41):
            su, sv = (jac @ [col - 20.3, row - 19.6]) / step + n // 2
            if min(su, sv) <= -a or max(su, sv) >= n - 1 + a:
                continue
            kx, ky = _taps(su, n, a, table, wx), _taps(sv, n, a, table, wy)
            for p in range(2 * a):
                for q in range(2 * a):
                    if 0 <= ky + p < n and 0 <= kx + q < n:
                        want[row, col] += wy[p] * wx[q] * samples[ky + p, kx + q]
    want *= abs(np.linalg.det(jac)) / step**2  # flux through the map
    assert (want == 0).sum() > 100 and (want != 0).sum() > 900  # edges and beyond
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-14 * np.abs(want).max())


@pytest.mark.parametrize("angle", [0.0, 0.4, 1.3])
def test_affine_image_matches_transformed_gaussian(angle: float) -> None:
    """Through ``d_in = J d_out`` a Gaussian of covariance C becomes one of covariance
    ``J⁻¹ C J⁻ᵀ`` with flux unchanged: ``|det J| G(J d_out)`` (to the Lanczos-5
    interpolation error of the model grid, ~1e-3 of the peak, as :meth:`image`)."""
    sigma, step = 2.0, 0.5
    psf = _gaussian_pixel_psf(sigma, step)
    c, s = np.cos(angle), np.sin(angle)
    jac = np.array([[1.1 * c, -0.95 * s], [1.1 * s, 0.95 * c]])
    out = np.zeros((31, 31))
    psf.add_affine_image(out, 10.0, 20.0, jac, (15.2, 14.7))
    yy, xx = np.mgrid[0:31, 0:31]
    d = np.stack([xx - 15.2, yy - 14.7])
    u = np.einsum("ij,jkl->ikl", jac, d)
    norm = step**2 / (2 * np.pi * sigma**2)  # the samples sum to one
    truth = abs(np.linalg.det(jac)) * norm / step**2 * np.exp(-0.5 * (u**2).sum(0) / sigma**2)
    np.testing.assert_allclose(out, truth, rtol=0, atol=2e-3 * truth.max())
    assert out.sum() == pytest.approx(1.0, abs=2e-3)


def test_warped_psf_both_paths_match_the_transformed_moffat() -> None:
    """A WarpedPsf draws a pixel-basis input straight from its grid and an analytic one
    through a detector stamp. On a Moffat rotated by 30° and rescaled by the warp, both
    match the truth ``|det J| · M_pix(J d_out)`` (the pixel-integrated Moffat) to the
    interpolation error (measured 1.6e-3 and 2.6e-3 of the peak)."""
    from lsstlite.data.wcs import make_tan_wcs, wcs_to_cards
    from lsstlite.stages.warp.psf import WarpedPsf, local_affine

    true = MoffatPsf(fwhm=4.0, beta=3.0, e1=0.06, e2=-0.03)
    # Samples of the pixel-integrated Moffat every half pixel (four interleaved stamps).
    grid = np.zeros((81, 81))
    for a in (0, 1):
        for b in (0, 1):
            stamp = true.image(0, 0, size=41, center=(20 - b / 2, 20 - a / 2))
            grid[a::2, b::2] = stamp[: 41 - a, : 41 - b]
    pixel = PixelPsf.from_array(grid[None] / grid.sum(), degree=0, step=0.5)
    wcs_in = wcs_to_cards(make_tan_wcs(150.0, 2.0, (1000.0, 1000.0), 0.2, rotation_deg=30.0))
    wcs_out = wcs_to_cards(make_tan_wcs(150.0, 2.0, (1200.0, 900.0), 0.18))
    x, y = 1250.3, 940.6
    _, _, jac = local_affine(wcs_in, wcs_out, x, y)
    truth = np.zeros((31, 31))
    for row in range(31):
        for col in range(31):  # stamp centre (15.3, 14.6): the position's sub-pixel part
            u = jac @ np.array([col - 15.3, row - 14.6])
            truth[row, col] = true.image(0, 0, size=1, center=(-u[0], -u[1]))[0, 0]
    truth *= abs(np.linalg.det(jac))
    for model in (pixel, true):
        img = WarpedPsf(model.to_dict(), wcs_in, wcs_out).image(x, y, size=31)
        np.testing.assert_allclose(img, truth, rtol=0, atol=3e-3 * truth.max())
        assert img.sum() == pytest.approx(truth.sum(), rel=2e-3)
