"""A PSFEx-like pixel-basis PSF: a sampled image whose pixels vary as polynomials in x, y.

The model is a stack of ``n_terms`` images of ``size × size`` samples, one per term of a
polynomial in ``u = (x - x0) / x_scale`` and ``v = (y - y0) / y_scale`` of total degree
``degree``, in PSFEx order (``1, u, u², …, v, u v, …, v², …``). At a position the PSF
samples are ``Σ_k term_k(u, v) · basis[k]``; the samples represent the *pixel-convolved*
PSF (what a star looks like on the detector) on a grid of step ``step`` detector pixels
centred on the sample ``size // 2``. Drawing at a sub-pixel position resamples the grid
with a normalised Lanczos kernel (order 3 for PSFEx files, as PSFEx and GalSim do; 5 for
models fitted by lsstlite, which is closer to the ideal interpolator).

Sizes (FWHM, ellipticity, second moments) are those of the elliptical Moffat profile
that, once integrated over pixels, best fits the model image at the position: the same
quantities :class:`lsstlite.data.MoffatPsf` reports, so pixel and analytic models (and the
simulator's truth) are compared on equal terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from numpy.typing import NDArray

from lsstlite._vector import splat, tree_sum
from lsstlite.data.psf import MoffatPsf, PsfModel, register_psf

__all__ = ["PixelPsf", "fit_moffat_image", "lanczos_weights", "poly_terms"]

#: Half-width of the Lanczos kernel lsstlite's fitted models use to resample their grid
#: (order 3, PSFEx's, biases the FWHM of a 4-pixel PSF by ~0.4%; order 5 by ~0.1%).
LANCZOS_ORDER = 5


def poly_terms(u: NDArray[np.float64], v: NDArray[np.float64], degree: int) -> NDArray[np.float64]:
    """Polynomial terms in PSFEx order: ``u^i v^j`` for ``j = 0..d``, ``i = 0..d-j``.

    Returns
    -------
    numpy.ndarray
        ``(n_terms, *u.shape)``.
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    out = [u**i * v**j for j in range(degree + 1) for i in range(degree + 1 - j)]
    return np.stack(out, axis=0)


def lanczos_weights(
    offsets: NDArray[np.float64], n: int, order: int = LANCZOS_ORDER
) -> NDArray[np.float64]:
    """Normalised Lanczos weights mapping ``n`` grid samples to positions ``offsets``.

    Parameters
    ----------
    offsets
        Positions in grid units (sample ``k`` sits at ``k``), 1-D.
    n
        Number of grid samples.
    order
        Half-width ``a`` of the kernel ``sinc(t) sinc(t / a)``.

    Returns
    -------
    numpy.ndarray
        ``(len(offsets), n)``; a row sums to 1 when the kernel lies inside the grid
        (samples beyond the grid are zeros).
    """
    # Normalise over the full lattice (grid extended by the kernel), then crop: samples
    # beyond the grid count as zeros instead of being extrapolated from the edge.
    return _lanczos_weights(np.ascontiguousarray(offsets, dtype=np.float64).ravel(), n, order)


@numba.njit(cache=True, nogil=True)
def _lanczos_weights(offsets: NDArray[np.float64], n: int, a: int) -> NDArray[np.float64]:
    # Only the 2a lattice points within the kernel of each offset are visited (the numpy
    # version built the whole (len(offsets), n + 2a) table with two sinc calls per entry).
    # The taps are one unit apart: sin(π t) only changes sign from tap to tap and
    # sin(π t / a) rotates by π / a, so each offset needs three sines, not 4a + 4.
    out = np.zeros((offsets.size, n))
    w = np.empty(2 * a + 2)
    cos_step = np.array([math.cos(j * math.pi / a) for j in range(2 * a + 2)])
    sin_step = np.array([math.sin(j * math.pi / a) for j in range(2 * a + 2)])
    for i in range(offsets.size):
        off = offsets[i]
        k0 = math.floor(off - a) + 1
        base = off - k0
        s_pi = math.sin(math.pi * base)
        s_th = math.sin(math.pi * base / a)
        c_th = math.cos(math.pi * base / a)
        total = 0.0
        for j in range(2 * a + 2):
            t = base - j
            inside = abs(t) < a and -a <= k0 + j < n + a  # the lattice is the grid ± a
            if not inside:
                w[j] = 0.0
            elif t == 0.0:
                w[j] = 1.0
            else:
                sin_t = s_pi if j % 2 == 0 else -s_pi
                sin_ta = s_th * cos_step[j] - c_th * sin_step[j]
                w[j] = (sin_t / (math.pi * t)) * (sin_ta / (math.pi * t / a))
            total += w[j]
        if abs(total) <= 1e-12:
            continue
        for j in range(2 * a + 2):
            k = k0 + j
            if 0 <= k < n and w[j] != 0.0:
                out[i, k] = w[j] / total
    return out


