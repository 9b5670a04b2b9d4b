"""ISR kernels: numpy / numba on one block of pixels. No dask, no I/O.

Conventions: images are ``(rows, columns)``; amplifier geometry comes as small integer
arrays (one entry per amplifier); sections are 0-based half-open. Every function here is
a pure function of its arguments, so a block computed with a halo gives the same pixels
as the whole image.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic
from numpy.typing import NDArray
from scipy import interpolate

__all__ = [
    "bf_band",
    "bf_box_reflat",
    "bf_correct",
    "bf_margin",
    "bright_boxes",
    "clipped_combine",
    "crosstalk_groups",
    "crosstalk_readout",
    "divide_flat_rows",
    "finish_rows",
    "fit_overscan",
    "fringe_normal_equations",
    "grow_mask",
    "interpolate_rows",
    "isr_fused",
    "isr_local",
    "isr_local_inplace",
    "mark_boxes",
    "rasterize_boxes",
    "reciprocal",
    "row_bands",
    "row_bits_of",
    "row_medians",
    "unflat",
]

F32 = np.float32
F64 = np.float64

#: LLVM fast-math flags of the per-pixel kernels: reassociation and contraction (FMA),
#: but *not* ``nnan``/``ninf``, which would let LLVM delete the non-finite checks.
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: Overscan modes (see :func:`fit_overscan`).
OVERSCAN_MODES = ("median", "median_per_row", "poly", "spline")


def row_medians(
    block: NDArray[np.number], x0s: NDArray[np.int64], x1s: NDArray[np.int64]
) -> NDArray[np.float32]:
    """Median of columns ``[x0s[a], x1s[a])`` of every row of ``block``: ``(n_amps, rows)``.

    Equal to ``np.median`` of the values as float64, cast to float32 (NaN where a value is
    NaN). The medians of 64 rows at a time go through one sorting network (Batcher's
    odd-even merge sort, pruned to the comparators that reach the middle), each
    comparator a vectorised min/max over the 64 rows: no branches. Integers of up to 16
    bits are sorted as they are (16 lanes a vector). For 32 columns, ~0.045 µs per median
    of uint16 pixels (~0.065 µs in float32), against ~0.4 µs for a selection per row and
    ~0.7 µs for numba's ``np.median``.
    """
    x0s = np.asarray(x0s, np.int64)
    widths = np.asarray(x1s, np.int64) - x0s
    out = np.empty((x0s.size, block.shape[0]), np.float32)
    for n in np.unique(widths):  # one call per overscan width (usually one)
        _, _, pairs, tile, pad = _inline_overscan(block, (x0s, int(n)))
        amps = np.flatnonzero(widths == n)
        _network_medians(block, x0s, amps, int(n), pairs, tile, pad, out, -0.0)
    return out


#: Rows whose medians one pass of the sorting network computes together.
_MEDIAN_LANES = 64


@functools.lru_cache(maxsize=16)
def _median_network(n: int) -> tuple[int, NDArray[np.int64]]:
    """Batcher's odd-even merge sort for ``n`` values padded to a power of two with +∞,
    keeping only the comparators whose outputs reach positions ``(n - 1) // 2``, ``n // 2``.
    """
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    need = {(n - 1) // 2, n // 2}
    kept = []
    for i, j in reversed(pairs):
        if i in need or j in need:
            kept.append((i, j))
            need |= {i, j}
    return size, np.array(kept[::-1], np.int64).reshape(-1, 2)


def _tile_dtype(dtype: np.dtype[Any]) -> tuple[type, float]:
    """The sorting network's type for values of ``dtype``, and its padding value (above
    any value): integers of up to 16 bits as they are (16 lanes a vector: the network on
    uint16 raw took 1.4 against 2.1 ms a detector in float32), float32, else float64."""
    if dtype.kind in "ui" and dtype.itemsize <= 2:
        return dtype.type, float(np.iinfo(dtype).max)
    return (np.float32 if dtype == np.float32 else np.float64), np.inf


@numba.njit(cache=True, nogil=True)
def _network_medians(
    block: NDArray[np.number],
    x0s: NDArray[np.int64],
    amps: NDArray[np.int64],
    n: int,
    pairs: NDArray[np.int64],
    tile: NDArray[Any],
    pad: float,
    out: NDArray[np.float32],
    minus_zero: float,
) -> None:
    for a in amps:
        _amp_medians(block, x0s[a], n, pairs, tile, pad, out[a], minus_zero)


@numba.njit(cache=True, nogil=True)
def _amp_medians(
    block: NDArray[np.number],
    x0: int,
    n: int,
    pairs: NDArray[np.int64],
    tile: NDArray[Any],
    pad: float,
    out: NDArray[np.float32],
    minus_zero: float,
) -> None:
    rows = block.shape[0]
    neg_zero = tile.dtype.type(minus_zero)  # 0 for an integer tile
    size, lanes = tile.shape
    k_lo, k_hi = (n - 1) // 2, n // 2
    inf = tile.dtype.type(pad)
    for r0 in range(0, rows, lanes):
        nl = min(lanes, rows - r0)
        for lane in range(lanes):  # tile[j, lane]: value j of row r0 + lane
            if lane < nl:
                seg = block[r0 + lane, x0 : x0 + n]
                for j in range(n):
                    tile[j, lane] = seg[j]
            else:
                for j in range(n):
                    tile[j, lane] = 0
        for j in range(n, size):
            for lane in range(lanes):
                tile[j, lane] = inf
        for c in range(pairs.shape[0]):
            i, k = pairs[c, 0], pairs[c, 1]
            for lane in range(lanes):
                u, v = tile[i, lane], tile[k, lane]
                # + (-0.0), a run-time value, changes no bit but keeps LLVM from storing
                # only the changed lanes (a masked store, microcoded: 3.5× slower)
                tile[i, lane] = (u if u < v else v) + neg_zero
                tile[k, lane] = (v if u < v else u) + neg_zero
        for lane in range(nl):
            seg = block[r0 + lane, x0 : x0 + n]
            nan = False
            for j in range(n):
                nan |= seg[j] != seg[j]
            mid = (np.float64(tile[k_lo, lane]) + np.float64(tile[k_hi, lane])) / 2
            out[r0 + lane] = np.nan if nan else np.float32(mid)


def fit_overscan(
    row_medians: NDArray[np.floating],
    *,
    mode: str,
    order: int,
    knot_rows: int,
    n_sigma: float,
    n_iter: int,
) -> NDArray[np.float32]:
    """Overscan level of every row from per-row medians: constant, raw, polynomial or spline.

    The polynomial (Legendre) and spline (cubic, knots every ``knot_rows``) fits are
    iteratively sigma-clipped (``n_sigma``, ``n_iter`` rounds; σ from the MAD).
    """
    y = np.asarray(row_medians, dtype=F64)
    n = y.size
    if mode == "median":
        return np.full(n, np.median(y), dtype=F32)
    if mode == "median_per_row":
        return y.astype(F32)
    if mode not in OVERSCAN_MODES:
        raise ValueError(f"overscan mode must be one of {OVERSCAN_MODES}, got {mode!r}")
    t = np.linspace(-1.0, 1.0, n)
    keep = np.ones(n, dtype=bool)
    model: NDArray[np.floating] = np.zeros(n)
    for _ in range(max(n_iter, 1)):
        if mode == "poly":
            coef = np.polynomial.legendre.legfit(t[keep], y[keep], order)
            model = np.polynomial.legendre.legval(t, coef)
        else:
            idx = np.flatnonzero(keep)
            knots = np.arange(knot_rows, n - knot_rows, knot_rows, dtype=F64)
            knots = knots[(knots > idx[0]) & (knots < idx[-1])]
            spline = interpolate.LSQUnivariateSpline(idx.astype(F64), y[keep], knots, k=3)
            model = spline(np.arange(n, dtype=F64))
        resid = y - model
        sigma = 1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep])))
        new_keep = np.abs(resid) <= n_sigma * max(sigma, 1e-12)
        if new_keep.sum() < order + 2 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return model.astype(F32)


#: Flat-field values outside ``(FLAT_MIN, FLAT_MAX)`` (or not finite) mark a pixel BAD:
#: the fused kernels' :func:`reciprocal` holds within it.
FLAT_MIN, FLAT_MAX = 2.0**-120, 2.0**120


def _float_bits_intrinsic(typingctx: Any, x: Any) -> Any:
    """The bits of a float32 as an int32 (an LLVM bitcast)."""
    sig = types.int32(types.float32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


def _bits_float_intrinsic(typingctx: Any, x: Any) -> Any:
    """An int32's bits as a float32 (an LLVM bitcast)."""
    sig = types.float32(types.int32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


_float_bits: Any = intrinsic(_float_bits_intrinsic)
_bits_float: Any = intrinsic(_bits_float_intrinsic)


@numba.njit(cache=True, nogil=True, inline="always", fastmath=_FASTMATH)
def reciprocal(f: float | np.floating[Any]) -> float:
    """``1 / f`` for float32 ``f`` in ``(FLAT_MIN, FLAT_MAX)``: a guess from the bits
    (``0x7EF311C3 - bits``, within 12%), two Newton steps, and a last one on the residual
    ``1 - f y`` (one fused multiply-add, exact), which leaves the correctly rounded
    reciprocal but for rare ties (powers of two, 1 included, exactly). Five times the
    throughput of a vector division, which was a seventh of the fused ISR pass."""
    one = np.float32(1.0)
    two = np.float32(2.0)
    y = _bits_float(np.int32(0x7EF311C3) - _float_bits(f))
    y = y * (two - f * y)
    y = y * (two - f * y)
    return y + y * (one - f * y)


#: Indices of ``flags`` in :func:`isr_fused`.
FLAG_NAMES = ("overscan", "crosstalk", "bias", "linearity", "dark", "saturation", "flat")


@numba.njit(cache=True, nogil=True, inline="always")
def _amp_bits(
    m_a: NDArray[np.int32], check: bool, notable: int | np.int32
) -> tuple[np.int32, np.int64]:
    """The OR of the mask bits of one amplifier's row ``m_a``, with bit 31 (the bright
    flag of :func:`_isr_rows`) cleared again where it was set; and 1 if the row is
    bright, or (when ``check``) has ``notable`` bits."""
    acc = np.int32(0)
    for j in range(m_a.size):
        acc |= m_a[j]
    if acc < np.int32(0):  # a bright amplifier row (few): bit 31 off again
        for j in range(m_a.size):
            m_a[j] &= np.int32(0x7FFFFFFF)
        return np.int32(acc), np.int64(1)
    return np.int32(acc), np.int64(1 if check and (acc & notable) != 0 else 0)


# Without "reassoc": with it, LLVM turned the crosstalk's tree of sums into one chain of
# eight dependent FMAs (the kernel ran ~3% slower from memory).
@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH - {"reassoc"}, error_model="numpy")
def _isr_rows(
    raw: NDArray[np.float32],
    overscan: NDArray[np.float32],
    amp_raw_x0: NDArray[np.int64],
    amp_det_x0: NDArray[np.int64],
    amp_flip: NDArray[np.bool_],
    width: int,
    gain: NDArray[np.float64],
    read_noise: NDArray[np.float64],
    sat_adu: NDArray[np.float64],
    lin: NDArray[np.float64],
    xt_src: NDArray[np.int64],
    xt_coef: NDArray[np.float64],
    bias: NDArray[np.float32],
    dark: NDArray[np.float32],
    dark_time: float,
    flat: NDArray[np.float32],
    flags: NDArray[np.bool_],
    bits: NDArray[np.int32],
    bright: float,
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    msk: NDArray[np.int32],
    row_bright: NDArray[np.int64],
    row_bits: NDArray[np.int32],
    os_x0s: NDArray[np.int64],
    os_n: int,
    os_pairs: NDArray[np.int64],
    os_tile: NDArray[Any],
    os_pad: float,
) -> None:
    # With ``os_n`` > 0 the overscan levels are the per-row medians of the ``os_n``
    # columns from ``os_x0s``, computed here for each tile of rows just before the rows
    # themselves (``overscan`` is unused): the raw rows are read while in cache.
    # Row by row, amplifier by amplifier: overscan into one float32 row per amplifier
    # (readout order) and its SAT bits (detector order), then for each victim amplifier
    # its row in detector order minus the crosstalk of eight sources at a time (one store
    # per eight sources), and one branch-free loop (selects only, absent steps as
    # identities) over 1-d views for the detector-order steps, which LLVM vectorises.
    # Reversed amplifiers are read forward and stored reversed, with an unsigned index: a
    # signed one makes numba wrap negative indices, which stops LLVM from vectorising, and
    # reversed reads cost a shuffle per source. Branches per step, 2-d indexing, an
    # in-place reversal or one store per crosstalk source ran 1.2-3× slower.
    n_rows = raw.shape[0]
    n_amps = amp_raw_x0.size
    do_os, do_xt, do_bias, do_lin = flags[0], flags[1], flags[2], flags[3]
    do_dark, do_sat, do_flat = flags[4], flags[5], flags[6]
    det_nx = img.shape[1]
    src = np.zeros((n_amps + 1, width), np.float32)  # the last row pads crosstalk groups
    t = np.empty(width, np.float32)
    satm = np.zeros((n_amps, width), np.int32)
    zeros = np.zeros(det_nx, np.float32)
    ones = np.ones(det_nx, np.float32)
    sat_bit, nan_bit, bad_bit = np.int32(bits[0]), np.int32(bits[1]), np.int32(bits[2])
    zero = np.float32(0.0)
    inf = np.float32(np.inf)
    zero_i = np.int32(0)
    dt = np.float32(dark_time) if do_dark else zero
    flat_min, flat_max = np.float32(FLAT_MIN), np.float32(FLAT_MAX)
    n_groups = xt_src.shape[1] if do_xt else 0
    last = np.uint64(width - 1)
    check = bright < np.inf
    # (every row when the threshold is not positive)
    thr = np.float32(bright * (1 - 1e-6)) if bright > 0 else np.float32(-np.inf)
    hot_bit = np.int32(-(2**31))
    notable = bad_bit | nan_bit
    lanes = os_tile.shape[1]
    levels = np.empty((n_amps, lanes), np.float32)
    for r in range(n_rows):
        if os_n > 0 and r % lanes == 0:
            tile_rows = raw[r : min(r + lanes, n_rows)]
            for a in range(n_amps):
                _amp_medians(tile_rows, os_x0s[a], os_n, os_pairs, os_tile, os_pad, levels[a], -0.0)
        raw_r = raw[r]
        for a in range(n_amps):
            if not do_os:
                o = zero
            elif os_n > 0:
                o = levels[a, r % lanes]
            else:
                o = np.float32(overscan[a, r])
            seg = raw_r[amp_raw_x0[a] : amp_raw_x0[a] + width]
            s_a = src[a]
            # the SAT bits from the raw value as it is converted, in detector order (a
            # pass of their own over the raw row cost 2-5% of the kernel)
            sm = satm[a]
            sat = np.float32(sat_adu[a])
            if not do_sat:
                for j in range(width):
                    s_a[j] = np.float32(seg[j]) - o
                sm[:] = zero_i
            elif amp_flip[a]:
                for j in range(width):
                    x = np.float32(seg[j])
                    s_a[j] = x - o
                    sm[last - np.uint64(j)] = sat_bit if x >= sat else zero_i
            else:
                for j in range(width):
                    x = np.float32(seg[j])
                    s_a[j] = x - o
                    sm[j] = sat_bit if x >= sat else zero_i
        bias_r = bias[r] if do_bias else zeros
        dark_r = dark[r] if do_dark else zeros
        flat_r = flat[r] if do_flat else ones
        img_r, var_r, msk_r = img[r], var[r], msk[r]
        acc = zero_i  # the row's summaries (below)
        amps = np.int64(0)
        for a in range(n_amps):
            g = np.float32(gain[a])
            rn2 = np.float32(read_noise[a] * read_noise[a])
            s_a = src[a]
            flip = amp_flip[a]
            # t: this amplifier's row in detector order; the victim loses C[s, a] ×
            # source s at the same readout column, eight sources per pass
            for q in range(max(n_groups, 1)):
                base = s_a if q == 0 else t
                if n_groups == 0:
                    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = zero
                    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = src[n_amps]
                else:
                    s0, s1 = src[xt_src[a, q, 0]], src[xt_src[a, q, 1]]
                    s2, s3 = src[xt_src[a, q, 2]], src[xt_src[a, q, 3]]
                    s4, s5 = src[xt_src[a, q, 4]], src[xt_src[a, q, 5]]
                    s6, s7 = src[xt_src[a, q, 6]], src[xt_src[a, q, 7]]
                    c0, c1 = np.float32(xt_coef[a, q, 0]), np.float32(xt_coef[a, q, 1])
                    c2, c3 = np.float32(xt_coef[a, q, 2]), np.float32(xt_coef[a, q, 3])
                    c4, c5 = np.float32(xt_coef[a, q, 4]), np.float32(xt_coef[a, q, 5])
                    c6, c7 = np.float32(xt_coef[a, q, 6]), np.float32(xt_coef[a, q, 7])
                # sources read forward, the result stored in detector order (a reversed
                # store costs one shuffle; reversed reads cost one per source)
                if flip and q == 0:
                    for j in range(width):
                        t[last - np.uint64(j)] = base[j] - (
                            ((c0 * s0[j] + c1 * s1[j]) + (c2 * s2[j] + c3 * s3[j]))
                            + ((c4 * s4[j] + c5 * s5[j]) + (c6 * s6[j] + c7 * s7[j]))
                        )
                elif flip:
                    for j in range(width):
                        k = last - np.uint64(j)
                        t[k] = t[k] - (
                            ((c0 * s0[j] + c1 * s1[j]) + (c2 * s2[j] + c3 * s3[j]))
                            + ((c4 * s4[j] + c5 * s5[j]) + (c6 * s6[j] + c7 * s7[j]))
                        )
                else:
                    for j in range(width):
                        t[j] = base[j] - (
                            ((c0 * s0[j] + c1 * s1[j]) + (c2 * s2[j] + c3 * s3[j]))
                            + ((c4 * s4[j] + c5 * s5[j]) + (c6 * s6[j] + c7 * s7[j]))
                        )
            tm = satm[a]
            xa = amp_det_x0[a]
            l2 = np.float32(lin[a, 0]) if do_lin else zero
            l3 = np.float32(lin[a, 1]) if do_lin else zero
            l4 = np.float32(lin[a, 2]) if do_lin else zero
            b_a = bias_r[xa : xa + width]
            d_a = dark_r[xa : xa + width]
            f_a = flat_r[xa : xa + width]
            i_a = img_r[xa : xa + width]
            v_a = var_r[xa : xa + width]
            m_a = msk_r[xa : xa + width]
            for j in range(width):
                v = t[j] - b_a[j]
                v = v + v * v * (l2 + v * (l3 + v * l4))
                e = v * g
                ev = max(e, zero) + rn2
                e = e - d_a[j] * dt
                hot = hot_bit if e > thr else zero_i
                f = f_a[j]
                # ``&``, not ``and``: the short-circuit made LLVM pack the vector of
                # booleans to 16 bits and back (the loop ran ~13% slower); the
                # reciprocal of an unusable flat is computed, then not used
                ok = (f > flat_min) & (f < flat_max)
                inv = reciprocal(f)
                p = e * inv
                good = ok & (abs(p) < inf)
                i_a[j] = p if good else zero
                v_a[j] = ev * (inv * inv) if good else inf
                m_a[j] = tm[j] | hot | (zero_i if good else (nan_bit if ok else bad_bit))
            # The OR of the previous amplifier's mask bits, while its pixels are in L1
            # (a reduction inside the loop above stopped it vectorising well; one pass
            # over the whole row after it ran 5-8% slower). The previous one: reading
            # the pixels just stored waited for the main loop's last results (~2 ms a
            # detector). Bit 31 of the mask, cleared there, says the pixel may be above
            # ``bright`` before the flat: the value before the flat against the
            # threshold less 1e-6 of it (image × flat against it cost ~3 ms more).
            if a > 0:
                m_p = msk_r[amp_det_x0[a - 1] : amp_det_x0[a - 1] + width]
                bits_a, flag = _amp_bits(m_p, check, notable)
                acc |= bits_a
                amps |= flag << np.int64(a - 1)
        m_p = msk_r[amp_det_x0[n_amps - 1] : amp_det_x0[n_amps - 1] + width]
        bits_a, flag = _amp_bits(m_p, check, notable)
        acc |= bits_a
        amps |= flag << np.int64(n_amps - 1)
        row_bits[r] = acc & np.int32(0x7FFFFFFF)
        row_bright[r] = amps


