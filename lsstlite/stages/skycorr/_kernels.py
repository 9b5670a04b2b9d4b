"""Kernel of the sky-correction ops (numba, one detector). No dask, no I/O.

``numpy.nanmedian`` over the last axis of a (bins, bins, pixels) stack runs a Python
loop per superpixel (``apply_along_axis``) and took 90% of a sky-correction quantum;
this computes the same clipped statistics in one pass over the superpixels.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

__all__ = ["clipped_block_stats"]


@numba.njit(cache=True, nogil=True)
def _median_inplace(a: NDArray[np.float64], n: int) -> float:
    """Median of ``a[:n]`` (reordered in place): Hoare's quickselect of the upper middle
    element, then the largest below it for an even count (``np.median`` copies)."""
    k = n // 2
    lo, hi = 0, n - 1
    while lo < hi:
        pivot = a[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    upper = a[k]
    if n % 2:
        return upper
    lower = a[0]
    for t in range(1, k):
        lower = max(lower, a[t])
    return 0.5 * (lower + upper)


@numba.njit(cache=True, nogil=True)
def clipped_block_stats(
    image: NDArray[np.float64], bad: NDArray[np.bool_], bin_px: int, n_sigma: float
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64]]:
    """Clipped median, count and standard deviation of ``bin_px × bin_px`` superpixels.

    For each whole superpixel (a partial last row or column of them is left out) of the
    finite pixels not ``bad``: the median ``m`` and ``mad = 1.4826 × median(|v − m|)``;
    the pixels with ``|v − m| ≤ n_sigma × max(mad, 1e-30)`` are kept. Returns the median
    of the kept pixels (NaN if none), their number and their standard deviation (ddof
    0; NaN if none), each of shape ``(ny // bin_px, nx // bin_px)``.
    """
    ny, nx = image.shape
    by, bx = ny // bin_px, nx // bin_px
    value = np.full((by, bx), np.nan)
    count = np.zeros((by, bx), np.int64)
    sigma = np.full((by, bx), np.nan)
    buf = np.empty(bin_px * bin_px)
    dev = np.empty(bin_px * bin_px)
    kept = np.empty(bin_px * bin_px)
    for j in range(by):
        for i in range(bx):
            m = 0
            for y in range(j * bin_px, (j + 1) * bin_px):
                for x in range(i * bin_px, (i + 1) * bin_px):
                    v = image[y, x]
                    if not bad[y, x] and math.isfinite(v):
                        buf[m] = v
                        m += 1
            if m == 0:
                continue
            med = _median_inplace(buf, m)
            for k in range(m):
                dev[k] = abs(buf[k] - med)
            for k in range(m):
                kept[k] = dev[k]
            limit = n_sigma * max(_median_inplace(kept, m) * 1.4826, 1e-30)
            n = 0
            for k in range(m):
                if dev[k] <= limit:
                    kept[n] = buf[k]
                    n += 1
            count[j, i] = n
            if n == 0:
                continue
            mean = 0.0
            for k in range(n):
                mean += kept[k]
            mean /= n
            ss = 0.0
            for k in range(n):
                ss += (kept[k] - mean) ** 2
            sigma[j, i] = math.sqrt(ss / n)
            value[j, i] = _median_inplace(kept, n)
    return value, count, sigma