#: Sub-sample phases tabulated per unit for :meth:`PixelPsf.add_affine_image` (weights
#: interpolated linearly between phases: ~1e-7 of a tap's weight).
TAP_TABLE_RESOLUTION = 2048


@lru_cache(maxsize=8)
def _tap_table(order: int) -> NDArray[np.float64]:
    """``table[p, j]``: normalised Lanczos weight of lattice point ``floor(off) - order + 1
    + j`` for ``off - floor(off) = p / TAP_TABLE_RESOLUTION`` (``2 order`` taps; the
    rows sum to one, as :func:`lanczos_weights` away from the grid's ends)."""
    f = np.arange(TAP_TABLE_RESOLUTION + 1)[:, None] / TAP_TABLE_RESOLUTION
    t = f + order - 1 - np.arange(2 * order)[None, :]
    w = np.where(np.abs(t) < order, np.sinc(t) * np.sinc(t / order), 0.0)
    return np.ascontiguousarray(w / w.sum(axis=1, keepdims=True))


@numba.njit(cache=True, nogil=True)
def _taps(off: float, n: int, a: int, table: NDArray[np.float64], w: NDArray[np.float64]) -> int:
    """The ``2a`` weights of lattice points ``k0 … k0 + 2a - 1`` around ``off`` into
    ``w``, normalised as :func:`lanczos_weights` (over the grid extended by ``a``, then
    zero off ``[0, n)``); returns ``k0``."""
    fl = math.floor(off)
    k0 = fl - a + 1
    taps = 2 * a
    if k0 >= -a and k0 + taps <= n + a:  # the whole kernel on the extended grid: tabulated
        pos = (off - fl) * (table.shape[0] - 1)
        p = min(int(pos), table.shape[0] - 2)
        r = pos - p
        for j in range(taps):
            w[j] = table[p, j] + r * (table[p + 1, j] - table[p, j])
    else:  # partly beyond the extended grid (far wings): computed and renormalised
        total = 0.0
        for j in range(taps):
            t = off - (k0 + j)
            k = k0 + j
            if abs(t) >= a or k < -a or k >= n + a:
                w[j] = 0.0
            elif abs(t) < 1e-12:
                w[j] = 1.0
            else:
                w[j] = a * math.sin(math.pi * t) * math.sin(math.pi * t / a) / (math.pi * t) ** 2
            total += w[j]
        for j in range(taps):
            w[j] = w[j] / total if abs(total) > 1e-12 else 0.0
    for j in range(taps):
        if not 0 <= k0 + j < n:
            w[j] = 0.0
    return k0


@numba.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _interior_taps(off: float, table: NDArray[np.float64], w: NDArray[np.float64]) -> None:
    """:func:`_taps` where the whole kernel lies on the grid: the table row interpolated."""
    fl = math.floor(off)
    pos = (off - fl) * (table.shape[0] - 1)
    p = min(int(pos), table.shape[0] - 2)
    r = pos - p
    t0 = table[p]
    t1 = table[p + 1]
    for j in range(w.size):
        w[j] = t0[j] + r * (t1[j] - t0[j])