def crosstalk_groups(xtalk: NDArray[np.floating]) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The crosstalk matrix as each victim's sources in groups of eight, for :func:`isr_fused`.

    ``xtalk[s, a]`` is the fraction of source ``s`` seen by victim ``a``. Returns
    ``(sources, coefficients)``, both ``(n_amps, n_groups, 8)``: victim ``a``'s non-zero
    sources (``s != a``) in increasing order, padded with source ``n_amps`` (a row of
    zeros in the kernel) and coefficient 0.
    """
    xt = np.asarray(xtalk, np.float64)
    n = xt.shape[0]
    lists = [[s for s in range(n) if s != a and xt[s, a] != 0.0] for a in range(n)]
    n_groups = max([(len(v) + 7) // 8 for v in lists] + [1])
    sources = np.full((n, n_groups, 8), n, np.int64)
    coef = np.zeros((n, n_groups, 8))
    for a, srcs in enumerate(lists):
        for k, s in enumerate(srcs):
            sources[a, k // 8, k % 8] = s
            coef[a, k // 8, k % 8] = xt[s, a]
    return sources, coef


def isr_fused(
    raw: NDArray[np.float32],
    overscan: NDArray[np.float32],
    amp_raw_x0: NDArray[np.int64],
    amp_det_x0: NDArray[np.int64],
    amp_flip: NDArray[np.bool_],
    width: int,
    det_nx: int,
    gain: NDArray[np.float64],
    read_noise: NDArray[np.float64],
    sat_adu: NDArray[np.float64],
    lin: NDArray[np.float64],
    xtalk: NDArray[np.float64] | tuple[NDArray[np.int64], NDArray[np.float64]],
    bias: NDArray[np.float32],
    dark: NDArray[np.float32],
    dark_time: float,
    flat: NDArray[np.float32],
    flags: NDArray[np.bool_],
    bits: NDArray[np.int32],
    out: NDArray[np.float32] | None = None,
    *,
    bright: float = np.inf,
    row_bright: NDArray[np.int64] | None = None,
    row_bits: NDArray[np.int32] | None = None,
    overscan_columns: tuple[NDArray[np.int64], int] | None = None,
) -> NDArray[np.float32]:
    """The per-pixel ISR chain of one block of rows, raw ADU → electrons, in one pass.

    ``raw`` holds rows of the untrimmed raw frame (all amplifiers, readout order);
    ``overscan`` the matching ``(n_amps, rows)`` levels. Each output pixel of the assembled
    ``(rows, det_nx)`` block gets: saturation flag on the raw value; overscan; crosstalk
    from the other amplifiers at the same readout position (overscan-subtracted ADU,
    nonlinear, as the electronics saw them); bias (ADU); linearity (ADU); gain (e⁻);
    variance ``max(e, 0) + read_noise²``; dark (``dark × dark_time``); flat (times
    :func:`reciprocal`; a flat outside ``(FLAT_MIN, FLAT_MAX)`` or not finite → BAD, 0,
    ∞ variance); non-finite → UNMASKEDNAN, 0, ∞ variance.
    ``flags`` follow :data:`FLAG_NAMES`; ``bits`` = (SAT, UNMASKEDNAN, BAD). Absent
    calibrations are ``(0, 0)`` arrays with their flag off. ``raw`` may be any numeric
    dtype (uint16 as read; each dtype compiles once). ``xtalk`` is the matrix or its
    :func:`crosstalk_groups`.

    ``row_bright`` (int64 per row), when given, receives which amplifiers' pixels in the
    row may be above ``bright`` before the flat (non-finite as 0: the image
    brighter-fatter sees): bit ``a`` for the amplifier at ``amp_det_x0[a]`` (at most 63).
    It may say so of pixels that are not, never the reverse: the value before the flat is
    compared with the threshold less 1e-6 of it (image × flat is within ~2e-7 of it), and
    BAD or UNMASKEDNAN pixels count. ``bits`` must not use bit 31, which the kernel
    borrows for this test.
    ``row_bits`` (int32 per row) receives the OR of the row's mask bits.
    ``overscan_columns`` ``(x0s, n)``, when given, replaces ``overscan``: the levels are
    the medians of columns ``[x0s[a], x0s[a] + n)`` of each row (as :func:`row_medians`),
    computed in the same pass.

    Returns
    -------
    numpy.ndarray
        ``(3, rows, det_nx)`` float32: image (e⁻), variance (e⁻²) and the int32 mask
        stored bit for bit (``out[2].view(np.int32)``); written into ``out`` when given
        (planes C-contiguous), else newly allocated.
    """
    n = raw.shape[0]
    if (np.asarray(bits)[:3] < 0).any():
        raise ValueError("isr_fused: the SAT, UNMASKEDNAN and BAD bits must not be bit 31")
    if np.size(amp_raw_x0) > 63:
        raise ValueError(f"isr_fused: {np.size(amp_raw_x0)} amplifiers in a row; at most 63")
    if out is None:
        out = np.empty((3, n, det_nx), dtype=np.float32)
    groups = xtalk if isinstance(xtalk, tuple) else crosstalk_groups(xtalk)
    _isr_rows(
        raw,
        overscan,
        amp_raw_x0,
        amp_det_x0,
        amp_flip,
        width,
        gain,
        read_noise,
        sat_adu,
        lin,
        groups[0],
        groups[1],
        bias,
        dark,
        dark_time,
        flat,
        flags,
        bits,
        float(bright),
        out[0],
        out[1],
        out[2].view(np.int32),
        np.empty(n, np.int64) if row_bright is None else row_bright,
        np.empty(n, np.int32) if row_bits is None else row_bits,
        *_inline_overscan(raw, overscan_columns),
    )
    return out


def _inline_overscan(
    raw: NDArray[Any], columns: tuple[NDArray[np.int64], int] | None
) -> tuple[NDArray[np.int64], int, NDArray[np.int64], NDArray[Any], float]:
    """The overscan arguments of :func:`_isr_rows`: none, or the median network's (the
    tile of the same type either way: one compilation per raw type)."""
    dtype, pad = _tile_dtype(raw.dtype)
    if columns is None:
        return np.zeros(0, np.int64), 0, np.zeros((0, 2), np.int64), np.zeros((1, 1), dtype), pad
    x0s, n = columns
    size, pairs = _median_network(int(n))
    tile: NDArray[Any] = np.empty((size, _MEDIAN_LANES), dtype)
    return np.asarray(x0s, np.int64), int(n), pairs, tile, pad


@numba.njit(cache=True, nogil=True)
def crosstalk_readout(
    image: NDArray[np.float32],
    amp_raw_x0: NDArray[np.int64],
    width: int,
    xtalk: NDArray[np.float64],
) -> NDArray[np.float32]:
    """Subtract crosstalk in the untrimmed raw frame (readout order, overscan removed).

    The victim ``a`` at readout column ``j`` loses ``Σ_s xtalk[s, a] × source_s[j]``.
    """
    out = image.copy()
    n_amps = amp_raw_x0.size
    for r in range(image.shape[0]):
        for j in range(width):
            for a in range(n_amps):
                corr = 0.0
                for s in range(n_amps):
                    if s != a:
                        corr += xtalk[s, a] * image[r, amp_raw_x0[s] + j]
                out[r, amp_raw_x0[a] + j] = image[r, amp_raw_x0[a] + j] - corr
    return out


def rasterize_boxes(
    boxes: NDArray[np.int64], y0: int, x0: int, shape: tuple[int, int]
) -> NDArray[np.bool_]:
    """Boolean mask of a block at ``(y0, x0)`` covered by boxes ``(x0, y0, width, height)``."""
    out = np.zeros(shape, dtype=bool)
    for bx, by, bw, bh in np.asarray(boxes, dtype=np.int64).reshape(-1, 4):
        ya, yb = max(by - y0, 0), min(by + bh - y0, shape[0])
        xa, xb = max(bx - x0, 0), min(bx + bw - x0, shape[1])
        if ya < yb and xa < xb:
            out[ya:yb, xa:xb] = True
    return out


@numba.njit(cache=True, nogil=True)
def mark_boxes(mask: NDArray[np.int32], boxes: NDArray[np.int64], y0: int, bit: int) -> None:
    """OR ``bit`` into the pixels of a block at row ``y0`` covered by boxes ``(x0, y0, w, h)``."""
    ny, nx = mask.shape
    for k in range(boxes.shape[0]):
        ya, yb = max(boxes[k, 1] - y0, 0), min(boxes[k, 1] + boxes[k, 3] - y0, ny)
        xa, xb = max(boxes[k, 0], 0), min(boxes[k, 0] + boxes[k, 2], nx)
        for y in range(ya, yb):
            for x in range(xa, xb):
                mask[y, x] |= bit


@numba.njit(cache=True, nogil=True)
def _grow(mask: NDArray[np.int32], bit: int, radius: int) -> NDArray[np.int32]:
    ny, nx = mask.shape
    out = mask.copy()
    for y in range(ny):
        for x in range(nx):
            if mask[y, x] & bit:
                for yy in range(max(y - radius, 0), min(y + radius + 1, ny)):
                    for xx in range(max(x - radius, 0), min(x + radius + 1, nx)):
                        out[yy, xx] |= bit
    return out


def grow_mask(mask: NDArray[np.int32], bit: int, radius: int) -> NDArray[np.int32]:
    """Grow mask plane ``bit`` by a square of half-size ``radius`` (pixels).

    Cost: one scan plus ``(2 radius + 1)²`` per flagged pixel (flagged pixels are rare).
    """
    if radius <= 0:
        return mask
    return _grow(np.ascontiguousarray(mask, dtype=np.int32), bit, radius)


@numba.njit(cache=True, nogil=True)
def interpolate_rows(
    image: NDArray[np.float32],
    var: NDArray[np.float32],
    mask: NDArray[np.int32],
    bad_bits: int,
    intrp_bit: int,
    max_width: int,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int32]]:
    """Linear interpolation along rows over runs of ``bad_bits`` pixels ≤ ``max_width`` long.

    A run needs a good pixel on both sides; interpolated pixels get ``intrp_bit`` and the
    mean variance of the two ends. Longer runs (saturated star cores) are left alone.
    """
    img = image.copy()
    v = var.copy()
    m = mask.copy()
    ny, nx = image.shape
    for r in range(ny):
        x = 0
        while x < nx:
            if (mask[r, x] & bad_bits) == 0:
                x += 1
                continue
            start = x
            while x < nx and (mask[r, x] & bad_bits) != 0:
                x += 1
            stop = x  # run is [start, stop)
            if start == 0 or stop == nx or stop - start > max_width:
                continue
            left, right = image[r, start - 1], image[r, stop]
            vl, vr = var[r, start - 1], var[r, stop]
            n = stop - start + 1
            for k in range(start, stop):
                t = (k - start + 1) / n
                img[r, k] = left + t * (right - left)
                v[r, k] = 0.5 * (vl + vr)
                m[r, k] |= intrp_bit
    return img, v, m


@numba.njit(cache=True, nogil=True)
def _add_tap(
    phi: NDArray[np.float32], cur: NDArray[np.float32], c: float, off: int, kh: int
) -> None:
    """``phi[i] += c * cur[i + off]`` for ``i`` in ``[kh, phi.size - kh)`` (``off >= -kh``).
    A function of its own: inlined in :func:`_bf_sparse`'s loops, LLVM left it scalar."""
    base = np.uint64(off + kh)
    for i in range(phi.size - 2 * kh):
        phi[np.uint64(i) + np.uint64(kh)] += c * cur[np.uint64(i) + base]


