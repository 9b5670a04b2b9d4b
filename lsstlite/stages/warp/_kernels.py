"""Numba kernels of the warp: tabulated Lanczos / bilinear resampling of one output block.

No I/O, no dask. The sky → input-pixel mapping arrives as a coarse grid of input
coordinates (evaluated exactly with the WCS every ``step`` output pixels) and is
interpolated bilinearly here, with the Jacobian taken from the same grid cell.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "KERNEL_RADIUS",
    "TABLE_RESOLUTION",
    "interpolate_grid",
    "kernel_table",
    "warp_block",
]

#: Phases tabulated per pixel; the nearest row is used: a phase error ≤ 1/8192 px, well
#: inside the 1e-3 px budget of the mapping (interpolating between rows cost 20% speed).
TABLE_RESOLUTION = 4096

#: Half-width (taps on each side) of each resampling kernel.
KERNEL_RADIUS = {"lanczos3": 3, "lanczos4": 4, "lanczos2": 2, "bilinear": 1}


def kernel_table(kernel: str) -> NDArray[np.float32]:
    """Tap weights by sub-pixel phase: ``table[p, k]`` is the weight of tap ``k`` (of
    ``2 × radius``, the first at ``floor(x) − radius + 1``) for phase ``p / res``.

    One row per phase keeps a pixel's taps contiguous: looking up each tap separately
    made the lookups, not the sums, the cost of a Lanczos3 warp.
    """
    if kernel not in KERNEL_RADIUS:
        raise ValueError(
            f"unknown warping kernel {kernel!r}; choose one of {sorted(KERNEL_RADIUS)}"
        )
    radius = KERNEL_RADIUS[kernel]
    phase = np.arange(TABLE_RESOLUTION + 1, dtype=np.float64)[:, None] / TABLE_RESOLUTION
    d = np.abs(phase + radius - 1 - np.arange(2 * radius)[None, :])
    if kernel == "bilinear":
        values = np.clip(1.0 - d, 0.0, None)
    else:
        values = np.sinc(d) * np.sinc(d / radius)
    values[d >= radius] = 0.0
    # Normalised per phase (Lanczos weights do not sum to one): interior pixels then need
    # no per-pixel normalisation, and a flat image stays flat.
    return np.ascontiguousarray(values / values.sum(axis=1, keepdims=True)).astype(np.float32)


@numba.njit(cache=True, inline="always")
def _phase_row(phase: float) -> int:
    return int(phase * TABLE_RESOLUTION + 0.5)


@numba.njit(cache=True, inline="always")
def _cell(
    gx: NDArray[np.float64], gy: NDArray[np.float64], u: float, v: float
) -> tuple[float, float, float, float, float, float]:
    """Bilinear input position and Jacobian terms at grid coordinates (u, v)."""
    gh, gw = gx.shape
    iu = min(max(math.floor(u), 0), gw - 2)
    iv = min(max(math.floor(v), 0), gh - 2)
    fu = u - iu
    fv = v - iv
    x00, x01, x10, x11 = gx[iv, iu], gx[iv, iu + 1], gx[iv + 1, iu], gx[iv + 1, iu + 1]
    y00, y01, y10, y11 = gy[iv, iu], gy[iv, iu + 1], gy[iv + 1, iu], gy[iv + 1, iu + 1]
    a, b, c, d = (1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv
    x = a * x00 + b * x01 + c * x10 + d * x11
    y = a * y00 + b * y01 + c * y10 + d * y11
    dxdu = (x01 - x00) * (1 - fv) + (x11 - x10) * fv
    dxdv = (x10 - x00) * (1 - fu) + (x11 - x01) * fu
    dydu = (y01 - y00) * (1 - fv) + (y11 - y10) * fv
    dydv = (y10 - y00) * (1 - fu) + (y11 - y01) * fu
    return x, y, dxdu, dxdv, dydu, dydv


@numba.njit(cache=True, inline="always")
def _taps6(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    x0: int,
    y0: int,
    wx: NDArray[np.float64],
    wy: NDArray[np.float64],
) -> tuple[float, float]:
    """The 6×6 (Lanczos3) sums, unrolled as trees: independent chains, not one of 36;
    in float32, as the pixels are (float64 spent a conversion per tap: 20% of the time)."""
    w0, w1, w2, w3, w4, w5 = wx[0], wx[1], wx[2], wx[3], wx[4], wx[5]
    v0, v1, v2, v3, v4, v5 = w0 * w0, w1 * w1, w2 * w2, w3 * w3, w4 * w4, w5 * w5
    s_img = np.float32(0.0)
    s_var = np.float32(0.0)
    for q in range(6):
        a = img[y0 + q]
        b = var[y0 + q]
        r_img = ((w0 * a[x0] + w1 * a[x0 + 1]) + (w2 * a[x0 + 2] + w3 * a[x0 + 3])) + (
            w4 * a[x0 + 4] + w5 * a[x0 + 5]
        )
        r_var = ((v0 * b[x0] + v1 * b[x0 + 1]) + (v2 * b[x0 + 2] + v3 * b[x0 + 3])) + (
            v4 * b[x0 + 4] + v5 * b[x0 + 5]
        )
        s_img += wy[q] * r_img
        s_var += wy[q] * wy[q] * r_var
    return float(s_img), float(s_var)


@numba.njit(cache=True, nogil=True)
def interpolate_grid(
    gx: NDArray[np.float64],
    gy: NDArray[np.float64],
    grid_x0: float,
    grid_y0: float,
    step: float,
    x: NDArray[np.float64],
    y: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Input coordinates at output positions ``(x, y)`` (1-D), as the warp kernel sees them."""
    xi = np.empty(x.size)
    yi = np.empty(x.size)
    for k in range(x.size):
        xx, yy, _, _, _, _ = _cell(gx, gy, (x[k] - grid_x0) / step, (y[k] - grid_y0) / step)
        xi[k] = xx
        yi[k] = yy
    return xi, yi


