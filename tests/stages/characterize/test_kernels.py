"""Numba kernels of characterisation against the scipy calls they replace."""

from __future__ import annotations

import numba
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


@pytest.mark.parametrize(("ny", "nx", "r", "r2"), [(300, 257, 4, 4), (64, 90, 6, 3), (7, 5, 4, 2)])
def test_matched_snr_is_masked_correlations_divided(ny: int, nx: int, r: int, r2: int) -> None:
    rng = np.random.default_rng(6)
    image = rng.normal(10.0, 3.0, (ny, nx)).astype(np.float32)
    variance = rng.uniform(5.0, 20.0, (ny, nx)).astype(np.float32)
    bad = rng.uniform(size=(ny, nx)) < 0.05
    bad[: ny // 3, : nx // 3] = True  # a masked corner: zero signal and variance there
    image[bad] = np.nan  # masked pixels are never read
    ky, kx = rng.uniform(0.1, 1.0, 2 * r + 1), rng.uniform(-0.2, 1.0, 2 * r + 1)
    ky2, kx2 = rng.uniform(0.1, 1.0, 2 * r2 + 1), rng.uniform(0.1, 1.0, 2 * r2 + 1)

    def corr(data: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        tmp = ndimage.correlate1d(np.where(bad, 0.0, data), a, axis=0, mode="constant")
        return ndimage.correlate1d(tmp, b, axis=1, mode="constant")

    den = 0.3 * corr(variance, ky2, kx2)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = np.where(den > 0, corr(image, ky, kx) / np.sqrt(den), 0.0)
    for dtype in (np.float32, np.float64):
        got = np.full((ny, nx), np.nan, dtype=dtype)
        _kernels.matched_snr(image, variance, bad, ky, kx, ky2, kx2, 0.3, got)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_label_sums_are_bincount() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 40, (90, 70)).astype(np.int32)
    values = rng.normal(size=(90, 70)).astype(np.float32)
    want = np.bincount(labels.ravel(), weights=values.ravel(), minlength=41)
    np.testing.assert_allclose(_kernels.label_sums(labels, values, 40), want, rtol=1e-12)
    # labels beyond n are left out, not written past the end
    np.testing.assert_allclose(_kernels.label_sums(labels, values, 20), want[:21], rtol=1e-12)


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


def _fixed_point_moments(img: np.ndarray, xc: float, yc: float, w: np.ndarray) -> np.ndarray:
    """Reference: the plain W ← 2 M(W) iteration (truncated at 4σ), to 1e-10."""
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    d = np.stack([xx - xc, yy - yc])
    for _ in range(2000):
        q = np.einsum("iyx,ij,jyx->yx", d, np.linalg.inv(w), d)
        g = np.where(q <= 16.0, np.exp(-0.5 * q), 0.0) * img
        m = np.einsum("iyx,jyx,yx->ij", d, d, g) / g.sum()
        if np.allclose(2 * m, w, rtol=1e-12, atol=0):
            break
        w = 2 * m
    return w


@pytest.mark.parametrize("profile", ["gaussian", "exponential"])
def test_adaptive_moments_reach_the_fixed_point(profile: str) -> None:
    """Gaussians give their covariance; any source the fixed point W = 2 M(W) of the
    textbook iteration, however the iteration gets there."""
    yy, xx = np.mgrid[:81, :81].astype(np.float64)
    xc, yc = 40.3, 39.8
    cov = np.array([[6.0, 1.5], [1.5, 3.5]])
    inv = np.linalg.inv(cov)
    dx, dy = xx - xc, yy - yc
    q = inv[0, 0] * dx**2 + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy**2
    img = (np.exp(-0.5 * q) if profile == "gaussian" else np.exp(-np.sqrt(q))).astype(np.float32)
    ixx, iyy, ixy, ok = _kernels.adaptive_moments(img, np.array([xc]), np.array([yc]), 1.5)
    assert ok[0]
    want = _fixed_point_moments(img.astype(np.float64), xc, yc, np.eye(2) * 1.5**2)
    np.testing.assert_allclose(
        [ixx[0], iyy[0], ixy[0]], [want[0, 0], want[1, 1], want[0, 1]], rtol=3e-4
    )
    if profile == "gaussian":
        np.testing.assert_allclose([ixx[0], iyy[0], ixy[0]], [6.0, 3.5, 1.5], rtol=1e-3)


def _reference_seeds(
    work: np.ndarray, sigma: np.ndarray, bad: np.ndarray, n_sigma: float, k: float
) -> np.ndarray:
    """The CR test of every interior pixel, vectorised (ratios 0.3 / 0.15, cond 1.2)."""
    v = work[1:-1, 1:-1].astype(np.float64)
    s = sigma[1:-1, 1:-1].astype(np.float64)
    w = work.astype(np.float64)
    pairs = [
        (w[1:-1, :-2], w[1:-1, 2:], 0.3),
        (w[:-2, 1:-1], w[2:, 1:-1], 0.3),
        (w[:-2, :-2], w[2:, 2:], 0.15),
        (w[:-2, 2:], w[2:, :-2], 0.15),
    ]
    sharp = np.zeros(v.shape, bool)
    for a, b, r in pairs:
        q = r / 1.2
        sharp |= v * q - 0.5 * (a + b) > k * s * np.sqrt(q * q + 0.5)
    out = np.zeros(work.shape, bool)
    out[1:-1, 1:-1] = sharp & ~bad[1:-1, 1:-1] & (v >= n_sigma * s)
    return out


def _reference_interp(image: np.ndarray, masked: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32).copy()
    ny, nx = image.shape
    for j, i in zip(*np.nonzero(masked), strict=True):
        out[j, i] = 0.0
        for r in range(2, 8):
            sl = (
                slice(max(j - r, 0), min(j + r + 1, ny)),
                slice(max(i - r, 0), min(i + r + 1, nx)),
            )
            yy, xx = np.mgrid[sl]
            use = ~masked[sl]
            if use.any():
                w = 1.0 / ((yy - j) ** 2 + (xx - i) ** 2)[use]
                out[j, i] = (w * image[sl][use]).sum() / w.sum()
                break
    return out


def test_cosmic_rays_equal_the_dense_iteration() -> None:
    """Seeds on the whole image, then growth passes visiting only CR neighbours, equal
    the dense form: interpolate CR + bad pixels, test the 8-neighbours of CRs again."""
    rng = np.random.default_rng(10)
    ny, nx = 120, 150
    yy, xx = np.mgrid[:ny, :nx]
    image = rng.normal(0.0, 5.0, (ny, nx))
    for x, y, f in rng.uniform((5, 5, 500), (nx - 5, ny - 5, 20000), (15, 3)):
        image += f / (2 * np.pi * 2.0**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)
    for _ in range(25):  # tracks: a bright core with fainter pixels along it
        y, x = rng.integers(3, ny - 3), rng.integers(3, nx - 10)
        length = rng.integers(1, 8)
        image[y, x : x + length] += rng.uniform(200, 2000)
        image[y + 1, x : x + length] += rng.uniform(20, 60)
    image = image.astype(np.float32)
    variance = np.full((ny, nx), 25.0, np.float32)
    bad = np.zeros((ny, nx), bool)
    bad[:, 70] = True  # a bad column
    got = _kernels.find_cosmic_rays(image, variance, bad, ratios=(0.3, 0.15), n_grow=3)

    sigma = np.sqrt(variance)
    want = _reference_seeds(image, sigma, bad, 5.0, 5.0)
    for _ in range(3):
        work = _reference_interp(image, want | bad)
        near = ndimage.binary_dilation(want, structure=np.ones((3, 3), bool)) & ~want
        new = _reference_seeds(work, sigma, bad, 3.0, 3.0) & near
        if not new.any():
            break
        want |= new
    assert want.sum() > 60 and (want & ~_reference_seeds(image, sigma, bad, 5, 5)).any()
    np.testing.assert_array_equal(got, want)
    # repair: only the CR pixels change, by the interpolation that skips bad pixels
    repaired = _kernels.interpolate_masked(image, got | bad, only=got)
    np.testing.assert_array_equal(repaired[~got], image[~got])
    np.testing.assert_allclose(
        repaired[got], _reference_interp(image, got | bad)[got], rtol=1e-6, atol=1e-4
    )


def test_gaussian_weighted_sums_are_the_direct_sums() -> None:
    rng = np.random.default_rng(8)
    image = rng.normal(5.0, 2.0, (60, 70))
    ok = rng.uniform(size=image.shape) > 0.1
    yy, xx = np.mgrid[:60, :70].astype(float)
    for xc, yc, axx, ayy, axy, box in [
        (30.3, 28.7, 0.2, 0.3, 0.05, (0, 70, 0, 60)),
        (2.2, 57.9, 0.5, 0.1, -0.15, (0, 70, 0, 60)),  # run clipped at the image edges
        (35.0, 30.0, 0.05, 0.05, 0.0, (20, 50, 25, 40)),  # clipped by the box
    ]:
        dx, dy = xx - xc, yy - yc
        q = axx * dx * dx + 2 * axy * dx * dy + ayy * dy * dy
        x0, x1, y0, y1 = box
        inside = (q <= 16) & (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        for mask in (np.ones((0, 0), dtype=bool), ok):
            use = inside & (mask if mask.size else True)
            w = np.where(use, np.exp(-0.5 * q) * image, 0.0)
            want = (w.sum(), (w * dx * dx).sum(), (w * dy * dy).sum(), (w * dx * dy).sum())
            got = _kernels.gaussian_weighted_sums(image, mask, xc, yc, axx, ayy, axy, *box)
            np.testing.assert_allclose(got, want, rtol=1e-9)


def test_render_stars_equals_the_fit_resampling_matrices() -> None:
    rng = np.random.default_rng(9)
    n, m, step, n_s = 31, 21, 0.8, 40
    basis = rng.normal(size=(3, n, n))
    terms = rng.normal(size=(3, n_s))
    cx = rng.uniform(-2.0, m + 1.0, n_s)  # some centres off the stamp: edge taps
    cy = rng.uniform(8.0, 12.0, n_s)
    wx, wy = _kernels._star_weights(cx, cy, m, n, step)
    want = wy @ np.tensordot(terms.T, basis, axes=(1, 0)) @ wx.transpose(0, 2, 1)
    got = _kernels.render_stars(basis, cx, cy, terms, m=m, step=step)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rfft2_padded_is_scipy_rfft2(dtype: type) -> None:
    from scipy import fft as sfft

    rng = np.random.default_rng(5)
    for shape, fshape in (((31, 31), (540, 540)), ((3, 27, 27), (40, 45)), ((8, 5), (9, 16))):
        a = rng.standard_normal(shape).astype(dtype)
        np.testing.assert_array_equal(_kernels.rfft2_padded(a, fshape), sfft.rfft2(a, fshape))


def test_windowed_positions_equal_sep_winpos() -> None:
    """Same centroids as ``sep.winpos(subpix=0)`` (exact overlap), edges and NaNs too."""
    sep = pytest.importorskip("sep")
    rng = np.random.default_rng(11)
    ny, nx = 120, 150
    yy, xx = np.mgrid[:ny, :nx]
    image = rng.normal(0.0, 1.0, (ny, nx))
    xs = rng.uniform(-1, nx, 60)
    ys = rng.uniform(-1, ny, 60)
    for x, y in zip(xs, ys, strict=True):
        image += rng.uniform(50, 500) * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 2.2**2)
    image = image.astype(np.float32)
    image[60, 70:73] = np.nan
    x0 = xs + rng.normal(0, 0.4, xs.size)
    y0 = ys + rng.normal(0, 0.4, ys.size)
    sig = rng.uniform(0.2, 3.0, xs.size)  # some below sep's minimum σ
    want_x, want_y, want_flag = sep.winpos(image, x0, y0, sig, subpix=0)
    got_x, got_y, got_flag = _kernels.windowed_positions(image, x0, y0, sig)
    np.testing.assert_allclose(got_x, want_x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got_y, want_y, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got_flag, want_flag)
    assert (got_flag & _kernels.APER_TRUNC).any() and not (got_flag & _kernels.APER_TRUNC).all()


def test_quadrant_areas_give_exact_pixel_overlaps() -> None:
    """Pixel ∩ disc by the quadrant areas, against a fine numerical integration."""

    @numba.njit
    def overlap(x0: float, y0: float, x1: float, y1: float, r: float) -> float:
        p = _kernels._arc_primitive
        pr = p(r, r)

        def c_of(y: float) -> float:
            return np.sqrt(r * r - y * y) if abs(y) < r else 0.0

        c0, c1 = c_of(y0), c_of(y1)
        q = _kernels._quadrant_area
        return (
            q(p(x1, r), x1, y1, c1, p(c1, r), pr)
            - q(p(x0, r), x0, y1, c1, p(c1, r), pr)
            - q(p(x1, r), x1, y0, c0, p(c0, r), pr)
            + q(p(x0, r), x0, y0, c0, p(c0, r), pr)
        )

    g = (np.arange(4000) + 0.5) / 4000
    for x0, y0, r in [
        (-0.5, -0.5, 0.6),
        (2.1, 0.3, 3.0),
        (-3.5, -0.5, 3.2),
        (0.2, -2.9, 2.5),
        (-0.5, 2.4, 2.9),
        (5.0, 5.0, 3.0),
        (-0.3, -0.4, 6.0),
    ]:
        xx, yy = np.meshgrid(x0 + g, y0 + g)
        want = float(((xx**2 + yy**2) < r * r).mean())
        assert abs(overlap(x0, y0, x0 + 1.0, y0 + 1.0, r) - want) < 2e-4


def test_circular_apertures_equal_sep_sum_circle() -> None:
    """Every radius equal to ``sep.sum_circle(subpix=5)``, also across the edges."""
    sep = pytest.importorskip("sep")
    rng = np.random.default_rng(12)
    image = rng.normal(10.0, 3.0, (90, 110)).astype(np.float32)
    variance = rng.uniform(5.0, 15.0, (90, 110)).astype(np.float32)
    x = rng.uniform(-4, 114, 200)
    y = rng.uniform(-4, 94, 200)
    radii = np.array([3.0, 5.0, 8.0, 12.0, 2.5])
    flux, err, flag = _kernels.circular_apertures(image, variance, x, y, radii)
    for q, r in enumerate(radii):
        want_flux, want_err, want_flag = sep.sum_circle(image, x, y, r, var=variance, subpix=5)
        np.testing.assert_array_equal(flux[:, q], want_flux)
        np.testing.assert_array_equal(err[:, q], want_err)
        np.testing.assert_array_equal(flag[:, q], want_flag & sep.APER_TRUNC)
    assert (flag & _kernels.APER_TRUNC).any()


def test_flux_radius_equals_sep() -> None:
    """Half-light radii equal to ``sep.flux_radius(subpix=5)``, also across the edges."""
    sep = pytest.importorskip("sep")
    rng = np.random.default_rng(13)
    ny, nx = 100, 120
    yy, xx = np.mgrid[:ny, :nx]
    image = rng.normal(0.0, 1.0, (ny, nx))
    xs = rng.uniform(-2, nx + 1, 80)
    ys = rng.uniform(-2, ny + 1, 80)
    for x, y in zip(xs, ys, strict=True):
        s = rng.uniform(0.8, 4.0)
        image += rng.uniform(50, 900) * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / s**2)
    image = image.astype(np.float32)
    rmax = rng.uniform(2.0, 25.0, xs.size)
    norm = rng.uniform(100.0, 5000.0, xs.size)
    for frac in (0.5, 0.9):
        want, want_flag = sep.flux_radius(image, xs, ys, rmax, frac, normflux=norm, subpix=5)
        got, got_flag = _kernels.flux_radius(image, xs, ys, rmax, frac, norm)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_flag, want_flag & sep.APER_TRUNC)


def test_measurement_kernels_leave_non_finite_positions_alone() -> None:
    """A NaN position gets NaN sums and a flag, not a box over arbitrary pixels."""
    image = np.ones((40, 50), np.float32)
    x = np.array([20.0, np.nan])
    y = np.array([np.nan, 20.0])
    flux, _, flag = _kernels.circular_apertures(image, image, x, y, np.array([3.0]))
    assert np.isnan(flux).all() and (flag == _kernels.APER_TRUNC).all()
    r, rflag = _kernels.flux_radius(image, x, y, np.array([5.0, 5.0]), 0.5, np.ones(2))
    assert np.isnan(r).all() and (rflag == _kernels.APER_TRUNC).all()
    xw, yw, wflag = _kernels.windowed_positions(image, x, y, np.array([1.5, np.nan]))
    np.testing.assert_array_equal(yw, y)
    np.testing.assert_array_equal(xw, x)
    assert (wflag == _kernels.APER_TRUNC).all()