@numba.njit(cache=True, nogil=True)
def _add_taps3(
    phi: NDArray[np.float32],
    cur: NDArray[np.float32],
    c0: float,
    c1: float,
    c2: float,
    off: int,
    kh: int,
) -> None:
    """:func:`_add_tap` for three taps at offsets ``off``, ``off - 1``, ``off - 2``, added
    in that order: one load and store of ``phi`` for three taps (9.3 µs against 13.4 µs
    for a 33 × 41 patch and a 9 × 9 kernel)."""
    base = np.uint64(off + kh)
    one, two = np.uint64(1), np.uint64(2)
    for i in range(phi.size - 2 * kh):
        j = np.uint64(i) + base
        q = np.uint64(i) + np.uint64(kh)
        phi[q] = ((phi[q] + c0 * cur[j]) + c1 * cur[j - one]) + c2 * cur[j - two]


@numba.njit(cache=True, nogil=True)
def _bright_runs(
    image: NDArray[np.float32], threshold: float, radius: int, out: NDArray[np.int64]
) -> int:
    """The runs of pixels above ``threshold`` along rows, widened by ``radius`` (clipped,
    merged within a row), as ``(y, x0, x1)`` in raster order into ``out`` as far as it
    goes; returns how many there are. (Growing ``out`` in the loop, an array variable
    assigned again, made the loop ~4× slower.)"""
    ny, nx = image.shape
    nb = 0
    for y in range(ny):
        row = image[y]
        x = 0
        while x < nx:
            if not row[x] > threshold:
                x += 1
                continue
            start = x
            while x < nx and row[x] > threshold:
                x += 1
            a, b = max(start - radius, 0), min(x + radius, nx)
            if nb and nb <= out.shape[0] and out[nb - 1, 0] == y and a <= out[nb - 1, 2]:
                out[nb - 1, 2] = b
                continue
            if nb < out.shape[0]:
                out[nb, 0], out[nb, 1], out[nb, 2] = y, a, b
            nb += 1
    return nb


