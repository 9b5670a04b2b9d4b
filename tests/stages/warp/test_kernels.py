"""The warp's vector tap sums against plain numpy sums and, bit for bit, against their
earlier vector forms; the shared vector helpers of ``lsstlite._vector``."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numba
import numpy as np
import pytest
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from numpy.typing import NDArray

from lsstlite._vector import load_lanes, splat, tree_sum, tree_sums
from lsstlite.stages.warp._kernels import (
    _FAST,
    _INSIDE,
    _SHIFT_OX,
    _SHIFT_OY,
    TABLE_RESOLUTION,
    _setup_cell,
    _taps6,
    kernel_table,
    taps6_table,
)


@numba.njit
def _call(
    fimg: NDArray[np.float32],
    fvar: NDArray[np.float32],
    base: NDArray[np.int64],
    nx: int,
    table: NDArray[np.float32],
    px: NDArray[np.int64],
    py: NDArray[np.int64],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    out_i = np.empty(base.size, np.float32)
    out_v = np.empty(base.size, np.float32)
    for k in range(base.size):
        out_i[k], out_v[k] = _taps6(fimg, fvar, base[k], nx, table, px[k], py[k])
    return out_i, out_v


def test_vector_taps_equal_the_weighted_sums() -> None:
    """Image Σ wy wx I and variance Σ wy² wx² V over the 6×6 taps, at random positions
    (row ends included) and phases, to float32 rounding; a NaN tap gives NaN."""
    rng = np.random.default_rng(8)
    ny, nx = 37, 53
    img = rng.normal(100.0, 30.0, (ny, nx)).astype(np.float32)
    var = rng.uniform(10.0, 200.0, (ny, nx)).astype(np.float32)
    table = kernel_table("lanczos3")
    n = 2000
    y0 = rng.integers(0, ny - 5, n)
    x0 = rng.integers(0, nx - 5, n)
    x0[:50] = nx - 6  # the last taps are the row's last pixels
    px = rng.integers(0, table.shape[0], n)
    py = rng.integers(0, table.shape[0], n)
    table6 = taps6_table(table)
    got_i, got_v = _call(img.ravel(), var.ravel(), y0 * nx + x0, nx, table6, px, py)
    wx = table[px].astype(np.float64)
    wy = table[py].astype(np.float64)
    rows = y0[:, None, None] + np.arange(6)[None, :, None]
    cols = x0[:, None, None] + np.arange(6)[None, None, :]
    w2 = wy[:, :, None] * wx[:, None, :]
    want_i = (w2 * img[rows, cols]).sum(axis=(1, 2))
    want_v = (w2 * w2 * var[rows, cols]).sum(axis=(1, 2))
    np.testing.assert_allclose(got_i, want_i, rtol=2e-6, atol=2e-5)
    np.testing.assert_allclose(got_v, want_v, rtol=2e-6, atol=2e-5)
    img[10, 20] = np.nan
    bad_i, bad_v = _call(
        img.ravel(), var.ravel(), np.array([8 * nx + 17]), nx, table6, px[:1], py[:1]
    )
    assert np.isnan(bad_i[0]) and np.isfinite(bad_v[0])


def _taps6_v6_ir(
    typingctx: Any, fimg: Any, fvar: Any, base: Any, nx: Any, table: Any, px: Any, py: Any
) -> Any:
    """The first vector form of ``_taps6`` (6-lane loads, per-lane tree sums), kept as
    the reference its successors must equal bit for bit."""
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
        n_col = cgutils.unpack_tuple(builder, tab.shape, 2)[1]
        v6 = ir.VectorType(ir.FloatType(), 6)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v6, [v6, v6, v6]), "llvm.fma.v6f32"
        )
        acc_i = ir.Constant(v6, [0.0] * 6)
        acc_v = ir.Constant(v6, [0.0] * 6)
        wy_row = builder.mul(py_, n_col)
        for q in range(6):
            off = builder.add(base_, builder.mul(nx_, ir.Constant(i64, q)))
            row_i = builder.load(
                builder.bitcast(builder.gep(img.data, [off]), v6.as_pointer()), align=4
            )
            row_v = builder.load(
                builder.bitcast(builder.gep(var.data, [off]), v6.as_pointer()), align=4
            )
            wq = builder.load(builder.gep(tab.data, [builder.add(wy_row, ir.Constant(i64, q))]))
            acc_i = builder.call(fma, [splat(builder, wq, v6), row_i, acc_i])
            acc_v = builder.call(fma, [splat(builder, builder.fmul(wq, wq), v6), row_v, acc_v])
        wx_ptr = builder.gep(tab.data, [builder.mul(px_, n_col)])
        wx = builder.load(builder.bitcast(wx_ptr, v6.as_pointer()), align=4)
        terms_i = builder.fmul(acc_i, wx)
        terms_v = builder.fmul(builder.fmul(acc_v, wx), wx)
        return context.make_tuple(
            builder,
            signature.return_type,
            [tree_sum(builder, terms_i, 6), tree_sum(builder, terms_v, 6)],
        )

    return sig, codegen


_taps6_v6: Any = intrinsic(_taps6_v6_ir)


@numba.njit
def _call_v6(
    fimg: NDArray[np.float32],
    fvar: NDArray[np.float32],
    base: NDArray[np.int64],
    nx: int,
    table: NDArray[np.float32],
    px: NDArray[np.int64],
    py: NDArray[np.int64],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    out_i = np.empty(base.size, np.float32)
    out_v = np.empty(base.size, np.float32)
    for k in range(base.size):
        out_i[k], out_v[k] = _taps6_v6(fimg, fvar, base[k], nx, table, px[k], py[k])
    return out_i, out_v


def test_vector_taps_equal_the_first_vector_form_bit_for_bit() -> None:
    """Masked 8-lane loads, the packed weight table (squares tabulated) and the paired
    tree sums change no bit of the 6×6 sums (including NaN and infinite taps, and taps
    ending at the array's last element)."""
    rng = np.random.default_rng(11)
    ny, nx = 41, 47
    img = (rng.normal(0.0, 1.0, (ny, nx)) * 10.0 ** rng.uniform(-3, 6, (ny, nx))).astype(np.float32)
    var = rng.uniform(0.0, 1e4, (ny, nx)).astype(np.float32)
    img[5, 7] = np.nan
    var[20, 30] = np.inf
    table = kernel_table("lanczos3")
    n = 20000
    y0 = rng.integers(0, ny - 5, n)
    x0 = rng.integers(0, nx - 5, n)
    y0[:20], x0[:20] = ny - 6, nx - 6  # the array's last element is the last tap
    px = rng.integers(0, table.shape[0], n)
    py = rng.integers(0, table.shape[0], n)
    px[:20], py[:20] = table.shape[0] - 1, table.shape[0] - 1
    args = (img.ravel(), var.ravel(), y0 * nx + x0, nx)
    got = _call(*args, taps6_table(table), px, py)
    want = _call_v6(*args, table, px, py)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.view(np.uint32), w.view(np.uint32))