def _lanczos10_ir(
    typingctx: Any, grid: Any, ky: Any, kx: Any, table: Any, px: Any, rx: Any, py: Any, ry: Any
) -> Any:
    """``Σ_p wy[p] Σ_q wx[q] grid[ky + p, kx + q]`` for 10 taps (order 5), the weights
    interpolated between rows ``px``, ``px + 1`` (fraction ``rx``) and ``py``, ``py + 1``
    (``ry``) of the :func:`_tap_table`, as LLVM vector code: the weights are two vector
    interpolations, each grid row one 10-double load and one fused multiply-add into a
    column accumulator, then the x weights and a fixed-order horizontal sum. Numba's
    loops packed at most 8 of the 10 columns and stored the weights to memory between
    the two steps: 2.2× slower."""
    for arr in (grid, table):
        if not (isinstance(arr, types.Array) and arr.dtype == types.float64):
            raise numba.core.errors.TypingError(f"_lanczos10: float64 arrays expected, got {arr}")
    if grid.ndim != 2 or grid.layout != "C" or table.ndim != 2 or table.layout != "C":
        raise numba.core.errors.TypingError("_lanczos10: C-contiguous grid and table")
    sig = types.float64(grid, ky, kx, table, px, rx, py, ry)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        a_grid, a_ky, a_kx, a_tab, a_px, a_rx, a_py, a_ry = args
        t_grid, t_ky, t_kx, t_tab, t_px, t_rx, t_py, t_ry = signature.args
        i64 = ir.IntType(64)
        ky_ = context.cast(builder, a_ky, t_ky, types.int64)
        kx_ = context.cast(builder, a_kx, t_kx, types.int64)
        px_ = context.cast(builder, a_px, t_px, types.int64)
        py_ = context.cast(builder, a_py, t_py, types.int64)
        rx_ = context.cast(builder, a_rx, t_rx, types.float64)
        ry_ = context.cast(builder, a_ry, t_ry, types.float64)
        g = context.make_array(t_grid)(context, builder, a_grid)
        tab = context.make_array(t_tab)(context, builder, a_tab)
        n_col = cgutils.unpack_tuple(builder, g.shape, 2)[1]
        t_col = cgutils.unpack_tuple(builder, tab.shape, 2)[1]
        v10 = ir.VectorType(ir.DoubleType(), 10)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v10, [v10, v10, v10]), "llvm.fma.v10f64"
        )

        def load(base: ir.Value, off: ir.Value) -> ir.Value:
            ptr = builder.bitcast(builder.gep(base, [off]), v10.as_pointer())
            return builder.load(ptr, align=8)

        def weights(p: ir.Value, r: ir.Value) -> ir.Value:
            t0 = load(tab.data, builder.mul(p, t_col))
            t1 = load(tab.data, builder.mul(builder.add(p, ir.Constant(i64, 1)), t_col))
            return builder.fadd(t0, builder.fmul(splat(builder, r, v10), builder.fsub(t1, t0)))

        wx = weights(px_, rx_)
        wy = weights(py_, ry_)
        acc = ir.Constant(v10, [0.0] * 10)
        for p in range(10):
            off = builder.add(builder.mul(builder.add(ky_, ir.Constant(i64, p)), n_col), kx_)
            wp = builder.extract_element(wy, ir.Constant(ir.IntType(32), p))
            acc = builder.call(fma, [splat(builder, wp, v10), load(g.data, off), acc])
        return tree_sum(builder, builder.fmul(acc, wx), 10)

    return sig, codegen


