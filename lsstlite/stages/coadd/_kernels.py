"""Numba kernels of the coadd: per-pixel combination of a stack of warps (one block).

Stacks are ``(n_inputs, ny, nx)``; ``use`` says which input pixels may enter (finite,
not masked bad). No I/O, no dask.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "block_mask",
    "combine_clipped",
    "combine_mean",
    "combine_median",
    "positive_outliers",
    "usable_pixels",
]


@numba.njit(cache=True, nogil=True)
def combine_mean(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    use: NDArray[np.bool_],
    weights: NDArray[np.float64],
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int32]]:
    """Weighted mean ``Σ wᵢ xᵢ / Σ wᵢ`` with variance ``Σ wᵢ² vᵢ / (Σ wᵢ)²`` and the count of
    inputs used (NaN where none).
    """
    n, ny, nx = img.shape
    out = np.empty((ny, nx), np.float32)
    ovar = np.empty((ny, nx), np.float32)
    count = np.zeros((ny, nx), np.int32)
    for j in range(ny):
        for i in range(nx):
            s = 0.0
            sv = 0.0
            sw = 0.0
            c = 0
            for k in range(n):
                if use[k, j, i]:
                    w = weights[k]
                    s += w * img[k, j, i]
                    sv += w * w * var[k, j, i]
                    sw += w
                    c += 1
            if c == 0 or sw <= 0.0:
                out[j, i] = np.nan
                ovar[j, i] = np.nan
            else:
                out[j, i] = s / sw
                ovar[j, i] = sv / (sw * sw)
            count[j, i] = c
    return out, ovar, count


@numba.njit(cache=True, inline="always")
def _median(values: NDArray[np.float64], m: int) -> float:
    """Median of ``values[:m]`` (sorts it in place; insertion sort: m is small)."""
    for a in range(1, m):
        v = values[a]
        b = a - 1
        while b >= 0 and values[b] > v:
            values[b + 1] = values[b]
            b -= 1
        values[b + 1] = v
    if m % 2 == 1:
        return values[m // 2]
    return 0.5 * (values[m // 2 - 1] + values[m // 2])


@numba.njit(cache=True, nogil=True)
def combine_clipped(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    use: NDArray[np.bool_],
    weights: NDArray[np.float64],
    n_sigma: float,
    amp_frac: float,
    n_iter: int,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
    """Clipped weighted mean (SWarp's CLIPPED rule, Gruen et al. 2014).

    Input ``k`` is clipped where ``|xₖ − c| > n_sigma × sqrt(vₖ + (amp_frac × c)²)``; the
    centre ``c`` starts at the median and becomes the weighted mean of the survivors for
    each further iteration. The amplitude term keeps the cores of stars (whose PSF varies
    between epochs) from being clipped. Returns the mean, its variance and the clipped
    flags ``(n, ny, nx)``.
    """
    n, ny, nx = img.shape
    out = np.empty((ny, nx), np.float32)
    ovar = np.empty((ny, nx), np.float32)
    clipped = np.zeros((n, ny, nx), np.bool_)
    vals = np.empty(n)
    keep = np.empty(n, np.bool_)
    r_cnt = np.empty(nx, np.int64)
    r_mu = np.empty(nx)
    r_sd = np.empty(nx)
    r_w = np.empty(nx)
    r_wx = np.empty(nx)
    r_wv = np.empty(nx)
    r_ok = np.empty(nx, np.bool_)
    n2 = n_sigma * n_sigma
    for j in range(ny):
        # Fast path, row-wise (contiguous, vectorisable): a pixel whose inputs would all
        # survive the full rule is the plain weighted mean. Exact test, no sort: the median
        # m is within one standard deviation s of the mean μ, so |x − m| ≤ |x − μ| + s, and
        # |m| ≥ |μ| − s bounds the amplitude term from below.
        r_cnt[:] = 0
        r_mu[:] = 0.0
        r_sd[:] = 0.0
        r_w[:] = 0.0
        r_wx[:] = 0.0
        r_wv[:] = 0.0
        r_ok[:] = True
        for k in range(n):
            w = weights[k]
            for i in range(nx):
                if use[k, j, i]:
                    x = img[k, j, i]
                    r_cnt[i] += 1
                    r_mu[i] += x
                    r_w[i] += w
                    r_wx[i] += w * x
                    r_wv[i] += w * w * var[k, j, i]
        for i in range(nx):
            if r_cnt[i] > 0:
                r_mu[i] /= r_cnt[i]
                r_wx[i] /= r_w[i]
        for k in range(n):
            for i in range(nx):
                if use[k, j, i]:
                    d = img[k, j, i] - r_mu[i]
                    r_sd[i] += d * d
        for i in range(nx):
            if r_cnt[i] > 0:
                r_sd[i] = math.sqrt(r_sd[i] / r_cnt[i])
        for k in range(n):
            for i in range(nx):
                if use[k, j, i] and r_cnt[i] > 2:
                    x = img[k, j, i]
                    v = var[k, j, i]
                    amp = amp_frac * max(abs(r_mu[i]) - r_sd[i], 0.0)
                    d1 = abs(x - r_mu[i]) + r_sd[i]
                    amp2 = amp_frac * r_wx[i]
                    d2 = x - r_wx[i]
                    if d1 * d1 > n2 * (v + amp * amp) or d2 * d2 > n2 * (v + amp2 * amp2):
                        r_ok[i] = False
        for i in range(nx):
            if r_cnt[i] == 0:
                out[j, i] = np.nan
                ovar[j, i] = np.nan
            elif r_ok[i]:
                out[j, i] = r_wx[i]
                ovar[j, i] = r_wv[i] / (r_w[i] * r_w[i])
        for i in range(nx):
            if r_cnt[i] == 0 or r_ok[i]:
                continue
            m = 0
            for k in range(n):
                keep[k] = use[k, j, i]
                if keep[k]:
                    vals[m] = img[k, j, i]
                    m += 1
            if m == 0:
                out[j, i] = np.nan
                ovar[j, i] = np.nan
                continue
            c = _median(vals, m) if m > 2 else 0.0
            if m <= 2:
                s = 0.0
                sw = 0.0
                for k in range(n):
                    if keep[k]:
                        s += weights[k] * img[k, j, i]
                        sw += weights[k]
                c = s / sw
            s = 0.0
            sv = 0.0
            sw = 0.0
            for _ in range(n_iter if m > 2 else 0):
                s = 0.0
                sw = 0.0
                amp = amp_frac * c
                for k in range(n):
                    if not use[k, j, i]:
                        continue
                    d = img[k, j, i] - c
                    keep[k] = d * d <= n_sigma * n_sigma * (var[k, j, i] + amp * amp)
                    if keep[k]:
                        s += weights[k] * img[k, j, i]
                        sw += weights[k]
                if sw <= 0.0:  # everything clipped: fall back to the centre's inputs
                    for k in range(n):
                        keep[k] = use[k, j, i]
                    break
                c = s / sw
            s = 0.0
            sv = 0.0
            sw = 0.0
            for k in range(n):
                if keep[k]:
                    w = weights[k]
                    s += w * img[k, j, i]
                    sv += w * w * var[k, j, i]
                    sw += w
                elif use[k, j, i]:
                    clipped[k, j, i] = True
            out[j, i] = s / sw
            ovar[j, i] = sv / (sw * sw)
    return out, ovar, clipped


@numba.njit(cache=True, nogil=True)
def combine_median(
    img: NDArray[np.float32], var: NDArray[np.float32], use: NDArray[np.bool_]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Median of the usable inputs; variance ``π/2 × mean(v) / m`` (Gaussian efficiency)."""
    n, ny, nx = img.shape
    out = np.empty((ny, nx), np.float32)
    ovar = np.empty((ny, nx), np.float32)
    vals = np.empty(n)
    for j in range(ny):
        for i in range(nx):
            m = 0
            sv = 0.0
            for k in range(n):
                if use[k, j, i]:
                    vals[m] = img[k, j, i]
                    sv += var[k, j, i]
                    m += 1
            if m == 0:
                out[j, i] = np.nan
                ovar[j, i] = np.nan
            else:
                out[j, i] = _median(vals, m)
                ovar[j, i] = (math.pi / 2.0 if m > 2 else 1.0) * sv / (m * m)
    return out, ovar


@numba.njit(cache=True, nogil=True)
def positive_outliers(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    valid: NDArray[np.bool_],
    template: NDArray[np.float32],
    tvar: NDArray[np.float32],
    peak: NDArray[np.float32],
    n_sigma: float,
    frac: float,
) -> NDArray[np.bool_]:
    """``valid & (img − template > n_sigma √(var + tvar + (frac peak)²))`` per input.

    One pass in float32 (as the numpy expression evaluates it, with the same operation
    order: equal to it bit for bit) without its five stack-sized temporaries.
    """
    n, ny, nx = img.shape
    out = np.zeros((n, ny, nx), np.bool_)
    ns = np.float32(n_sigma)
    fr = np.float32(frac)
    for k in range(n):
        for j in range(ny):
            for i in range(nx):
                if not valid[k, j, i]:
                    continue
                t = template[j, i]
                fp = fr * peak[j, i]
                s2 = (var[k, j, i] + tvar[j, i]) + fp * fp
                out[k, j, i] = (img[k, j, i] - t) > ns * np.sqrt(s2)
    return out


@numba.njit(cache=True, nogil=True)
def usable_pixels(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    msk: NDArray[np.int32],
    no_data: int,
    bad_bits: int,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """``covered`` (not NO_DATA) and ``use`` (covered, no bad bit, finite image and
    variance) of a stack, in one pass."""
    n, ny, nx = img.shape
    covered = np.empty((n, ny, nx), np.bool_)
    use = np.empty((n, ny, nx), np.bool_)
    for k in range(n):
        for j in range(ny):
            for i in range(nx):
                m = msk[k, j, i]
                c = (m & no_data) == 0
                covered[k, j, i] = c
                use[k, j, i] = (
                    c
                    and (m & bad_bits) == 0
                    and math.isfinite(img[k, j, i])
                    and math.isfinite(var[k, j, i])
                )
    return covered, use


@numba.njit(cache=True, nogil=True)
def block_mask(
    use: NDArray[np.bool_],
    covered: NDArray[np.bool_],
    msk: NDArray[np.int32],
    clipped: NDArray[np.bool_],
    rejected: NDArray[np.bool_],
    y0: int,
    x0: int,
    ny: int,
    nx: int,
    no_data: int,
    sensor_edge: int,
    inexact_bit: int,
    clipped_bit: int,
    rejected_bit: int,
    why_bits: int,
    weights: NDArray[np.float64],
    prop_bits: NDArray[np.int64],
    prop_thresh: NDArray[np.float64],
) -> NDArray[np.int32]:
    """The coadd mask of the ``ny × nx`` box at ``(y0, x0)`` of a stack: NO_DATA where no
    input is used, with the ``why_bits`` of the inputs covering the pixel (the planes
    that kept them out: SAT where a star's core saturated every visit); INEXACT_PSF where
    a covering input is not used or is at its sensor edge, CLIPPED / REJECTED where an
    input was (``clipped`` / ``rejected`` of shape ``(0, 1, 1)``: none).

    Where inputs are used, plane ``prop_bits[q]`` is set if the covering inputs that have
    it carry more than ``prop_thresh[q]`` of the covering inputs' total ``weights`` (LSST's
    ``maskPropagationThresholds``: SAT where a star saturated in some of the visits)."""
    n = use.shape[0]
    prop_any = 0
    for q in range(prop_bits.shape[0]):
        prop_any |= prop_bits[q]
    has_clipped = clipped.shape[0] > 0
    has_rejected = rejected.shape[0] > 0
    out = np.empty((ny, nx), np.int32)
    for j in range(ny):
        for i in range(nx):
            used = False
            inexact = False
            was_clipped = False
            was_rejected = False
            seen = 0
            for k in range(n):
                u = use[k, y0 + j, x0 + i]
                used |= u
                if covered[k, y0 + j, x0 + i]:
                    seen |= msk[k, y0 + j, x0 + i]
                if (covered[k, y0 + j, x0 + i] and not u) or (
                    msk[k, y0 + j, x0 + i] & sensor_edge
                ) != 0:
                    inexact = True
                if has_clipped and clipped[k, y0 + j, x0 + i]:
                    was_clipped = True
                if has_rejected and rejected[k, y0 + j, x0 + i]:
                    was_rejected = True
            m = 0
            if not used:
                m |= no_data | (seen & why_bits)
            elif (seen & prop_any) != 0:
                m |= _propagated(
                    msk, covered, weights, prop_bits, prop_thresh, seen, y0 + j, x0 + i
                )
            if inexact:
                m |= inexact_bit
            if was_clipped:
                m |= clipped_bit
            if was_rejected:
                m |= rejected_bit
            out[j, i] = m
    return out


@numba.njit(cache=True, nogil=True)
def _propagated(
    msk: NDArray[np.int32],
    covered: NDArray[np.bool_],
    weights: NDArray[np.float64],
    prop_bits: NDArray[np.int64],
    prop_thresh: NDArray[np.float64],
    seen: int,
    y: int,
    x: int,
) -> int:
    """The ``prop_bits`` (among ``seen``, the OR of the covering inputs' masks) whose
    covering inputs carry more than ``prop_thresh`` of the covering weight at pixel
    ``(y, x)`` (see :func:`block_mask`)."""
    out = 0
    for q in range(prop_bits.shape[0]):
        b = prop_bits[q]
        if (seen & b) == 0:
            continue
        total = 0.0
        with_b = 0.0
        for k in range(msk.shape[0]):
            if covered[k, y, x]:
                total += weights[k]
                if (msk[k, y, x] & b) != 0:
                    with_b += weights[k]
        if with_b > prop_thresh[q] * total:
            out |= b
    return out