@numba.njit(cache=True, nogil=True)
def _active_runs(image: NDArray[np.float32], threshold: float, radius: int) -> NDArray[np.int64]:
    """The active pixels of :func:`_bf_solve` as runs ``(y, x0, x1)`` along rows, in
    raster order: the pixels within ``radius`` (a square) of one above ``threshold``.
    Each row's bright runs, widened by ``radius`` along x, are merged over the ``2 radius
    + 1`` rows around each row: a few intervals a row, no pass over the pixels but the
    one that finds the bright runs."""
    ny = image.shape[0]
    bright = np.empty((64, 3), np.int64)
    nb = _bright_runs(image, threshold, radius, bright)
    if nb > bright.shape[0]:
        bright = np.empty((nb, 3), np.int64)  # enough: no more than counted
        nb = _bright_runs(image, threshold, radius, bright)
    # at most as many runs in a row as bright runs within radius of it
    runs = np.empty((nb * min(2 * radius + 1, ny), 3), np.int64)
    nr = 0
    lo = hi = 0
    xa = np.empty(nb, np.int64)
    xb = np.empty(nb, np.int64)
    for y in range(ny):
        while hi < nb and bright[hi, 0] <= y + radius:
            hi += 1
        while lo < hi and bright[lo, 0] < y - radius:
            lo += 1
        m = 0
        for k in range(lo, hi):  # insertion by x0
            a, b = bright[k, 1], bright[k, 2]
            q = m
            while q > 0 and xa[q - 1] > a:
                xa[q], xb[q] = xa[q - 1], xb[q - 1]
                q -= 1
            xa[q], xb[q] = a, b
            m += 1
        q = 0
        while q < m:
            a, b = xa[q], xb[q]
            q += 1
            while q < m and xa[q] <= b:
                b = max(b, xb[q])
                q += 1
            runs[nr, 0], runs[nr, 1], runs[nr, 2] = y, a, b
            nr += 1
    return runs[:nr]


@numba.njit(cache=True, nogil=True)
def _bf_divergence(
    cur: NDArray[np.float64],
    phi: NDArray[np.float32],
    i: int,
    j: int,
    w: int,
    x: int,
    y: int,
    nx: int,
    ny: int,
) -> float:
    """``½ ∇·(I ∇φ)`` (doubled) at one pixel, no flux through the image's edges: ``i``
    its flat index in ``phi``, ``j`` in ``cur``, ``w`` their row length."""
    i0, p0 = cur[j], float(phi[i])
    d = 0.0
    if x + 1 < nx:
        d += 0.5 * (cur[j + 1] + i0) * (phi[i + 1] - p0)
    if x > 0:
        d -= 0.5 * (cur[j - 1] + i0) * (p0 - phi[i - 1])
    if y + 1 < ny:
        d += 0.5 * (cur[j + w] + i0) * (phi[i + w] - p0)
    if y > 0:
        d -= 0.5 * (cur[j - w] + i0) * (p0 - phi[i - w])
    return d


