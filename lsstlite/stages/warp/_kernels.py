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

#: Table samples per unit distance (linear interpolation between them: weights good to ~1e-7).
TABLE_RESOLUTION = 1024

#: Half-width (taps on each side) of each resampling kernel.
KERNEL_RADIUS = {"lanczos3": 3, "lanczos4": 4, "lanczos2": 2, "bilinear": 1}


def kernel_table(kernel: str) -> NDArray[np.float64]:
    """Tap weights by sub-pixel phase: ``table[p, k]`` is the weight of tap ``k`` (of
    ``2 × radius``, the first at ``floor(x) − radius + 1``) for phase ``p / res``.

    One row per phase keeps a pixel's taps contiguous: the kernel interpolates two rows
    linearly instead of evaluating (or looking up) each tap separately, which made the
    lookups, not the sums, the cost of a Lanczos3 warp.
    """
    if kernel not in KERNEL_RADIUS:
        raise ValueError(
            f"unknown warping kernel {kernel!r}; choose one of {sorted(KERNEL_RADIUS)}"
        )
    radius = KERNEL_RADIUS[kernel]
    phase = np.arange(TABLE_RESOLUTION + 2, dtype=np.float64)[:, None] / TABLE_RESOLUTION
    d = np.abs(phase + radius - 1 - np.arange(2 * radius)[None, :])
    if kernel == "bilinear":
        values = np.clip(1.0 - d, 0.0, None)
    else:
        values = np.sinc(d) * np.sinc(d / radius)
    values[d >= radius] = 0.0
    return np.ascontiguousarray(values)


@numba.njit(cache=True, inline="always")
def _weights(table: NDArray[np.float64], phase: float, out: NDArray[np.float64]) -> None:
    t = phase * TABLE_RESOLUTION
    p = int(t)
    f = t - p
    for k in range(out.size):
        out[k] = table[p, k] * (1.0 - f) + table[p + 1, k] * f


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
    table: NDArray[np.float64],
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
            _weights(table, fx, wx)
            _weights(table, fy, wy)
            sx = 0.0
            sy = 0.0
            edge = False
            for k in range(n_taps):
                if 0 <= ix_first + k < nx:
                    sx += wx[k]
                else:
                    wx[k] = 0.0
                    edge = True
                if 0 <= iy_first + k < ny:
                    sy += wy[k]
                else:
                    wy[k] = 0.0
                    edge = True
            if (
                not edge
                and ix_first >= 0
                and iy_first >= 0
                and ix_first + n_taps <= nx
                and iy_first + n_taps <= ny
            ):
                # Fast path (every tap inside): no per-tap tests; a NaN shows in the sum.
                s_img = 0.0
                s_var = 0.0
                for q in range(n_taps):
                    row = iy_first + q
                    r_img = 0.0
                    r_var = 0.0
                    for k in range(n_taps):
                        r_img += wx[k] * img[row, ix_first + k]
                        r_var += wx[k] * wx[k] * var[row, ix_first + k]
                    s_img += wy[q] * r_img
                    s_var += wy[q] * wy[q] * r_var
                s_w = sx * sy
                if math.isfinite(s_img) and math.isfinite(s_var):
                    out_img[j, i] = s_img / s_w * jac
                    out_var[j, i] = s_var / (s_w * s_w) * jac * jac
                    m = msk[iyc, ixc]
                    if fx > 0.0:
                        m |= msk[iyc, ixc + 1]
                    if fy > 0.0:
                        m |= msk[iyc + 1, ixc]
                        if fx > 0.0:
                            m |= msk[iyc + 1, ixc + 1]
                    out_msk[j, i] = m
                    continue
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