def _sums_for(count: int) -> Any:
    """``f(a, b) -> (tree_sums lane 0, lane 1, tree_sum(a), tree_sum(b))`` over the
    first ``count`` of 8 floats."""

    def sums_ir(typingctx: Any, a: Any, b: Any) -> Any:
        sig = types.UniTuple(types.float32, 4)(a, b)

        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
            v8 = ir.VectorType(ir.FloatType(), 8)
            va, vb = (
                load_lanes(builder, context.make_array(t)(context, builder, v).data, v8, 8)
                for t, v in zip(signature.args, args, strict=True)
            )
            pair = tree_sums(builder, va, vb, count)
            i32 = ir.IntType(32)
            return context.make_tuple(
                builder,
                signature.return_type,
                [
                    builder.extract_element(pair, ir.Constant(i32, 0)),
                    builder.extract_element(pair, ir.Constant(i32, 1)),
                    tree_sum(builder, va, count),
                    tree_sum(builder, vb, count),
                ],
            )

        return sig, codegen

    sums = intrinsic(sums_ir)

    @numba.njit
    def run(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
        out = np.empty((a.shape[0], 4), np.float32)
        for k in range(a.shape[0]):
            out[k, 0], out[k, 1], out[k, 2], out[k, 3] = sums(a[k], b[k])
        return out

    return run


@pytest.mark.parametrize("count", [1, 2, 4, 6, 8])
def test_tree_sums_equal_tree_sum_bit_for_bit(count: int) -> None:
    rng = np.random.default_rng(count)
    shape = (5000, 8)
    a = (rng.normal(size=shape) * 10.0 ** rng.uniform(-8, 8, shape)).astype(np.float32)
    b = (rng.normal(size=shape) * 10.0 ** rng.uniform(-8, 8, shape)).astype(np.float32)
    a[:10, 0] = np.nan
    b[10:20, count - 1] = -np.inf
    out = _sums_for(count)(a, b)
    np.testing.assert_array_equal(out[:, 0].view(np.uint32), out[:, 2].view(np.uint32))
    np.testing.assert_array_equal(out[:, 1].view(np.uint32), out[:, 3].view(np.uint32))
    good = slice(20, None)
    np.testing.assert_allclose(
        out[good, 0], a[good, :count].astype(np.float64).sum(axis=1), rtol=1e-4, atol=1e2
    )


def test_tree_sums_refuses_odd_counts_it_cannot_pair() -> None:
    module = ir.Module()
    v8 = ir.VectorType(ir.FloatType(), 8)
    fn = ir.Function(module, ir.FunctionType(ir.FloatType(), [v8, v8]), "f")
    builder = ir.IRBuilder(fn.append_basic_block())
    for count in (3, 5, 7):
        with pytest.raises(ValueError, match="not supported"):
            tree_sums(builder, fn.args[0], fn.args[1], count)


def _lanes6_ir(typingctx: Any, data: Any, start: Any) -> Any:
    sig = types.UniTuple(types.float32, 8)(data, start)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        start_ = context.cast(builder, args[1], signature.args[1], types.int64)
        vec = load_lanes(
            builder, builder.gep(arr.data, [start_]), ir.VectorType(ir.FloatType(), 8), 6
        )
        i32 = ir.IntType(32)
        lanes = [builder.extract_element(vec, ir.Constant(i32, k)) for k in range(8)]
        return context.make_tuple(builder, signature.return_type, lanes)

    return sig, codegen


_lanes6_intrinsic: Any = intrinsic(_lanes6_ir)


@numba.njit
def _lanes6(data: NDArray[np.float32], start: int) -> NDArray[np.float32]:
    out = np.empty(8, np.float32)
    lanes = _lanes6_intrinsic(data, start)
    for k in range(8):
        out[k] = lanes[k]
    return out


def test_load_lanes_reads_only_its_lanes() -> None:
    """Lanes past ``count`` are 0 whatever lies beyond in memory; a load ending at an
    array's last element works (a masked load: nothing beyond is read)."""
    data = np.arange(1.0, 25.0, dtype=np.float32)
    np.testing.assert_array_equal(_lanes6(data, data.size - 6), [19, 20, 21, 22, 23, 24, 0, 0])
    np.testing.assert_array_equal(_lanes6(data, 3), [4, 5, 6, 7, 8, 9, 0, 0])


@numba.njit(fastmath={"contract"})
def _setup_reference(
    n: int,
    out_x0: int,
    cell_x: float,
    inv_step: float,
    cell: NDArray[np.float64],
    box: NDArray[np.float64],
    sub_x0: int,
    sub_y0: int,
    nx: int,
    ny: int,
    radius: int,
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The per-pixel set-up as the former warp loop wrote it (branches, one pixel at a
    time): ``(x, y, jac)`` and ``(inside, fast, base, px, py, fx > 0, fy > 0)``."""
    xl, yl, dxdu, dydu, ex0, ex, ey0, ey = cell
    bx0, by0, bx1, by1 = box
    inv_step2 = inv_step * inv_step
    n_taps = 2 * radius
    f = np.zeros((n, 3))
    k = np.zeros((n, 7), np.int64)
    for ii in range(n):
        fu = (out_x0 + ii - cell_x) * inv_step
        xin = xl + dxdu * fu
        yin = yl + dydu * fu
        f[ii, 0] = xin
        f[ii, 1] = yin
        f[ii, 2] = abs(dxdu * (ey0 + ey * fu) - (ex0 + ex * fu) * dydu) * inv_step2
        if not (bx0 <= xin < bx1 and by0 <= yin < by1):
            continue
        fxp = math.floor(xin)
        fyp = math.floor(yin)
        fx = xin - fxp
        fy = yin - fyp
        ixc = int(fxp) - sub_x0
        iyc = int(fyp) - sub_y0
        ix_first = ixc - radius + 1
        iy_first = iyc - radius + 1
        k[ii, 0] = 1
        k[ii, 1] = (
            ix_first >= 0 and iy_first >= 0 and ix_first + n_taps <= nx and iy_first + n_taps <= ny
        )
        k[ii, 2] = iy_first * nx + ix_first
        k[ii, 3] = int(fx * TABLE_RESOLUTION + 0.5)
        k[ii, 4] = int(fy * TABLE_RESOLUTION + 0.5)
        k[ii, 5] = fx > 0.0
        k[ii, 6] = fy > 0.0
    return f, k


def _setup_rows(
    n: int,
    i0s: list[int],
    out_x0: int,
    cell_x: float,
    inv_step: float,
    cell: NDArray[np.float64],
    box: NDArray[np.float64],
    sub_x0: int,
    sub_y0: int,
    nx: int,
    ny: int,
    radius: int,
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """:func:`_setup_cell` over ``n`` pixels cut into segments at ``i0s``."""
    r = [np.full(n, np.nan) for _ in range(3)] + [np.full(n, -1, np.int64) for _ in range(4)]
    cuts = [*i0s, n]
    for a, b in itertools.pairwise(cuts):
        _setup_cell(
            a, b, out_x0, cell_x, inv_step, inv_step * inv_step, *cell, *box,
            sub_x0, sub_y0, nx, ny, radius, *r,
        )  # fmt: skip
    x, y, jac, base, px, py, code = r
    f = np.stack([x, y, jac], axis=1)
    inside = (code & _INSIDE) != 0
    k = np.stack(
        [
            inside,
            (code & _FAST) != 0,
            np.where(inside, base, 0),
            np.where(inside, px, 0),
            np.where(inside, py, 0),
            inside & ((code >> _SHIFT_OX) & 1 == 1),
            inside & ((code >> _SHIFT_OY) & 1 == 1),
        ],
        axis=1,
    ).astype(np.int64)
    return f, k


@pytest.mark.parametrize("radius", [3, 2, 4, 1])
def test_vectorised_setup_equals_the_per_pixel_loop_bit_for_bit(radius: int) -> None:
    """The branch-free set-up (vectorised by LLVM) gives the former per-pixel loop's
    bits, whether a row is one segment or many (vector body or scalar remainder), at
    the detector and region edges, and for NaN positions (off-detector grid points)."""
    rng = np.random.default_rng(radius)
    n = 203
    nx, ny = 300, 250
    for trial in range(40):
        cell = np.array(
            [
                rng.uniform(-10, 320),
                rng.uniform(-10, 270),
                rng.uniform(14, 18) * rng.choice([-1, 1]),
                rng.uniform(-3, 3),
                rng.uniform(-3, 3),
                rng.uniform(-0.01, 0.01),
                rng.uniform(14, 18),
                rng.uniform(-0.01, 0.01),
            ]
        )
        if trial % 10 == 0:
            cell[0] = np.nan
        # positions on whole and half pixels too (phases exactly 0 and 1/2)
        if trial % 7 == 0:
            cell[2:4] = np.round(cell[2:4])
            cell[:2] = np.round(cell[:2] * 2) / 2
        box = np.array([-0.5, -0.5, rng.uniform(100, 300), rng.uniform(100, 250)])
        args = (rng.integers(-50, 50), float(rng.integers(-60, 60)), 1.0 / 16.0, cell, box)
        region = (rng.integers(-5, 5), rng.integers(-5, 5), nx, ny, radius)
        want_f, want_k = _setup_reference(n, *args, *region)
        cuts = sorted({0, *rng.integers(0, n, rng.integers(0, 12))})
        for i0s in ([0], cuts, list(range(n))):
            got_f, got_k = _setup_rows(n, i0s, *args, *region)
            np.testing.assert_array_equal(got_f.view(np.uint64), want_f.view(np.uint64))
            np.testing.assert_array_equal(got_k, want_k)


def test_taps6_table_layout() -> None:
    """64-byte aligned rows of 16: the weights, two zeros, their float32 squares, two
    zeros; only 6-tap tables."""
    table = kernel_table("lanczos3")
    packed = taps6_table(table)
    assert packed.shape == (table.shape[0], 16) and packed.flags.c_contiguous
    assert packed.ctypes.data % 64 == 0
    np.testing.assert_array_equal(packed[:, :6], table)
    np.testing.assert_array_equal(packed[:, 8:14], table * table)
    assert not packed[:, 6:8].any() and not packed[:, 14:].any()
    with pytest.raises(ValueError, match="6-tap"):
        taps6_table(kernel_table("lanczos4"))