@numba.njit(cache=True, nogil=True)
def _bf_solve(
    image: NDArray[np.float32],
    kernel: NDArray[np.float64],
    threshold: float,
    radius: int,
    n_iter: int,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """:func:`bf_correct` of the pixels within ``radius`` of a pixel above ``threshold``
    (the active pixels), which it returns as runs ``(y, x0, x1)`` along rows
    (:func:`_active_runs`) and their corrected values, run after run (float64).

    The current image (the iterate at active pixels, elsewhere the observed value,
    non-finite as 0) is a float64 copy of the rectangle the active pixels reach (± 1, ±
    the kernel's half-size), zeros outside the image, in one flat array. ``φ = K ∗ I`` is
    computed in float32 (from a float32 copy) on every pixel of the active pixels'
    rectangle ± 1, in the order (ky, kx), three taps per pass over the flat array at fixed
    offsets: the zeros stand for the taps
    outside the image (a tap on them adds ±0, which changes no sum), and the pixels whose
    taps would wrap around a row are padding columns, never read. Long loops: an earlier
    version summed each tap over the short runs of needed pixels along rows, which LLVM
    ran mostly in scalar remainders (50 µs an iteration for a star's box, against ~14).
    ``ΔI`` is then evaluated along the runs, in loops without branches but on the image's
    edges (the same sums in the same order as :func:`_bf_divergence`, pixel by pixel).
    Meant for the boxes of :func:`bright_boxes`.
    """
    ny, nx = image.shape
    kh = kernel.shape[0] // 2
    runs = _active_runs(image, threshold, radius)
    nr = runs.shape[0]
    if nr == 0:
        return runs, np.zeros(0)
    # phi on image rows [y_lo, y_hi) and columns [x_lo, x_hi) (the active pixels ± 1);
    # the copy holds rows [y_lo - kh, y_hi + kh) and columns [x_lo - kh, x_hi + kh),
    # zeros outside the image
    x_lo, x_hi = nx, 0
    n_a = 0
    for r in range(nr):
        x_lo, x_hi = min(x_lo, runs[r, 1]), max(x_hi, runs[r, 2])
        n_a += runs[r, 2] - runs[r, 1]
    x_lo, x_hi = max(x_lo - 1, 0), min(x_hi + 1, nx)
    y_lo, y_hi = max(runs[0, 0] - 1, 0), min(runs[nr - 1, 0] + 2, ny)
    w = x_hi - x_lo + 2 * kh
    n_phi = (y_hi - y_lo) * w
    cur = np.zeros((y_hi - y_lo + 2 * kh) * w)
    for y in range(max(y_lo - kh, 0), min(y_hi + kh, ny)):
        row = (y - y_lo + kh) * w + kh - x_lo
        for x in range(max(x_lo - kh, 0), min(x_hi + kh, nx)):
            v = float(image[y, x])
            cur[row + x] = v if math.isfinite(v) else 0.0
    obs = cur.copy()  # the observed image (non-finite as 0)
    nxt = np.empty_like(cur)
    down = kh * w  # a pixel's index in cur is its index in phi plus kh rows
    # phi in float32, from a float32 copy of cur: twice the lanes a pass (4.4 -> 3.4 ms
    # for the 147 boxes of a 150-star detector, whose values moved ≤ 0.035 e⁻)
    phi = np.empty(n_phi, np.float32)
    cur32 = cur.astype(np.float32)
    k32 = kernel.astype(np.float32)
    one = np.uint64(1)
    uw = np.uint64(w)
    for _ in range(n_iter):
        phi[:] = np.float32(0.0)
        for ky in range(-kh, kh + 1):
            # phi[i] += c cur[i + off], i in [kh, n_phi - kh): every image pixel; three
            # taps a pass where there are three left (in the same order: the same sums)
            row = k32[ky + kh]
            kx = -kh
            while kx + 2 <= kh:
                c = kx + kh
                _add_taps3(phi, cur32, row[c], row[c + 1], row[c + 2], (kh - ky) * w - kx, kh)
                kx += 3
            while kx <= kh:
                _add_tap(phi, cur32, row[kx + kh], (kh - ky) * w - kx, kh)
                kx += 1
        for r in range(nr):
            y, a, b = runs[r, 0], runs[r, 1], runs[r, 2]
            base = (y - y_lo) * w + kh - x_lo  # + x: the index in phi
            # the pixels on the image's edges one by one; the others in a loop without
            # branches (the same sums in the same order)
            lo = a if y == 0 or y == ny - 1 else a + (a == 0)
            hi = lo if y == 0 or y == ny - 1 else b - (b == nx)
            hi = max(hi, lo)
            for x in range(a, lo):
                i = base + x
                d = _bf_divergence(cur, phi, i, i + down, w, x, y, nx, ny)
                nxt[i + down] = obs[i + down] - 0.5 * d
            for x in range(lo, hi):
                i = np.uint64(base + x)
                j = i + np.uint64(down)
                i0, p0 = cur[j], float(phi[i])
                d = 0.0
                d += 0.5 * (cur[j + one] + i0) * (phi[i + one] - p0)
                d -= 0.5 * (cur[j - one] + i0) * (p0 - phi[i - one])
                d += 0.5 * (cur[j + uw] + i0) * (phi[i + uw] - p0)
                d -= 0.5 * (cur[j - uw] + i0) * (p0 - phi[i - uw])
                nxt[j] = obs[j] - 0.5 * d
            for x in range(hi, b):
                i = base + x
                d = _bf_divergence(cur, phi, i, i + down, w, x, y, nx, ny)
                nxt[i + down] = obs[i + down] - 0.5 * d
        for r in range(nr):
            j0 = (runs[r, 0] - y_lo) * w + kh - x_lo + down
            for x in range(runs[r, 1], runs[r, 2]):
                cur[j0 + x] = nxt[j0 + x]
                cur32[j0 + x] = np.float32(nxt[j0 + x])
    vals = np.empty(n_a)
    p = 0
    for r in range(nr):
        j0 = (runs[r, 0] - y_lo) * w + kh - x_lo + down
        for x in range(runs[r, 1], runs[r, 2]):
            vals[p] = cur[j0 + x]
            p += 1
    return runs, vals


@numba.njit(cache=True, nogil=True)
def _bf_sparse(
    image: NDArray[np.float32],
    filled: NDArray[np.float32],
    kernel: NDArray[np.float64],
    threshold: float,
    radius: int,
    n_iter: int,
) -> None:
    """:func:`_bf_solve` of ``filled`` (``image`` with its defects filled in, see
    :func:`fill_defects`; or ``image`` itself) applied to ``image`` in place
    (:func:`_unfill`): only the active pixels change."""
    runs, vals = _bf_solve(filled, kernel, threshold, radius, n_iter)
    _unfill(image, filled, runs, vals)
    p = 0
    for r in range(runs.shape[0]):
        y = runs[r, 0]
        for x in range(runs[r, 1], runs[r, 2]):
            image[y, x] = vals[p]
            p += 1


@numba.njit(cache=True, nogil=True)
def _unfill(
    pre: NDArray[np.float32],
    filled: NDArray[np.float32],
    runs: NDArray[np.int64],
    vals: NDArray[np.float64],
) -> None:
    """BF's results ``vals`` (of :func:`_bf_solve` on ``filled``, at its active ``runs``)
    as values of ``pre``: where ``filled`` holds ``pre``'s value (bit for bit) the result
    itself, where it held a filled-in value the pixel's own value plus the correction
    (LSST's ``image += BF(interpolated) − interpolated``)."""
    p = 0
    for r in range(runs.shape[0]):
        y = runs[r, 0]
        for x in range(runs[r, 1], runs[r, 2]):
            if _float_bits(pre[y, x]) != _float_bits(filled[y, x]):
                vals[p] = float(pre[y, x]) + (vals[p] - float(filled[y, x]))
            p += 1


@numba.njit(cache=True, nogil=True, inline="always")
def _value_before_flat(
    img: NDArray[np.float32],
    flat: NDArray[np.float32],
    redo: NDArray[np.float32],
    y: int,
    x: int,
) -> tuple[np.float32, bool]:
    """A pixel's value before the flat: the image itself without a flat (``flat`` has no
    rows), the image times a usable flat (as :func:`unflat`), else ``redo``'s value (the
    chain without the flat) when it has rows; ``False`` when it is lost."""
    if flat.shape[0] == 0:
        return img[y, x], True
    f = flat[y, x]
    if f > np.float32(FLAT_MIN) and f < np.float32(FLAT_MAX):
        return img[y, x] * f, True
    if redo.shape[0] > 0:
        return redo[y, x], True
    return np.float32(0.0), False


@numba.njit(cache=True, nogil=True)
def fill_defects(
    pre: NDArray[np.float32],
    member: NDArray[np.bool_],
    wx0: int,
    x0: int,
    img: NDArray[np.float32],
    flat: NDArray[np.float32],
    redo: NDArray[np.float32],
    max_width: int,
) -> tuple[NDArray[np.float32], bool]:
    """A box's values before the flat, ``pre`` (columns from ``x0``), as brighter-fatter
    sees them: its pixels in runs of defect pixels interpolated along rows as the final
    interpolation does (runs of at most ``max_width`` pixels with a pixel on both sides;
    ``left + t (right − left)``), from the values before the flat of the pixels either
    side (:func:`_value_before_flat` of the box's rows ``img``, ``flat`` and ``redo``,
    full width). ``member`` says which pixels of the box's rows are defects, in columns
    from ``wx0``; it must reach ``max_width + 1`` columns beyond the box on either side
    (or the image's edge): a run that reaches its end is too long, or on the edge.
    Returns the filled copy and whether every needed value was known (``False``: a pixel
    either side of a run has a flat that is not usable and ``redo`` has no rows)."""
    h, w = pre.shape
    ww = member.shape[1]
    out = pre.copy()
    for r in range(h):
        x = x0
        while x < x0 + w:
            if not member[r, x - wx0]:
                x += 1
                continue
            start, stop = x, x + 1
            while start > wx0 and member[r, start - 1 - wx0]:
                start -= 1
            while stop < wx0 + ww and member[r, stop - wx0]:
                stop += 1
            x = stop
            if start == wx0 or stop == wx0 + ww or stop - start > max_width:
                continue  # on the image's edge, or too long: left as it is
            left, ok_left = _value_before_flat(img, flat, redo, r, start - 1)
            right, ok_right = _value_before_flat(img, flat, redo, r, stop)
            if not (ok_left and ok_right):
                return out, False
            m = stop - start + 1
            for k in range(max(start, x0), min(stop, x0 + w)):
                t = (k - start + 1) / m
                out[r, k - x0] = left + t * (right - left)
    return out, True


@numba.njit(cache=True, nogil=True)
def defect_members(
    msk: NDArray[np.int32],
    bad_bit: int,
    boxes: NDArray[np.int64],
    y0: int,
    y1: int,
    wx0: int,
    wx1: int,
) -> tuple[NDArray[np.bool_], bool]:
    """Which pixels of rows ``[y0, y1)``, columns ``[wx0, wx1)`` are defects: those of
    ``boxes`` ``(x0, y0, width, height)`` (rows as ``msk``'s) when it has rows, else
    those with ``bad_bit`` in ``msk``; and whether there is any."""
    out = np.zeros((y1 - y0, wx1 - wx0), np.bool_)
    found = False
    if boxes.shape[0] > 0:
        for b in range(boxes.shape[0]):
            ya, yb = max(boxes[b, 1], y0), min(boxes[b, 1] + boxes[b, 3], y1)
            xa, xb = max(boxes[b, 0], wx0), min(boxes[b, 0] + boxes[b, 2], wx1)
            if ya < yb and xa < xb:
                out[ya - y0 : yb - y0, xa - wx0 : xb - wx0] = True
                found = True
        return out, found
    for y in range(y0, y1):
        for x in range(wx0, wx1):
            if msk[y, x] & bad_bit:
                out[y - y0, x - wx0] = True
                found = True
    return out, found


def fill_width(
    boxes: NDArray[np.int64] | None,
    msk: NDArray[np.int32] | None,
    bad_bit: int,
    max_width: int,
) -> int:
    """How long a filled run of defects (:func:`fill_defects`) can be: at most
    ``max_width``, and no longer than the defects allow: the widest run of ``boxes``'
    columns merged (as if every box covered every row), or the longest run of
    ``bad_bit`` pixels along the rows of ``msk`` that is filled (not longer than
    ``max_width``). 0 without defects. BF's boxes reach that much further
    (:func:`bf_margin`): a filled pixel may be bright where its own value was not."""
    if max_width <= 0:
        return 0
    if boxes is not None and len(boxes):
        spans = sorted((int(b[0]), int(b[0] + b[2])) for b in boxes)
        longest, (lo, hi) = 0, spans[0]
        for a, b in spans[1:]:
            if a <= hi:
                hi = max(hi, b)
            else:
                longest, (lo, hi) = max(longest, hi - lo), (a, b)
        return min(max(longest, hi - lo), max_width)
    if msk is not None:
        return _longest_run(msk, np.int32(bad_bit), int(max_width))
    return 0


@numba.njit(cache=True, nogil=True)
def _longest_run(msk: NDArray[np.int32], bit: np.int32, max_width: int) -> int:
    """The longest run of ``bit`` pixels along the rows of ``msk`` of at most
    ``max_width`` (longer runs are not filled)."""
    longest = 0
    for y in range(msk.shape[0]):
        run = 0
        for x in range(msk.shape[1] + 1):
            if x < msk.shape[1] and msk[y, x] & bit:
                run += 1
                continue
            if run <= max_width:
                longest = max(longest, run)
            run = 0
    return longest


def bf_correct(
    image: NDArray[np.float32],
    kernel: NDArray[np.float64],
    *,
    threshold: float,
    radius: int,
    n_iter: int,
    mask: NDArray[np.int32] | None = None,
    bad_bit: int = 0,
    max_width: int = 0,
) -> NDArray[np.float32]:
    """Undo the brighter-fatter effect: ``I ← I_obs − ΔI(I)``, ``ΔI = ½ ∇·(I ∇(K ∗ I))``,
    iterated ``n_iter`` times (no flux through the edges).

    ``ΔI`` scales as I², so it is evaluated only within ``radius`` px of pixels brighter
    than ``threshold`` (e⁻), and only those pixels (and the ones they read) are visited;
    the active set is a function of the neighbourhood only, so a block with halo
    ``n_iter × (kernel half-size + 1) + radius`` matches the whole image. With ``mask``,
    the runs of ``bad_bit`` pixels (defects) of up to ``max_width`` along rows are
    interpolated for the correction (:func:`fill_defects`), which their own values then
    get added; the block must then also reach ``max_width + 1`` px further along x.
    """
    out = np.array(image, dtype=F32, copy=True)
    bf_correct_inplace(
        out,
        kernel,
        threshold=threshold,
        radius=radius,
        n_iter=n_iter,
        mask=mask,
        bad_bit=bad_bit,
        max_width=max_width,
    )
    return out


def fringe_normal_equations(
    image: NDArray[np.float32],
    var: NDArray[np.float32],
    mask: NDArray[np.int32],
    fringe: NDArray[np.float32],
    y0: int,
    x0: int,
    shape: tuple[int, int],
    sky: float,
    n_sigma: float,
    bad_bits: int,
) -> NDArray[np.float64]:
    """Normal equations (``4 × 5``: matrix | vector) of ``I = c0 + c1 x + c2 y + A F``.

    Pixels flagged in ``bad_bits``, non-finite, or brighter than ``sky + n_sigma √var``
    (sources) are left out. Coordinates are scaled to [-1, 1] over the full ``shape``.
    """
    ny, nx = image.shape
    yy = (np.arange(y0, y0 + ny, dtype=F64)[:, None] / max(shape[0] - 1, 1)) * 2 - 1
    xx = (np.arange(x0, x0 + nx, dtype=F64)[None, :] / max(shape[1] - 1, 1)) * 2 - 1
    img = np.asarray(image, dtype=F64)
    good = (
        ((mask & bad_bits) == 0)
        & np.isfinite(img)
        & np.isfinite(fringe)
        & (img < sky + n_sigma * np.sqrt(np.maximum(var, 0)))
    )
    cols = [
        np.ones_like(img),
        np.broadcast_to(xx, img.shape),
        np.broadcast_to(yy, img.shape),
        np.asarray(fringe, dtype=F64),
    ]
    design = np.stack([c[good] for c in cols], axis=1)
    out = np.zeros((4, 5))
    out[:, :4] = design.T @ design
    out[:, 4] = design.T @ img[good]
    return out


def clipped_combine(
    stack: NDArray[np.float32], var: NDArray[np.float32], n_sigma: float
) -> NDArray[np.float32]:
    """Mean over axis 0 after rejecting values more than ``n_sigma`` σ from a robust reference.

    The reference is the median for three or more frames and the minimum for two (a
    cosmic ray then only ever raises one value); σ is each value's own noise
    (``√var``), so rejection works with as few as two frames. Pixels where everything is
    rejected fall back to the reference; a NaN input makes the reference NaN.
    """
    data = np.ascontiguousarray(stack)
    v = np.ascontiguousarray(var)
    out = np.empty(data.shape[1:], F32)
    _clipped_combine(data, v, float(n_sigma), out)
    return out


@numba.njit(cache=True, nogil=True)
def _clipped_combine(
    stack: NDArray[np.float32], var: NDArray[np.float32], n_sigma: float, out: NDArray[np.float32]
) -> None:
    # One pixel at a time: its n values sorted in a small buffer (insertion sort), the
    # median (mean of the middle two for even n) or minimum, then the clipped mean. The
    # numpy version (median along axis 0, float64 temporaries) ran ~10x slower.
    n, ny, nx = stack.shape
    buf = np.empty(n, np.float64)
    for y in range(ny):
        for x in range(nx):
            has_nan = False
            for k in range(n):
                d = np.float64(stack[k, y, x])
                if d != d:
                    has_nan = True
                j = k
                while j > 0 and buf[j - 1] > d:
                    buf[j] = buf[j - 1]
                    j -= 1
                buf[j] = d
            if has_nan:
                ref = np.nan
            elif n >= 3:
                ref = buf[n // 2] if n % 2 else 0.5 * (buf[n // 2 - 1] + buf[n // 2])
            else:
                ref = buf[0]
            total = 0.0
            count = 0
            for k in range(n):
                d = np.float64(stack[k, y, x])
                sig = np.sqrt(max(np.float64(var[k, y, x]), 1e-12))
                if abs(d - ref) <= n_sigma * sig:
                    total += d
                    count += 1
            out[y, x] = total / count if count > 0 else ref


def isr_local(
    block: NDArray[np.float32],
    flat: NDArray[np.float32] | None,
    top: int,
    bottom: int,
    *,
    bf_kernel: NDArray[np.float64] | None,
    bf_threshold: float,
    bf_radius: int,
    bf_n_iter: int,
    bits: NDArray[np.int32],
    grow: int,
    interp_bits: int,
    interp_max_width: int,
) -> NDArray[np.float32]:
    """The neighbourhood steps of the ISR on one stacked block of full rows with a y-halo.

    ``block`` is ``(3, top + rows + bottom, nx)`` (image, variance, mask bits as float32)
    with ``top``/``bottom`` halo rows; ``flat`` is ``(rows, nx)`` or ``None``. In order:
    brighter-fatter on the image (``bf_kernel`` not ``None``; the BAD pixels, defects,
    filled in for it as in :func:`bf_correct`, runs of up to ``interp_max_width``), trim,
    flat (≤ 0 or non-finite → ``bits[2]`` BAD, 0, ∞ variance), SAT (``bits[0]``) grown
    by ``grow`` px (from the untrimmed mask), interpolation along rows of runs of
    ``interp_bits``
    (``interp_max_width``; 0 skips; INTRP is ``bits[3]``). Rows are whole, so the
    interpolation needs no x halo; the y halo must be ≥ ``grow`` and, with BF,
    ≥ ``n_iter (half-size + 1) + radius``.

    Returns
    -------
    numpy.ndarray
        ``(3, rows, nx)`` float32 in the same layout (``block`` is not modified).
    """
    work = np.array(block, dtype=np.float32, copy=True)
    return isr_local_inplace(
        work,
        flat,
        top,
        bottom,
        bf_kernel=bf_kernel,
        bf_threshold=bf_threshold,
        bf_radius=bf_radius,
        bf_n_iter=bf_n_iter,
        bits=bits,
        grow=grow,
        interp_bits=interp_bits,
        interp_max_width=interp_max_width,
    )


def isr_local_inplace(
    work: NDArray[np.float32],
    flat: NDArray[np.float32] | None,
    top: int,
    bottom: int,
    *,
    bf_kernel: NDArray[np.float64] | None,
    bf_threshold: float,
    bf_radius: int,
    bf_n_iter: int,
    bits: NDArray[np.int32],
    grow: int,
    interp_bits: int,
    interp_max_width: int,
) -> NDArray[np.float32]:
    """:func:`isr_local` in place on ``work`` (C-contiguous planes); returns its core rows.

    The returned ``(3, rows, nx)`` array is a view of ``work`` (no copy): one allocation
    per block for the whole ISR.
    """
    n = work.shape[1]
    rows = n - top - bottom
    msk = work[2].view(np.int32)
    if bf_kernel is not None:
        # the defects (BAD before the flat) filled in for the correction
        bf_correct_inplace(
            work[0],
            bf_kernel,
            threshold=bf_threshold,
            radius=bf_radius,
            n_iter=bf_n_iter,
            mask=msk,
            bad_bit=int(bits[2]),
            max_width=int(interp_max_width),
        )
    row_bits = row_bits_of(msk)
    core = slice(top, top + rows)
    if flat is not None:
        divide_flat_rows(
            work[0, core],
            work[1, core],
            msk[core],
            np.asarray(flat, np.float32),
            int(bits[2]),
            row_bits[core],
        )
    finish_rows(
        work[0],
        work[1],
        msk,
        row_bits,
        top,
        rows,
        int(bits[0]),
        int(grow),
        int(interp_bits) if interp_max_width > 0 else 0,
        int(bits[3]),
        int(interp_max_width),
        np.zeros((0, 4), np.int64),
    )
    return work[:, top : top + rows]


def bf_correct_inplace(
    image: NDArray[np.float32],
    kernel: NDArray[np.floating],
    *,
    threshold: float,
    radius: int,
    n_iter: int,
    row_bright: NDArray[np.bool_] | NDArray[np.int64] | None = None,
    columns: tuple[NDArray[np.int64], int] | None = None,
    mask: NDArray[np.int32] | None = None,
    bad_bit: int = 0,
    max_width: int = 0,
    defects: NDArray[np.int64] | None = None,
) -> None:
    """:func:`bf_correct` in place, on boxes around bright pixels only.

    ``row_bright``, when given, says which rows may have a pixel above ``threshold``
    (a superset is fine; with ``columns``, where: see :func:`bright_boxes`); otherwise one
    scan finds them. Each band of rows (bright rows ± ``radius + kernel half-size + 2``,
    merged where they touch) is cut the same way along
    x, and each box is corrected on its own: the correction of a pixel depends only on
    pixels within ``radius + half-size + 1`` of a bright one, so the result is the whole
    image's, bit for bit. A block without bright pixels costs one scan, or nothing.

    Defects (``mask``'s ``bad_bit`` pixels, or the boxes ``defects`` ``(x0, y0, width,
    height)`` in the image's rows when given) are filled in for the correction
    (:func:`fill_defects`, runs of up to ``max_width``), and the boxes reach as much
    further as a filled run can be long (:func:`fill_width`).
    """
    k = np.asarray(kernel, dtype=F64)
    if row_bright is None:
        row_bright = _rows_above(image, float(threshold))
    no_boxes = np.zeros((0, 4), np.int64)
    defects = no_boxes if defects is None else np.asarray(defects, np.int64)
    if mask is None and not len(defects):
        max_width = 0
    fill = fill_width(defects if len(defects) else None, mask, bad_bit, max_width)
    margin = bf_margin(k, radius, fill)
    boxes = bright_boxes(image, row_bright, threshold, margin, columns=columns)
    nx = image.shape[1]
    empty = np.zeros((0, 0), F32)
    msk = np.zeros((0, 0), np.int32) if mask is None else mask
    for y0, y1, x0, x1 in boxes:
        box = image[y0:y1, x0:x1]
        filled = box
        if fill:
            wx0, wx1 = max(x0 - max_width - 1, 0), min(x1 + max_width + 1, nx)
            member, found = defect_members(msk, int(bad_bit), defects, y0, y1, wx0, wx1)
            if found:
                filled, _ = fill_defects(
                    np.ascontiguousarray(box), member, wx0, x0, image[y0:y1], empty, empty,
                    int(max_width),
                )  # fmt: skip
        _bf_sparse(box, filled, k, float(threshold), int(radius), int(n_iter))


def bf_margin(kernel: NDArray[np.floating], radius: int, fill: int = 0) -> int:
    """How far beyond a bright pixel a box for :func:`bf_correct_inplace` must reach
    (``fill``: the longest run of defects filled in, :func:`fill_width`)."""
    return int(radius) + np.asarray(kernel).shape[0] // 2 + 2 + max(int(fill) - 1, 0)


def bright_boxes(
    image: NDArray[np.float32],
    row_bright: NDArray[np.bool_] | NDArray[np.int64],
    threshold: float,
    margin: int,
    flat: NDArray[np.float32] | None = None,
    columns: tuple[NDArray[np.int64], int] | None = None,
) -> list[tuple[int, int, int, int]]:
    """Boxes ``(y0, y1, x0, x1)`` around the pixels above ``threshold``, ± ``margin``.

    Bands of rows around the rows flagged in ``row_bright`` (a superset is fine), each
    cut into boxes by :func:`_band_boxes`. With ``columns`` ``(x0s, width)``, bit ``s``
    of ``row_bright[y]`` says that the row's bright pixels may lie in columns
    ``[x0s[s], x0s[s] + width)`` (as :func:`isr_fused` flags amplifiers), and only those
    are looked at; without, any non-zero value flags the whole row. With ``flat``,
    ``image`` has been divided by it and the test is on ``image × flat`` (a hair below the
    threshold for the rounding; a pixel whose flat is not usable counts as bright).
    """
    no_flat = np.zeros((0, 0), F32)
    rows = np.asarray(row_bright).astype(np.int64, copy=False)
    x0s, width = (np.zeros(0, np.int64), 0) if columns is None else columns
    out = []
    for lo, hi in row_bands(rows, margin):
        f = no_flat if flat is None else flat[lo:hi]
        boxes = _band_boxes(
            image[lo:hi], f, rows[lo:hi], np.asarray(x0s, np.int64), int(width),
            float(threshold), int(margin),
        )  # fmt: skip
        out += [(lo + int(b[0]), lo + int(b[1]), int(b[2]), int(b[3])) for b in boxes]
    return out


@numba.njit(cache=True, nogil=True)
def _band_boxes(
    image: NDArray[np.float32],
    flat: NDArray[np.float32],
    rows: NDArray[np.int64],
    x0s: NDArray[np.int64],
    width: int,
    threshold: float,
    margin: int,
) -> NDArray[np.int64]:
    """The boxes ``(y0, y1, x0, x1)`` of one band of rows: its columns with a bright pixel
    ± ``margin``, merged; in each such range of columns, its rows with one ± ``margin``;
    in each of those, its columns again. Bright pixels of different boxes are more than
    ``2 margin + 1`` apart along x or y, and each box holds its bright pixels ± ``margin``
    (clipped to the band). A band is often a chain of stars at different columns whose
    rows overlap: its boxes as high as the band (as before the cut along y) were ~3× the
    area BF had to visit. The pixels are read once (:func:`_band_runs`); the cuts are made
    on the runs of bright pixels (a box's rows 4096 pixels apart share cache sets: reading
    them again for each cut missed the cache)."""
    runs = _band_runs(image, flat, rows, x0s, width, threshold)
    ny, nx = image.shape
    columns = np.zeros(nx, np.bool_)
    for _, a, b in runs:
        columns[a:b] = True
    out = []
    in_rows = np.zeros(ny, np.bool_)
    for xb in _bands(columns, margin):
        x0, x1 = xb[0], xb[1]
        in_rows[:] = False
        for y, a, b in runs:
            if a < x1 and b > x0:
                in_rows[y] = True
        for yb in _bands(in_rows, margin):
            y0, y1 = yb[0], yb[1]
            cols = np.zeros(x1 - x0, np.bool_)
            for y, a, b in runs:
                if y0 <= y < y1 and a < x1 and b > x0:
                    cols[max(a, x0) - x0 : min(b, x1) - x0] = True
            for ub in _bands(cols, margin):
                out.append((y0, y1, x0 + ub[0], x0 + ub[1]))
    boxes = np.empty((len(out), 4), np.int64)
    for k in range(len(out)):
        boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3] = out[k]
    return boxes


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _band_runs(
    image: NDArray[np.float32],
    flat: NDArray[np.float32],
    rows: NDArray[np.int64],
    x0s: NDArray[np.int64],
    width: int,
    threshold: float,
) -> list[tuple[int, int, int]]:
    """The runs ``(y, x0, x1)`` along rows of the pixels above ``threshold`` in the rows
    flagged in ``rows``: in the columns ``[x0s[s], x0s[s] + width)`` of the bits ``s``
    set, or every column of a non-zero row when ``x0s`` is empty. With a non-empty
    ``flat``, ``image`` has been divided by it: the test is on ``image × flat`` against
    the threshold less 1e-6 of it, and a pixel whose flat is not usable counts."""
    ny, nx = image.shape
    with_flat = flat.shape[0] > 0
    if with_flat:
        thr = np.float32(threshold * (1 - 1e-6)) if threshold > 0 else np.float32(-np.inf)
    else:
        thr = np.float32(threshold)
    flat_min, flat_max = np.float32(FLAT_MIN), np.float32(FLAT_MAX)
    hit = np.empty(nx, np.bool_)
    n_seg = max(x0s.size, 1)
    out = [(0, 0, 0)][:0]
    for y in range(ny):
        flags = rows[y]
        if flags == 0:
            continue
        for s in range(n_seg):
            if x0s.size == 0:
                a, b = 0, nx
            elif (flags >> s) & 1:
                a, b = max(x0s[s], 0), min(x0s[s] + width, nx)
            else:
                continue
            # the test without a branch, then the runs
            i_r, h_r = image[y, a:b], hit[: b - a]
            if with_flat:
                f_r = flat[y, a:b]
                for x in range(b - a):
                    f = f_r[x]
                    h_r[x] = (i_r[x] * f > thr) | ~((f > flat_min) & (f < flat_max))
            else:
                for x in range(b - a):
                    h_r[x] = i_r[x] > thr
            x, hi = 0, b - a
            while x < hi:
                if not h_r[x]:
                    if x + 32 <= hi:  # 32 pixels at a time where there is none
                        any_hit = False
                        for q in range(x, x + 32):
                            any_hit |= h_r[q]
                        if not any_hit:
                            x += 32
                            continue
                    x += 1
                    continue
                start = x
                while x < hi and h_r[x]:
                    x += 1
                out.append((y, a + start, a + x))
    return out


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def unflat(image: NDArray[np.float32], flat: NDArray[np.float32], out: NDArray[np.float32]) -> bool:
    """``out = image × flat`` (the image before the flat, to the rounding); 0 where the
    flat is not usable, and returns whether there is such a pixel (its value before the
    flat cannot be recovered)."""
    flat_min, flat_max = np.float32(FLAT_MIN), np.float32(FLAT_MAX)
    lost = False
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            f = flat[y, x]
            ok = (f > flat_min) & (f < flat_max)
            out[y, x] = image[y, x] * f if ok else np.float32(0.0)
            lost |= not ok
    return lost


@numba.njit(cache=True, nogil=True)
def bf_band(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    msk: NDArray[np.int32],
    flat: NDArray[np.float32],
    rows: NDArray[np.int64],
    x0s: NDArray[np.int64],
    width: int,
    threshold: float,
    margin: int,
    kernel: NDArray[np.float64],
    radius: int,
    n_iter: int,
    c0: int,
    c1: int,
    nan_bit: int,
    defects: NDArray[np.int64],
    max_width: int,
) -> NDArray[np.int64]:
    """Brighter-fatter on one band of rows of a flat-fielded block, in place.

    ``img``, ``var``, ``msk`` and ``flat`` are the band's rows (a band of
    :func:`row_bands` around the rows flagged in ``rows``, where ``x0s`` and ``width``
    say as in :func:`bright_boxes`, with ``margin`` = :func:`bf_margin`). The band is cut
    into boxes (:func:`_band_boxes`); in each, the image before the flat (:func:`unflat`)
    is corrected and the pixels it changes in rows ``[c0, c1)`` divided again
    (:func:`bf_box_reflat`). Boxes with a pixel whose
    flat is not usable are left: their ``(y0, y1, x0, x1)`` (in the band) are returned,
    for the caller to recompute those pixels' values before the flat and call
    :func:`bf_box_reflat`. One call per band: per box from Python, the calls and
    temporaries cost ~13 µs a box. ``defects`` ``(x0, y0, width, height)`` (rows as the
    band's) are filled in for the correction (:func:`fill_defects`, runs of up to
    ``max_width``, from the values before the flat either side); a box whose fill needs
    the value of a pixel whose flat is not usable is left too. ``margin`` must include
    :func:`fill_width`.
    """
    boxes = _band_boxes(img, flat, rows, x0s, width, threshold, margin)
    left = np.empty_like(boxes)
    k = 0
    nx = img.shape[1]
    no_redo = np.zeros((0, 0), np.float32)
    no_mask = np.zeros((0, 0), np.int32)
    for b in range(boxes.shape[0]):
        y0, y1, x0, x1 = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3]
        # the box's flat copied: its rows are in few cache sets in the band (see
        # _band_boxes), and it is read again when the changed pixels are divided
        f_box = flat[y0:y1, x0:x1].copy()
        pre = np.empty((y1 - y0, x1 - x0), np.float32)
        if unflat(img[y0:y1, x0:x1], f_box, pre):
            left[k] = boxes[b]
            k += 1
            continue
        filled = pre
        if defects.shape[0] > 0 and max_width > 0:
            wx0, wx1 = max(x0 - max_width - 1, 0), min(x1 + max_width + 1, nx)
            member, found = defect_members(no_mask, 0, defects, y0, y1, wx0, wx1)
            if found:
                filled, ok = fill_defects(
                    pre, member, wx0, x0, img[y0:y1], flat[y0:y1], no_redo, max_width
                )
                if not ok:
                    left[k] = boxes[b]
                    k += 1
                    continue
        bf_box_reflat(
            img, var, msk, f_box, pre, filled, y0, x0, c0, c1, kernel, threshold, radius,
            n_iter, nan_bit,
        )  # fmt: skip
    return left[:k]


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
def bf_box_reflat(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    msk: NDArray[np.int32],
    flat: NDArray[np.float32],
    pre: NDArray[np.float32],
    filled: NDArray[np.float32],
    y0: int,
    x0: int,
    c0: int,
    c1: int,
    kernel: NDArray[np.float64],
    threshold: float,
    radius: int,
    n_iter: int,
    nan_bit: int,
) -> None:
    """BF on ``pre`` (one box's values before the flat, from row ``y0`` and column ``x0``
    of the band; ``flat`` is the box's flat; the correction computed on ``filled``,
    ``pre`` with its defects filled in, or ``pre`` itself: :func:`_unfill`), then the
    pixels it changed in the band's rows ``[c0, c1)`` divided by the flat again into the
    band's ``img``, ``var`` and ``msk``: ``× reciprocal(flat)`` as in :func:`isr_fused`
    (non-finite → 0, ∞ variance, UNMASKEDNAN); a pixel whose flat is not usable stays as
    it is (BAD)."""
    runs, vals = _bf_solve(filled, kernel, threshold, radius, n_iter)
    _unfill(pre, filled, runs, vals)
    flat_min, flat_max = np.float32(FLAT_MIN), np.float32(FLAT_MAX)
    one, inf = np.float32(1.0), np.float32(np.inf)
    p = 0
    for r in range(runs.shape[0]):
        y, a, b = runs[r, 0], runs[r, 1], runs[r, 2]
        if c0 <= y0 + y < c1:
            # one run of pixels, as 1-d views; the image written without a branch, the
            # variance and mask only for a non-finite result (rare)
            v_r, p_r, f_r = vals[p : p + b - a], pre[y, a:b], flat[y, a:b]
            i_r = img[y0 + y, x0 + a : x0 + b]
            bad = False
            for x in range(b - a):
                v, f = np.float32(v_r[x]), f_r[x]
                use = (v != p_r[x]) & (f > flat_min) & (f < flat_max)
                e = v * reciprocal(f if use else one)
                fin = abs(e) < inf
                i_r[x] = (e if fin else np.float32(0.0)) if use else i_r[x]
                bad |= use & ~fin
            if bad:
                for x in range(b - a):
                    v, f = np.float32(v_r[x]), f_r[x]
                    if v != p_r[x] and f > flat_min and f < flat_max:
                        if not abs(v * reciprocal(f)) < inf:
                            var[y0 + y, x0 + a + x] = inf
                            msk[y0 + y, x0 + a + x] |= np.int32(nan_bit)
        p += b - a


