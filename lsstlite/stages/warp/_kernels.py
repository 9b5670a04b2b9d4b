"""Numba kernels of the warp: tabulated Lanczos / bilinear resampling of one output block.

No I/O, no dask. The sky → input-pixel mapping arrives as a coarse grid of input
coordinates (evaluated exactly with the WCS every ``step`` output pixels) and is
interpolated bilinearly here, with the Jacobian taken from the same grid cell.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from numpy.typing import NDArray

from lsstlite._vector import load_lanes, splat, tree_sums

__all__ = [
    "KERNEL_RADIUS",
    "TABLE_RESOLUTION",
    "interpolate_grid",
    "kernel_table",
    "taps6_table",
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


#: Row length of :func:`taps6_table` (floats): one 64-byte cache line per phase.
TAPS6_ROW = 16


def taps6_table(table: NDArray[np.float32]) -> NDArray[np.float32]:
    """A 6-tap :func:`kernel_table` laid out for :func:`_taps6`: row ``p`` is
    ``[w_0 … w_5, 0, 0, w_0² … w_5², 0, 0]`` (the squares rounded to float32 as the sums
    formed them before), each row one 64-byte line (the array is 64-byte aligned).

    A pixel's x weights are then one 8-lane load and its y weights and their squares
    are broadcast from one line: no per-pixel squaring.
    """
    if table.ndim != 2 or table.shape[1] != 6:
        raise ValueError(f"taps6_table: a 6-tap table expected, got shape {table.shape}")
    n = table.shape[0]
    buf = np.zeros(n * TAPS6_ROW + TAPS6_ROW, np.float32)
    start = (-buf.ctypes.data % 64) // 4
    out = buf[start : start + n * TAPS6_ROW].reshape(n, TAPS6_ROW)
    t = table.astype(np.float32)
    out[:, :6] = t
    out[:, 8:14] = t * t
    return out


@numba.njit(cache=True, inline="always")
def _phase_row(phase: float) -> int:
    return int(phase * TABLE_RESOLUTION + 0.5)


@numba.njit(cache=True, inline="always")
def _cell(
    gx: NDArray[np.float64], gy: NDArray[np.float64], iu: int, iv: int, fv: float
) -> tuple[float, float, float, float, float, float, float, float]:
    """Grid cell ``(iu, iv)`` at fraction ``fv`` of its height: a row segment along which
    the bilinear mapping is linear in the cell fraction ``fu``.

    Returns ``(xl, yl, dxdu, dydu, ex0, ex, ey0, ey)``: the input position is
    ``(xl + dxdu fu, yl + dydu fu)`` and its derivatives along the grid's v axis are
    ``ex0 + ex fu`` and ``ey0 + ey fu`` (per grid step).
    """
    x00, x01, x10, x11 = gx[iv, iu], gx[iv, iu + 1], gx[iv + 1, iu], gx[iv + 1, iu + 1]
    y00, y01, y10, y11 = gy[iv, iu], gy[iv, iu + 1], gy[iv + 1, iu], gy[iv + 1, iu + 1]
    xl = x00 + (x10 - x00) * fv
    yl = y00 + (y10 - y00) * fv
    dxdu = (x01 + (x11 - x01) * fv) - xl
    dydu = (y01 + (y11 - y01) * fv) - yl
    ex0 = x10 - x00
    ey0 = y10 - y00
    return xl, yl, dxdu, dydu, ex0, (x11 - x01) - ex0, ey0, (y11 - y01) - ey0


@numba.njit(cache=True, inline="always")
def _grid_index(t: float, n: int) -> int:
    """Grid cell along one axis of ``n`` points (the edge cells extend beyond the grid)."""
    return min(max(math.floor(t), 0), n - 2)


def _taps6_ir(
    typingctx: Any,
    fimg: Any,
    fvar: Any,
    base: Any,
    nx: Any,
    table: Any,
    px: Any,
    py: Any,
) -> Any:
    """The 6×6 (Lanczos3) sums ``(Σ_q wy_q Σ_k wx_k I, Σ_q wy_q² Σ_k wx_k² V)`` from flat
    float32 arrays, ``base`` the first tap's offset, ``nx`` the row length, ``table`` the
    :func:`taps6_table` of the kernel (rows ``px``, ``py``).

    Written as LLVM vector code: each input row is one 6-float load and one fused
    multiply-add into a column accumulator per plane (12 vector FMAs per pixel instead
    of 144 scalar operations), then the x weights and a fixed-order horizontal sum.
    LLVM's own vectoriser packed at most four of the six columns from any scalar form
    (see docs/design/coadd.md). Nothing is reassociated, so a pixel's value does not
    depend on where its input lies in memory (the warp stays chunking-independent).
    """
    for arr in (fimg, fvar, table):
        if not (isinstance(arr, types.Array) and arr.dtype == types.float32):
            raise numba.core.errors.TypingError(f"_taps6: float32 arrays expected, got {arr}")
    if table.layout != "C" or fimg.ndim != 1 or fvar.ndim != 1:
        raise numba.core.errors.TypingError("_taps6: flat images and a C-contiguous table")
    sig = types.UniTuple(types.float32, 2)(fimg, fvar, base, nx, table, px, py)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        a_img, a_var, a_base, a_nx, a_tab, a_px, a_py = args
        t_img, t_var, t_base, t_nx, t_tab, t_px, t_py = signature.args
        i64 = ir.IntType(64)
        base_ = context.cast(builder, a_base, t_base, types.int64)
        nx_ = context.cast(builder, a_nx, t_nx, types.int64)
        px_ = context.cast(builder, a_px, t_px, types.int64)
        py_ = context.cast(builder, a_py, t_py, types.int64)
        img = context.make_array(t_img)(context, builder, a_img)
        var = context.make_array(t_var)(context, builder, a_var)
        tab = context.make_array(t_tab)(context, builder, a_tab)
        row_len = ir.Constant(i64, TAPS6_ROW)
        # six taps in the first lanes of eight (lanes 6, 7 are 0 and never summed)
        v8 = ir.VectorType(ir.FloatType(), 8)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v8, [v8, v8, v8]), "llvm.fma.v8f32"
        )
        acc_i = ir.Constant(v8, [0.0] * 8)
        acc_v = ir.Constant(v8, [0.0] * 8)
        wy_row = builder.mul(py_, row_len)
        for q in range(6):
            off = builder.add(base_, builder.mul(nx_, ir.Constant(i64, q)))
            row_i = load_lanes(builder, builder.gep(img.data, [off]), v8, 6)
            row_v = load_lanes(builder, builder.gep(var.data, [off]), v8, 6)
            wq = builder.load(builder.gep(tab.data, [builder.add(wy_row, ir.Constant(i64, q))]))
            wq2 = builder.load(
                builder.gep(tab.data, [builder.add(wy_row, ir.Constant(i64, 8 + q))])
            )
            acc_i = builder.call(fma, [splat(builder, wq, v8), row_i, acc_i])
            acc_v = builder.call(fma, [splat(builder, wq2, v8), row_v, acc_v])
        wx_ptr = builder.gep(tab.data, [builder.mul(px_, row_len)])
        wx = builder.load(builder.bitcast(wx_ptr, v8.as_pointer()), align=4)
        terms_i = builder.fmul(acc_i, wx)
        terms_v = builder.fmul(builder.fmul(acc_v, wx), wx)
        sums = tree_sums(builder, terms_i, terms_v, 6)
        i32 = ir.IntType(32)
        return context.make_tuple(
            builder,
            signature.return_type,
            [
                builder.extract_element(sums, ir.Constant(i32, 0)),
                builder.extract_element(sums, ir.Constant(i32, 1)),
            ],
        )

    return sig, codegen


#: ``_taps6(fimg, fvar, base, nx, table6, px, py) -> (float32, float32)`` in numba code
#: (``table6`` a :func:`taps6_table`).
_taps6: Any = intrinsic(_taps6_ir)


@numba.njit(cache=True, inline="always")
def _taps(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    x0: int,
    y0: int,
    wx: NDArray[np.float32],
    wy: NDArray[np.float32],
) -> tuple[float, float]:
    """The ``n × n`` sums of any other kernel (all taps inside the input)."""
    s_img = 0.0
    s_var = 0.0
    for q in range(wy.size):
        row = y0 + q
        r_img = 0.0
        r_var = 0.0
        for k in range(wx.size):
            wk = wx[k]
            r_img += wk * img[row, x0 + k]
            r_var += wk * wk * var[row, x0 + k]
        wq = wy[q]
        s_img += wq * r_img
        s_var += wq * wq * r_var
    return s_img, s_var


@numba.njit(cache=True, nogil=True)
def _careful(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    msk: NDArray[np.int32],
    ixc: int,
    iyc: int,
    fx: float,
    fy: float,
    wxt: NDArray[np.float32],
    wyt: NDArray[np.float32],
    sensor_edge: np.int32,
) -> tuple[float, float, float, int, bool]:
    """One output pixel whose taps leave the input or meet a non-finite value: weights
    normalised over the usable taps.

    Returns ``(Σ w I, Σ w² V, Σ w, mask, ok)``; the mask has ``sensor_edge`` if a tap
    was missing; ``ok`` is false when the usable taps carry less than a tenth of the
    weight of the taps inside the input (or none).
    """
    ny, nx = img.shape
    n_taps = wxt.size
    radius = n_taps // 2
    ix_first = ixc - radius + 1
    iy_first = iyc - radius + 1
    edge = False
    sx = 0.0
    sy = 0.0
    for k in range(n_taps):
        if 0 <= ix_first + k < nx:
            sx += wxt[k]
        else:
            edge = True
        if 0 <= iy_first + k < ny:
            sy += wyt[k]
        else:
            edge = True
    s_img = 0.0
    s_var = 0.0
    s_w = 0.0
    for q in range(n_taps):
        row = iy_first + q
        wq = wyt[q]
        if wq == 0.0 or not 0 <= row < ny:
            continue
        r_img = 0.0
        r_var = 0.0
        r_w = 0.0
        for k in range(n_taps):
            col = ix_first + k
            wk = wxt[k]
            if wk == 0.0 or not 0 <= col < nx:
                continue
            val = img[row, col]
            vv = var[row, col]
            if math.isfinite(val) and math.isfinite(vv):
                r_img += wk * val
                r_var += wk * wk * vv
                r_w += wk
            else:
                edge = True
        s_img += wq * r_img
        s_var += wq * wq * r_var
        s_w += wq * r_w
    m = 0
    for q in range(2):
        yy = iyc + q
        if (q == 1 and fy == 0.0) or not 0 <= yy < ny:
            continue
        for k in range(2):
            xx = ixc + k
            if (k == 1 and fx == 0.0) or not 0 <= xx < nx:
                continue
            m |= int(msk[yy, xx])
    if edge:
        m |= int(sensor_edge)
    ok = s_w != 0.0 and abs(s_w) >= 0.1 * abs(sx * sy)
    return s_img, s_var, s_w, m, ok


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
    gh, gw = gx.shape
    xi = np.empty(x.size)
    yi = np.empty(x.size)
    for k in range(x.size):
        v = (y[k] - grid_y0) / step
        iv = _grid_index(v, gh)
        iu = _grid_index((x[k] - grid_x0) / step, gw)
        xl, yl, dxdu, dydu, _, _, _, _ = _cell(gx, gy, iu, iv, v - iv)
        fu = (x[k] - (grid_x0 + iu * step)) / step
        xi[k] = xl + dxdu * fu
        yi[k] = yl + dydu * fu
    return xi, yi


#: Bits of a pixel's set-up code (:func:`_setup_cell`).
_INSIDE = 1  # maps inside the detector
_FAST = 2  # every tap inside the input region
_SHIFT_OX = 2  # x phase > 0 (the bilinear footprint spans two columns)
_SHIFT_OY = 3  # y phase > 0


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _setup_cell(
    i0: int,
    i1: int,
    out_x0: int,
    cell_x: float,
    inv_step: float,
    inv_step2: float,
    xl: float,
    yl: float,
    dxdu: float,
    dydu: float,
    ex0: float,
    ex: float,
    ey0: float,
    ey: float,
    bx0: float,
    by0: float,
    bx1: float,
    by1: float,
    sub_x0: int,
    sub_y0: int,
    nx: int,
    ny: int,
    radius: int,
    r_x: NDArray[np.float64],
    r_y: NDArray[np.float64],
    r_jac: NDArray[np.float64],
    r_base: NDArray[np.int64],
    r_px: NDArray[np.int64],
    r_py: NDArray[np.int64],
    r_code: NDArray[np.int64],
) -> None:
    """Pixels ``i0:i1`` of a row inside one grid cell: input position, Jacobian,
    first-tap offset, phase rows and a code (``_INSIDE``, ``_FAST``, the two phase
    signs). Branch-free, so LLVM vectorises it; the arithmetic is that of the former
    per-pixel loop, operation for operation (the results are the same bits).
    """
    n_taps = 2 * radius
    for i in range(i0, i1):
        # unsigned index: no negative-index wraparound, so the stores stay contiguous
        # (with it LLVM vectorised them as scatters)
        ii = np.uint64(i)
        fu = (out_x0 + i - cell_x) * inv_step
        xin = xl + dxdu * fu
        yin = yl + dydu * fu
        r_x[ii] = xin
        r_y[ii] = yin
        r_jac[ii] = abs(dxdu * (ey0 + ey * fu) - (ex0 + ex * fu) * dydu) * inv_step2
        inside = (bx0 <= xin) & (xin < bx1) & (by0 <= yin) & (yin < by1)
        # off the detector (maybe NaN or huge): a harmless 0 instead
        xs = xin if inside else 0.0
        ys = yin if inside else 0.0
        # Phase from the parent-frame position, so that it does not depend on where
        # the input region starts (i.e. on the chunking): bit-identical.
        fxp = math.floor(xs)
        fyp = math.floor(ys)
        fx = xs - fxp
        fy = ys - fyp
        ix_first = fxp - sub_x0 - radius + 1
        iy_first = fyp - sub_y0 - radius + 1
        r_px[ii] = _phase_row(fx)
        r_py[ii] = _phase_row(fy)
        r_base[ii] = iy_first * nx + ix_first
        fast = (
            inside
            & (ix_first >= 0)
            & (iy_first >= 0)
            & (ix_first + n_taps <= nx)
            & (iy_first + n_taps <= ny)
        )
        r_code[ii] = (
            _INSIDE * inside
            + _FAST * fast
            + (int(fx > 0.0) << _SHIFT_OX)
            + (int(fy > 0.0) << _SHIFT_OY)
        )


# Contraction (FMA) only: with reassociation LLVM vectorises the tap sums with an
# alignment-dependent peel, so a pixel's value changed with the (chunking-dependent)
# address of its input.
@numba.njit(cache=True, nogil=True, fastmath={"contract"})
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
    table6: NDArray[np.float32],
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
    table, table6, radius
        :func:`kernel_table` of the kernel, its :func:`taps6_table` (6-tap kernels; any
        array otherwise) and its half-width.
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

    The mapping is linear along each output row within a grid cell, so it is set up once
    per cell and row (:func:`_cell`) and stepped per pixel. Each output row is two
    passes: the per-pixel set-up for the whole row (:func:`_setup_cell`, branch-free and
    vectorised by LLVM: position, Jacobian, first-tap offset, phase rows, a code), then
    the tap sums and stores, whose loop then holds little more than :func:`_taps6`.
    """
    h, w = out_img.shape
    ny, nx = img.shape
    n_taps = 2 * radius
    bx0, by0, bx1, by1 = det_box
    gh, gw = gx.shape
    inv_step = 1.0 / step
    inv_step2 = inv_step * inv_step
    fimg, fvar, fmsk = img.ravel(), var.ravel(), msk.ravel()
    foi, fov, fom = out_img.ravel(), out_var.ravel(), out_msk.ravel()
    # one row's set-up (pass 1), read by the tap sums (pass 2)
    r_x = np.empty(w)
    r_y = np.empty(w)
    r_jac = np.empty(w)
    r_base = np.empty(w, np.int64)
    r_px = np.empty(w, np.int64)
    r_py = np.empty(w, np.int64)
    r_code = np.empty(w, np.int64)
    # from a fast pixel's first tap to its bilinear footprint's first pixel
    to_centre = (radius - 1) * (nx + 1)
    for j in range(h):
        v = (out_y0 + j - grid_y0) * inv_step
        iv = _grid_index(v, gh)
        fv = v - iv
        i = 0
        while i < w:
            iu = _grid_index((out_x0 + i - grid_x0) * inv_step, gw)
            cell_x = grid_x0 + iu * step
            # this cell's pixels (the last cell also takes those beyond the grid)
            i_end = w if iu == gw - 2 else min(w, max(i + 1, int(cell_x + step) - out_x0))
            xl, yl, dxdu, dydu, ex0, ex, ey0, ey = _cell(gx, gy, iu, iv, fv)
            _setup_cell(
                i, i_end, out_x0, cell_x, inv_step, inv_step2, xl, yl, dxdu, dydu,
                ex0, ex, ey0, ey, bx0, by0, bx1, by1, sub_x0, sub_y0, nx, ny, radius,
                r_x, r_y, r_jac, r_base, r_px, r_py, r_code,
            )  # fmt: skip
            i = i_end
        row = j * w
        for i in range(w):
            ii = np.uint64(i)
            o = np.uint64(row + i)
            code = r_code[ii]
            if n_taps == 6 and code & _FAST:
                # every tap inside, rows normalised: no per-tap tests; a NaN shows in
                # the sum and sends the pixel to the careful path
                base = r_base[ii]
                s_img, s_var = _taps6(fimg, fvar, base, nx, table6, r_px[ii], r_py[ii])
                if math.isfinite(s_img) and math.isfinite(s_var):
                    jac = r_jac[ii]
                    foi[o] = s_img * jac
                    fov[o] = s_var * jac * jac
                    # OR over the bilinear footprint, branch-free (offset 0 on an
                    # axis whose phase is exactly 0)
                    mb = np.uint64(base + to_centre)
                    ox = np.uint64((code >> _SHIFT_OX) & 1)
                    oy = np.uint64(nx * ((code >> _SHIFT_OY) & 1))
                    fom[o] = (fmsk[mb] | fmsk[mb + ox]) | (fmsk[mb + oy] | fmsk[mb + ox + oy])
                    continue
            if not code & _INSIDE:
                foi[o] = np.nan
                fov[o] = np.nan
                fom[o] = no_data
                continue
            xin = r_x[ii]
            yin = r_y[ii]
            jac = r_jac[ii]
            fxp = math.floor(xin)
            fyp = math.floor(yin)
            fx = xin - fxp
            fy = yin - fyp
            ixc = int(fxp) - sub_x0
            iyc = int(fyp) - sub_y0
            px = _phase_row(fx)
            py = _phase_row(fy)
            if n_taps != 6 and code & _FAST:
                s_img, s_var = _taps(
                    img, var, ixc - radius + 1, iyc - radius + 1, table[px], table[py]
                )
                if math.isfinite(s_img) and math.isfinite(s_var):
                    foi[o] = s_img * jac
                    fov[o] = s_var * jac * jac
                    mb = np.uint64(iyc * nx + ixc)
                    ox = np.uint64(1) if fx > 0.0 else np.uint64(0)
                    oy = np.uint64(nx) if fy > 0.0 else np.uint64(0)
                    fom[o] = (fmsk[mb] | fmsk[mb + ox]) | (fmsk[mb + oy] | fmsk[mb + ox + oy])
                    continue
            s_img, s_var, s_w, m, ok = _careful(
                img, var, msk, ixc, iyc, fx, fy, table[px], table[py], sensor_edge
            )
            if not ok:
                foi[o] = np.nan
                fov[o] = np.nan
                fom[o] = m | no_data
                continue
            foi[o] = s_img / s_w * jac
            fov[o] = s_var / (s_w * s_w) * jac * jac
            fom[o] = m