_lanczos10: Any = intrinsic(_lanczos10_ir)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _add_affine_image(
    grid: NDArray[np.float64],
    step: float,
    a: int,
    table: NDArray[np.float64],
    jac: NDArray[np.float64],
    cx: float,
    cy: float,
    scale: float,
    out: NDArray[np.float64],
) -> None:
    n = grid.shape[0]
    c = n // 2
    taps = 2 * a
    wx = np.empty(taps)
    wy = np.empty(taps)
    # Order 5: the grid padded with a zeros on each side, where every tap of a kernel on
    # the extended lattice (tabulated weights, taps off the grid multiplying zeros, as
    # :func:`_taps`) is one vector sum: the PSF models' grids are barely wider than the
    # stamps drawn from them, and half the pixels took the careful path.
    padded = np.zeros((n + 2 * a, n + 2 * a)) if taps == 10 else grid
    if taps == 10:  # element stores (a slice assignment compiles numba's shape errors)
        for i in range(n):
            for j in range(n):
                padded[a + i, a + j] = grid[i, j]
    npad = padded.shape[0]
    for row in range(out.shape[0]):
        dyo = row - cy
        for col in range(out.shape[1]):
            dxo = col - cx
            su = (jac[0, 0] * dxo + jac[0, 1] * dyo) / step + c
            sv = (jac[1, 0] * dxo + jac[1, 1] * dyo) / step + c
            if su <= -a or sv <= -a or su >= n - 1 + a or sv >= n - 1 + a:
                continue  # beyond the model's grid
            kx = math.floor(su) - a + 1
            ky = math.floor(sv) - a + 1
            if taps == 10:
                if 0 <= kx + a and kx + a + taps <= npad and 0 <= ky + a and ky + a + taps <= npad:
                    fx, fy = su - math.floor(su), sv - math.floor(sv)
                    posx, posy = fx * (table.shape[0] - 1), fy * (table.shape[0] - 1)
                    px = min(int(posx), table.shape[0] - 2)
                    py = min(int(posy), table.shape[0] - 2)
                    acc = _lanczos10(padded, ky + a, kx + a, table, px, posx - px, py, posy - py)
                    out[row, col] += scale * acc
                    continue
            elif kx >= 0 and kx + taps <= n and ky >= 0 and ky + taps <= n:
                # every tap on the grid (the usual case): tabulated weights, no tests
                _interior_taps(su, table, wx)
                _interior_taps(sv, table, wy)
                acc = 0.0
                for p in range(taps):
                    line = 0.0
                    for q in range(taps):
                        line += grid[ky + p, kx + q] * wx[q]
                    acc += wy[p] * line
                out[row, col] += scale * acc
                continue
            kx0 = _taps(su, n, a, table, wx)
            ky0 = _taps(sv, n, a, table, wy)
            acc = 0.0
            if kx0 >= 0 and kx0 + taps <= n:
                for p in range(taps):
                    k = ky0 + p
                    if 0 <= k < n:
                        line = 0.0
                        for q in range(taps):
                            line += grid[k, kx0 + q] * wx[q]
                        acc += wy[p] * line
            else:
                for p in range(taps):
                    k = ky0 + p
                    if 0 <= k < n:
                        line = 0.0
                        for q in range(taps):
                            if 0 <= kx0 + q < n:
                                line += grid[k, kx0 + q] * wx[q]
                        acc += wy[p] * line
            out[row, col] += scale * acc


def fit_moffat_image(image: NDArray[np.float64], cx: float, cy: float) -> MoffatPsf:
    """The elliptical Moffat whose pixel-integrated image best fits ``image`` (least squares).

    Parameters
    ----------
    image
        Noise-free (or high S/N) PSF stamp.
    cx, cy
        Position of the PSF centre in the stamp (0-based pixel centres).

    Returns
    -------
    MoffatPsf
        ``fwhm`` (pixels), ``e1``, ``e2`` and ``beta`` of the best fit.
    """
    from scipy.optimize import least_squares

    img = np.asarray(image, dtype=np.float64)
    ny, nx = img.shape
    total = img.sum()
    yy, xx = np.mgrid[0:ny, 0:nx]
    w = np.clip(img, 0, None)
    ixx = float((w * (xx - cx) ** 2).sum() / w.sum())
    iyy = float((w * (yy - cy) ** 2).sum() / w.sum())
    fwhm0 = max(2.355 * math.sqrt(max(0.5 * (ixx + iyy), 0.3)) * 0.8, 1.0)

    def model(p: NDArray[np.float64]) -> NDArray[np.float64]:
        fwhm, e1, e2, beta, flux, dx, dy = p
        m = MoffatPsf(fwhm=float(fwhm), e1=float(e1), e2=float(e2), beta=float(beta))
        return flux * m.image(0.0, 0.0, size=nx, center=(cx + dx, cy + dy), oversample=4)

    def resid(p: NDArray[np.float64]) -> NDArray[np.float64]:
        return ((model(p) - img) / total).ravel()

    p0 = np.array([fwhm0, 0.0, 0.0, 3.0, total, 0.0, 0.0])
    lo = [0.3, -0.6, -0.6, 1.2, 0.1 * total, -1.0, -1.0]
    hi = [max(nx, ny), 0.6, 0.6, 20.0, 10.0 * total, 1.0, 1.0]
    fit = least_squares(resid, p0, bounds=(lo, hi), x_scale="jac", xtol=1e-10, ftol=1e-12)
    fwhm, e1, e2, beta = (float(v) for v in fit.x[:4])
    return MoffatPsf(fwhm=fwhm, e1=e1, e2=e2, beta=beta)