def row_bands(rows: NDArray[np.bool_] | NDArray[np.int64], margin: int) -> list[tuple[int, int]]:
    """Half-open ranges covering every flagged (non-zero) row ± ``margin``, merged,
    clipped."""
    return [(int(a), int(b)) for a, b in _bands(np.asarray(rows).astype(np.bool_), int(margin))]


@numba.njit(cache=True, nogil=True)
def _bands(rows: NDArray[np.bool_], margin: int) -> NDArray[np.int64]:
    out = np.empty((rows.size, 2), np.int64)
    k = 0
    for y in range(rows.size):
        if rows[y]:
            lo, hi = max(y - margin, 0), min(y + margin + 1, rows.size)
            if k and lo <= out[k - 1, 1]:
                out[k - 1, 1] = hi
            else:
                out[k, 0] = lo
                out[k, 1] = hi
                k += 1
    return out[:k]


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _rows_above(image: NDArray[np.float32], threshold: float) -> NDArray[np.bool_]:
    ny, nx = image.shape
    out = np.empty(ny, np.bool_)
    thr = np.float32(threshold)
    for y in range(ny):
        row = image[y]
        peak = np.float32(-np.inf)
        for x in range(nx):
            peak = max(peak, row[x])
        out[y] = peak > thr or peak != peak
    return out