# No fastmath: with reassociation LLVM vectorises the tap sums with an alignment-dependent
# peel, so a pixel's value changed with the (chunking-dependent) address of its input.
@numba.njit(cache=True, nogil=True)
def warp_block(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    msk: NDArray[np.int32],
    sub_x0: int,
    sub_y0: int,
    det_box: tuple[float, float, float, float],
    gx: NDArray[np.float64],
    gy: NDArray[np.float64],
    grid_x0: float,
    grid_y0: float,
    step: float,
    out_x0: int,
    out_y0: int,
    table: NDArray[np.float32],
    radius: int,
    no_data: np.int32,
    sensor_edge: np.int32,
    out_img: NDArray[np.float32],
    out_var: NDArray[np.float32],
    out_msk: NDArray[np.int32],
) -> None:
    """Resample ``img``/``var``/``msk`` onto one output block (in place into ``out_*``).

    Parameters
    ----------
    img, var, msk
        The input region; ``img[0, 0]`` is parent pixel ``(sub_x0, sub_y0)``.
    det_box
        ``(x0, y0, x1, y1)``: the input detector's pixel-edge box (parent frame); output
        pixels mapping outside it are NO_DATA (NaN image and variance).
    gx, gy
        Input parent coordinates at output parent positions ``(grid_x0 + i step,
        grid_y0 + j step)``.
    out_x0, out_y0
        Parent position of ``out_img[0, 0]``.
    table, radius
        :func:`kernel_table` of the kernel and its half-width.
    no_data, sensor_edge
        Mask bit values to set.

    Notes
    -----
    Image: ``Σ w I / Σ w × |det J|`` (surface brightness times the pixel-area ratio, so
    flux is conserved); variance: ``Σ w² V / (Σ w)² × det J²`` (the diagonal only: the
    covariance the kernel introduces is not stored). Weights are normalised per axis over
    the taps inside the input; a missing tap (off-detector, or a non-finite pixel) flags
    the output SENSOR_EDGE. The mask is the OR over the bilinear (2×2) footprint: the
    Lanczos footprint (6×6) would grow every masked pixel into a 6-pixel blob.
    """
    h, w = out_img.shape
    ny, nx = img.shape
    n_taps = 2 * radius
    wx = np.empty(n_taps)
    wy = np.empty(n_taps)
    bx0, by0, bx1, by1 = det_box
    for j in range(h):
        v = (out_y0 + j - grid_y0) / step
        for i in range(w):
            u = (out_x0 + i - grid_x0) / step
            xin, yin, dxdu, dxdv, dydu, dydv = _cell(gx, gy, u, v)
            jac = abs(dxdu * dydv - dxdv * dydu) / (step * step)
            if not (bx0 <= xin < bx1 and by0 <= yin < by1):
                out_img[j, i] = np.nan
                out_var[j, i] = np.nan
                out_msk[j, i] = no_data
                continue
            # Phase from the parent-frame position, so that it does not depend on where
            # the input region starts (i.e. on the chunking): bit-identical results.
            fxp = math.floor(xin)
            fyp = math.floor(yin)
            fx = xin - fxp
            fy = yin - fyp
            ixc = int(fxp) - sub_x0
            iyc = int(fyp) - sub_y0
            ix_first = ixc - radius + 1
            iy_first = iyc - radius + 1
            px = _phase_row(fx)
            py = _phase_row(fy)
            if (
                ix_first >= 0
                and iy_first >= 0
                and ix_first + n_taps <= nx
                and iy_first + n_taps <= ny
            ):
                # Fast path (every tap inside, rows normalised): no per-tap tests; a NaN
                # shows in the sum and sends the pixel to the careful path below.
                if n_taps == 6:
                    s_img, s_var = _taps6(img, var, ix_first, iy_first, table[px], table[py])
                else:
                    s_img = 0.0
                    s_var = 0.0
                    for q in range(n_taps):
                        row = iy_first + q
                        r_img = 0.0
                        r_var = 0.0
                        for k in range(n_taps):
                            wk = table[px, k]
                            r_img += wk * img[row, ix_first + k]
                            r_var += wk * wk * var[row, ix_first + k]
                        wq = table[py, q]
                        s_img += wq * r_img
                        s_var += wq * wq * r_var
                if math.isfinite(s_img) and math.isfinite(s_var):
                    out_img[j, i] = s_img * jac
                    out_var[j, i] = s_var * jac * jac
                    m = msk[iyc, ixc]
                    if fx > 0.0:
                        m |= msk[iyc, ixc + 1]
                    if fy > 0.0:
                        m |= msk[iyc + 1, ixc]
                        if fx > 0.0:
                            m |= msk[iyc + 1, ixc + 1]
                    out_msk[j, i] = m
                    continue
            sx = 0.0
            sy = 0.0
            edge = False
            for k in range(n_taps):
                if 0 <= ix_first + k < nx:
                    wx[k] = table[px, k]
                    sx += wx[k]
                else:
                    wx[k] = 0.0
                    edge = True
                if 0 <= iy_first + k < ny:
                    wy[k] = table[py, k]
                    sy += wy[k]
                else:
                    wy[k] = 0.0
                    edge = True
            s_img = 0.0
            s_var = 0.0
            s_w = 0.0
            for q in range(n_taps):
                if wy[q] == 0.0:
                    continue
                row = iy_first + q
                r_img = 0.0
                r_var = 0.0
                r_w = 0.0
                for k in range(n_taps):
                    wk = wx[k]
                    if wk == 0.0:
                        continue
                    val = img[row, ix_first + k]
                    vv = var[row, ix_first + k]
                    if math.isfinite(val) and math.isfinite(vv):
                        r_img += wk * val
                        r_var += wk * wk * vv
                        r_w += wk
                    else:
                        edge = True
                s_img += wy[q] * r_img
                s_var += wy[q] * wy[q] * r_var
                s_w += wy[q] * r_w
            m = 0
            for q in range(2):
                yy = iyc + q
                if (q == 1 and fy == 0.0) or not 0 <= yy < ny:
                    continue
                for k in range(2):
                    xx = ixc + k
                    if (k == 1 and fx == 0.0) or not 0 <= xx < nx:
                        continue
                    m |= msk[yy, xx]
            if edge:
                m |= sensor_edge
            if abs(s_w) < 0.1 * abs(sx * sy) or s_w == 0.0:
                out_img[j, i] = np.nan
                out_var[j, i] = np.nan
                out_msk[j, i] = m | no_data
                continue
            out_img[j, i] = s_img / s_w * jac
            out_var[j, i] = s_var / (s_w * s_w) * jac * jac
            out_msk[j, i] = m