@register_psf
@dataclass(frozen=True)
class PixelPsf(PsfModel):
    """Pixel-basis PSF whose samples vary as polynomials across the detector (PSFEx-like).

    Parameters
    ----------
    basis
        ``n_terms × size × size`` nested lists (JSON-friendly); term order as
        :func:`poly_terms`. Term 0 sums to 1, the others to 0.
    degree
        Total degree of the spatial polynomial.
    step
        Grid step in detector pixels (< 1: oversampled).
    x0, y0, x_scale, y_scale
        Normalisation of the polynomial variables (0-based parent-frame pixels).
    lanczos_order
        Order of the resampling kernel.
    """

    kind: ClassVar[str] = "pixel"
    basis: list[Any] = field(default_factory=list)
    degree: int = 0
    step: float = 1.0
    x0: float = 0.0
    y0: float = 0.0
    x_scale: float = 1000.0
    y_scale: float = 1000.0
    lanczos_order: int = LANCZOS_ORDER

    def __post_init__(self) -> None:
        arr = np.asarray(self.basis, dtype=np.float64)
        n_terms = (self.degree + 1) * (self.degree + 2) // 2
        if arr.ndim != 3 or arr.shape[0] != n_terms or arr.shape[1] != arr.shape[2]:
            raise ValueError(
                f"PixelPsf.basis must have shape ({n_terms}, n, n) for degree {self.degree}, "
                f"got {arr.shape}"
            )
        object.__setattr__(self, "_array", arr)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_array(cls, basis: NDArray[np.float64], **kwargs: Any) -> PixelPsf:
        """Build from a numpy basis cube (``n_terms, n, n``)."""
        return cls(basis=np.asarray(basis, dtype=np.float64).tolist(), **kwargs)

    @classmethod
    def from_psfex(cls, path: str | Path) -> PixelPsf:
        """Read a PSFEx ``.psf`` file (``PSF_DATA`` HDU, one context group in X/Y_IMAGE).

        PSFEx positions are 1-based FITS pixels; they are converted to lsstlite's 0-based
        frame. The basis is renormalised so that term 0 sums to one.

        Raises
        ------
        ValueError
            If the file uses contexts other than one group of ``X*_IMAGE``, ``Y*_IMAGE``.
        """
        from astropy.io import fits

        with fits.open(path) as hdul:
            hdu = hdul["PSF_DATA"]
            h = hdu.header
            if h.get("POLNAXIS") != 2 or h.get("POLNGRP", 1) != 1:
                raise ValueError(
                    f"PSFEx file '{path}': only POLNAXIS=2, POLNGRP=1 models are supported, "
                    f"got POLNAXIS={h.get('POLNAXIS')}, POLNGRP={h.get('POLNGRP')}"
                )
            names = (str(h["POLNAME1"]).strip(), str(h["POLNAME2"]).strip())
            if not (names[0].startswith("X") and names[1].startswith("Y")):
                raise ValueError(f"PSFEx file '{path}': contexts {names} are not X/Y positions")
            n_terms, ny, nx = int(h["PSFAXIS3"]), int(h["PSFAXIS2"]), int(h["PSFAXIS1"])
            data = np.asarray(hdu.data["PSF_MASK"][0], dtype=np.float64).reshape(n_terms, ny, nx)
            degree = int(h["POLDEG1"])
            x0, y0 = float(h["POLZERO1"]) - 1.0, float(h["POLZERO2"]) - 1.0
            xs, ys = float(h["POLSCAL1"]), float(h["POLSCAL2"])
            step = float(h["PSF_SAMP"])
        norm = data[0].sum()
        return cls.from_array(
            data / norm,
            degree=degree,
            step=step,
            x0=x0,
            y0=y0,
            x_scale=xs,
            y_scale=ys,
            lanczos_order=3,
        )

    # -- evaluation -----------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Side of the sample grid."""
        return int(self._array.shape[1])  # type: ignore[attr-defined]

    def samples(self, x: float, y: float) -> NDArray[np.float64]:
        """The grid of samples valid at ``(x, y)`` (sums to 1)."""
        u, v = (float(x) - self.x0) / self.x_scale, (float(y) - self.y0) / self.y_scale
        d = self.degree
        terms = np.array([u**i * v**j for j in range(d + 1) for i in range(d + 1 - j)])
        arr = self._array  # type: ignore[attr-defined]
        # one (T,) @ (T, n²) product (poly_terms on 0-d arrays cost more than the sum)
        return (terms @ arr.reshape(arr.shape[0], -1)).reshape(arr.shape[1:])  # type: ignore[no-any-return]

    def image(
        self,
        x: float,
        y: float,
        *,
        size: int = 25,
        center: tuple[float, float] | None = None,
        oversample: int = 1,
    ) -> NDArray[np.float64]:
        """PSF image at ``(x, y)`` on detector pixels (see :meth:`PsfModel.image`).

        ``oversample`` is ignored: the samples already describe the pixel-convolved PSF.
        The image sums to one when the stamp covers the model.
        """
        half = size // 2
        if center is None:
            cx = half + (x - math.floor(x + 0.5))
            cy = half + (y - math.floor(y + 0.5))
        else:
            cx, cy = center
        grid = self.samples(x, y)
        c = self.size // 2
        pix = np.arange(size, dtype=np.float64)
        wx = lanczos_weights((pix - cx) / self.step + c, self.size, self.lanczos_order)
        wy = lanczos_weights((pix - cy) / self.step + c, self.size, self.lanczos_order)
        return wy @ grid @ wx.T / self.step**2

    def add_affine_image(
        self,
        out: NDArray[np.float64],
        x: float,
        y: float,
        jac: NDArray[np.float64],
        center: tuple[float, float],
        weight: float = 1.0,
    ) -> None:
        """Add ``weight`` × the model at ``(x, y)`` seen through the affine map ``d_in =
        jac · d_out`` to the stamp ``out`` (in place), centred at ``center`` of ``out``.

        What resampling :meth:`image` through the map gives (flux scaled by ``|det
        jac|``), but interpolated once, straight from the model's grid: a warped or coadd
        PSF is drawn without an intermediate detector-pixel stamp.
        """
        grid = np.ascontiguousarray(self.samples(x, y))
        jac = np.ascontiguousarray(jac, dtype=np.float64)
        det = jac[0, 0] * jac[1, 1] - jac[0, 1] * jac[1, 0]  # np.linalg.det: 15 µs a call
        scale = weight * abs(float(det)) / self.step**2
        _add_affine_image(
            grid,
            float(self.step),
            int(self.lanczos_order),
            _tap_table(int(self.lanczos_order)),
            jac,
            float(center[0]),
            float(center[1]),
            scale,
            out,
        )

    def moffat_at(self, x: float = 0.0, y: float = 0.0) -> MoffatPsf:
        """The elliptical Moffat that best matches the model at ``(x, y)`` (cached)."""
        return _moffat_cache(self, round(float(x), 1), round(float(y), 1))

    def second_moments(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float, float]:
        """Second moments ``(ixx, iyy, ixy)`` (pixel²) of the best-matching Moffat."""
        return self.moffat_at(x, y).second_moments()

    def fwhm_at(self, x: float = 0.0, y: float = 0.0) -> float:
        """FWHM (pixels, geometric mean of the axes) of the best-matching Moffat."""
        return self.moffat_at(x, y).fwhm

    def ellipticity_at(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float]:
        """Distortion ``(e1, e2)`` of the best-matching Moffat."""
        return self.moffat_at(x, y).ellipticity_at()

    def __hash__(self) -> int:
        return id(self)


@lru_cache(maxsize=256)
def _moffat_cache(psf: PixelPsf, x: float, y: float) -> MoffatPsf:
    size = int(2 * math.ceil(0.5 * psf.size * psf.step) + 1)
    img = psf.image(x, y, size=size, center=(size // 2, size // 2))
    return fit_moffat_image(img, size // 2, size // 2)