@numba.njit(cache=True, nogil=True)
def row_bits_of(mask: NDArray[np.int32]) -> NDArray[np.int32]:
    """The OR of each row's mask bits."""
    ny, nx = mask.shape
    out = np.empty(ny, np.int32)
    for y in range(ny):
        row = mask[y]
        acc = np.int32(0)
        for x in range(nx):
            acc |= row[x]
        out[y] = acc
    return out


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
def divide_flat_rows(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    msk: NDArray[np.int32],
    flat: NDArray[np.float32],
    bad_bit: int,
    row_bits: NDArray[np.int32],
) -> None:
    """Divide a block by its flat in place (flat outside ``(FLAT_MIN, FLAT_MAX)`` or not
    finite → BAD, 0, ∞ variance; :func:`reciprocal`),
    ORing BAD into ``row_bits`` where it is set. Branch-free, so that it vectorises."""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    inf = np.float32(np.inf)
    zero_i = np.int32(0)
    bad = np.int32(bad_bit)
    flat_min, flat_max = np.float32(FLAT_MIN), np.float32(FLAT_MAX)
    for r in range(img.shape[0]):
        f_r, i_r, v_r, m_r = flat[r], img[r], var[r], msk[r]
        acc = zero_i
        for j in range(img.shape[1]):
            f = f_r[j]
            ok = (f > flat_min) & (f < flat_max)
            inv = reciprocal(f if ok else one)
            i_r[j] = i_r[j] * inv if ok else zero
            v_r[j] = v_r[j] * (inv * inv) if ok else inf
            b = zero_i if ok else bad
            m_r[j] |= b
            acc |= b
        row_bits[r] |= acc


@numba.njit(cache=True, nogil=True)
def _sat_pixels(m_r: NDArray[np.int32], bit: int, y: int, out: NDArray[np.int64], k: int) -> int:
    """How many pixels of mask row ``m_r`` (row ``y``) have ``bit``; their ``(y, x)``
    written into ``out`` from row ``k`` when ``out`` has rows. 64 pixels at a time: a
    chunk whose OR lacks the bit is not walked."""
    nx = m_r.size
    found = 0
    for c in range((nx + 63) // 64):
        lo, hi = c * 64, min(c * 64 + 64, nx)
        acc = np.int32(0)
        for j in range(lo, hi):
            acc |= m_r[j]
        if (acc & bit) == 0:
            continue
        for j in range(lo, hi):
            if m_r[j] & bit:
                if out.shape[0]:
                    out[k + found, 0] = y
                    out[k + found, 1] = j
                found += 1
    return found


@numba.njit(cache=True, nogil=True, inline="always")
def _interp_runs(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    msk: NDArray[np.int32],
    y: int,
    x: int,
    hi: int,
    interp_bits: int,
    intrp_bit: int,
    max_width: int,
) -> int:
    """Interpolate row ``y`` over the runs of ``interp_bits`` pixels that start in
    ``[x, hi)`` (a run may go on beyond ``hi``), as :func:`interpolate_rows`; ``x`` must
    not be inside a run. Returns where the walk stopped (≥ ``hi``). Inlined, the planes
    indexed in 2-d: as a call on a view of the mask row, a defect's row took ~25 ns with
    the rows in cache, now ~16."""
    nx = msk.shape[1]
    while x < hi:
        if (msk[y, x] & interp_bits) == 0:
            x += 1
            continue
        start = x
        while x < nx and (msk[y, x] & interp_bits) != 0:
            x += 1
        stop = x  # run is [start, stop)
        if start == 0 or stop == nx or stop - start > max_width:
            continue
        left, right = img[y, start - 1], img[y, stop]
        vl, vr = var[y, start - 1], var[y, stop]
        m = stop - start + 1
        for k in range(start, stop):
            t = (k - start + 1) / m
            img[y, k] = left + t * (right - left)
            var[y, k] = 0.5 * (vl + vr)
            msk[y, k] |= intrp_bit
    return x


@numba.njit(cache=True, nogil=True)
def finish_rows(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    msk: NDArray[np.int32],
    row_bits: NDArray[np.int32],
    top: int,
    rows: int,
    sat_bit: int,
    grow: int,
    interp_bits: int,
    intrp_bit: int,
    max_width: int,
    boxes: NDArray[np.int64],
) -> None:
    """SAT growth and interpolation on rows ``[top, top + rows)`` of full-height planes, in
    place. SAT sources are read from the halo rows too (before any growth). ``row_bits``
    (the OR of each row's mask bits, updated here) says which rows to visit: a row without
    SAT or an interpolated plane costs nothing. ``boxes`` ``(x0, y0, width, height)`` (rows
    as in the planes) are masked rectangles, defects, that ``row_bits`` need not include:
    in a row not visited for its bits, only the runs through a box are interpolated (a bad
    column down the detector would otherwise have every row's mask read)."""
    n, nx = img.shape
    if grow > 0:
        # the SAT pixels first (growing as they are found would grow the grown ones),
        # counted then listed; in each row only the 64-pixel chunks whose OR has the bit
        # are walked (a walk of whole rows cost ~1 ms a detector with 150 bright stars)
        ylo, yhi = max(top - grow, 0), min(top + rows + grow, n)
        count = 0
        for y in range(ylo, yhi):
            if row_bits[y] & sat_bit:
                count += _sat_pixels(msk[y], sat_bit, y, np.empty((0, 2), np.int64), 0)
        where = np.empty((count, 2), np.int64)
        k = 0
        for y in range(ylo, yhi):
            if row_bits[y] & sat_bit:
                k += _sat_pixels(msk[y], sat_bit, y, where, k)
        ys, xs = where[:, 0], where[:, 1]
        for k in range(count):
            for yy in range(max(ys[k] - grow, top), min(ys[k] + grow + 1, top + rows)):
                row_bits[yy] |= sat_bit
                for xx in range(max(xs[k] - grow, 0), min(xs[k] + grow + 1, nx)):
                    msk[yy, xx] |= sat_bit
    if interp_bits == 0:
        return
    # Each row's 64-pixel chunks are ORed first (a loop LLVM vectorises), and only chunks
    # with an interpolated bit are walked pixel by pixel: a whole-row walk cost ~2 µs a
    # row, which a bad column in every row makes ~9 ms a detector.
    n_chunks = (nx + 63) // 64
    chunk_bits = np.empty(n_chunks, np.int32)
    for y in range(top, top + rows):
        if (row_bits[y] & interp_bits) == 0:
            continue
        m_r = msk[y]
        for c in range(nx // 64):
            acc = np.int32(0)
            base = c * 64
            for k in range(64):
                acc |= m_r[base + k]
            chunk_bits[c] = acc & interp_bits
        if nx % 64:
            chunk_bits[n_chunks - 1] = interp_bits  # the short last chunk: walked
        x = 0
        for c in range(n_chunks):
            hi = min(c * 64 + 64, nx)
            if chunk_bits[c] == 0 or hi <= x:
                continue
            x = _interp_runs(
                img, var, msk, y, max(x, c * 64), hi, interp_bits, intrp_bit, max_width
            )
    # the boxes' rows that were not visited: from the start of the run through each box's
    # first column to the end of its last (a run already done is done again, the same)
    for b in range(boxes.shape[0]):
        x0, x1 = max(boxes[b, 0], 0), min(boxes[b, 0] + boxes[b, 2], nx)
        y0, y1 = max(boxes[b, 1], top), min(boxes[b, 1] + boxes[b, 3], top + rows)
        if x0 >= x1:
            continue
        for y in range(y0, y1):
            if row_bits[y] & interp_bits:
                continue
            x = x0
            while x > 0 and (msk[y, x - 1] & interp_bits) != 0:
                x -= 1
            _interp_runs(img, var, msk, y, x, x1, interp_bits, intrp_bit, max_width)
