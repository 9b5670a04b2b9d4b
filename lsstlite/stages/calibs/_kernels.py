"""Kernels of the master-calibration ops (numba, one whole detector). No dask, no I/O.

Each replaces a scipy/numpy call whose cost dominated a calibration quantum on an
8-Mpixel detector (``binary_dilation`` with iterations, ``lstsq`` on every pixel,
``nanmedian`` along a short axis or over a whole image, a rank filter along rows,
float64 temporaries of whole-image expressions); results are the same.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "above_sky",
    "add_scaled",
    "dilate_diamond",
    "middle_values",
    "nanmedian_all",
    "nanmedian_axis0",
    "plane_fit",
    "row_median_filter",
    "sky_fraction",
]


@numba.njit(cache=True, nogil=True)
def dilate_diamond(mask: NDArray[np.bool_], radius: int) -> NDArray[np.bool_]:
    """Binary dilation by the diamond ``|dy| + |dx| <= radius``.

    Same as ``scipy.ndimage.binary_dilation(mask, iterations=radius)`` (cross structure,
    zero border). Works on runs of set pixels along rows: a run ``[x0, x1)`` marks
    ``[x0 − r, x1 + r)`` on the row ``radius − r`` away, so the cost is proportional to
    the number of runs, not of set pixels (a footprint's row is one run).
    """
    ny, nx = mask.shape
    out = mask.copy()
    for y in range(ny):
        row = mask[y]
        x = 0
        while x < nx:
            if not row[x]:
                x += 1
                continue
            end = x + 1
            while end < nx and row[end]:
                end += 1
            for dy in range(-radius, radius + 1):
                yy = y + dy
                if yy < 0 or yy >= ny:
                    continue
                r = radius - abs(dy)
                orow = out[yy]
                for xx in range(max(x - r, 0), min(end + r, nx)):
                    orow[xx] = True
            x = end
    return out


@numba.njit(cache=True, nogil=True)
def above_sky(
    img: NDArray[np.float64], sky: NDArray[np.float64], noise: NDArray[np.floating]
) -> NDArray[np.bool_]:
    """``img > sky + noise`` (float64 sum) in one pass, without the temporary sum."""
    ny, nx = img.shape
    out = np.empty((ny, nx), np.bool_)
    for y in range(ny):
        for x in range(nx):
            out[y, x] = img[y, x] > sky[y, x] + np.float64(noise[y, x])
    return out


@numba.njit(cache=True, nogil=True)
def add_scaled(acc: NDArray[np.float64], img: NDArray[np.floating], scale: float) -> None:
    """``acc += img / scale`` (float64) in place, without a float64 copy of ``img``."""
    ny, nx = acc.shape
    for y in range(ny):
        for x in range(nx):
            acc[y, x] += np.float64(img[y, x]) / scale


@numba.njit(cache=True, nogil=True)
def sky_fraction(
    img: NDArray[np.float64], sky: NDArray[np.float64], keep: NDArray[np.bool_]
) -> NDArray[np.float32]:
    """``np.where(keep, img / sky - 1.0, np.nan).astype(np.float32)`` in one pass."""
    ny, nx = img.shape
    out = np.empty((ny, nx), np.float32)
    for y in range(ny):
        for x in range(nx):
            out[y, x] = np.float32(img[y, x] / sky[y, x] - 1.0) if keep[y, x] else np.nan
    return out


@numba.njit(cache=True, nogil=True)
def _plane_sums(img: NDArray[np.float64], good: NDArray[np.bool_]) -> NDArray[np.float64]:
    ny, nx = img.shape
    cy, cx = 0.5 * (ny - 1), 0.5 * (nx - 1)
    s = np.zeros(9)  # n, u, v, uu, uv, vv, z, uz, vz with u, v centred coordinates
    for y in range(ny):
        v = y - cy
        for x in range(nx):
            if good[y, x]:
                u = x - cx
                z = img[y, x]
                s[0] += 1.0
                s[1] += u
                s[2] += v
                s[3] += u * u
                s[4] += u * v
                s[5] += v * v
                s[6] += z
                s[7] += u * z
                s[8] += v * z
    return s


def plane_fit(img: NDArray[np.float64], good: NDArray[np.bool_]) -> NDArray[np.float64]:
    """The least-squares plane ``c0 + c1 x + c2 y`` through the ``good`` pixels, evaluated
    on the whole image (normal equations in centred coordinates: one pass, no design
    matrix)."""
    ny, nx = img.shape
    s = _plane_sums(np.asarray(img, np.float64), np.asarray(good, np.bool_))
    if s[0] < 3:
        raise ValueError(f"plane fit needs at least 3 good pixels, got {int(s[0])}")
    a = np.array([[s[0], s[1], s[2]], [s[1], s[3], s[4]], [s[2], s[4], s[5]]])
    c0, cu, cv = np.linalg.solve(a, np.array([s[6], s[7], s[8]]))
    u = np.arange(nx, dtype=np.float64) - 0.5 * (nx - 1)
    v = np.arange(ny, dtype=np.float64) - 0.5 * (ny - 1)
    out: NDArray[np.float64] = c0 + cu * u[None, :] + cv * v[:, None]
    return out


@numba.njit(cache=True, nogil=True)
def nanmedian_axis0(stack: NDArray[np.float32]) -> NDArray[np.float64]:
    """Median over axis 0 of the finite values (NaN where there are none)."""
    n, ny, nx = stack.shape
    out = np.empty((ny, nx), np.float64)
    buf = np.empty(n, np.float64)
    for y in range(ny):
        for x in range(nx):
            m = 0
            for k in range(n):
                d = np.float64(stack[k, y, x])
                if d == d:
                    j = m
                    while j > 0 and buf[j - 1] > d:
                        buf[j] = buf[j - 1]
                        j -= 1
                    buf[j] = d
                    m += 1
            if m == 0:
                out[y, x] = np.nan
            elif m % 2:
                out[y, x] = buf[m // 2]
            else:
                out[y, x] = 0.5 * (buf[m // 2 - 1] + buf[m // 2])
    return out


@numba.njit(cache=True, nogil=True)
def _key(b: np.uint32) -> np.int64:
    """float32 bits as an integer in the floats' order (-1 for NaN)."""
    k = np.int64(b)
    if (k & 0x7FFFFFFF) > 0x7F800000:
        return np.int64(-1)
    if k & 0x80000000:
        return 0xFFFFFFFF - k  # negatives: reversed
    return k | 0x80000000


@numba.njit(cache=True, nogil=True)
def _ranked_keys(bits: NDArray[np.uint32]) -> tuple[int, int, int]:
    """Number of non-NaN values and the keys of ranks ``(m - 1) // 2`` and ``m // 2``
    (radix selection: a histogram of the high 16 key bits, then of the low 16 bits
    within the bins holding the two ranks)."""
    hi = np.zeros(65536, np.int64)
    m = 0
    for i in range(bits.size):
        k = _key(bits[i])
        if k >= 0:
            hi[k >> 16] += 1
            m += 1
    if m == 0:
        return 0, 0, 0
    r0, r1 = (m - 1) // 2, m // 2
    b0, b1 = _select(hi, r0), _select(hi, r1)
    c0, c1 = hi[:b0].sum(), hi[:b1].sum()
    lo0 = np.zeros(65536, np.int64)
    lo1 = np.zeros(65536, np.int64)
    for i in range(bits.size):  # branch-free: often half the values share a bin
        k = _key(bits[i])
        h = k >> 16
        lo0[k & 0xFFFF] += h == b0
        lo1[k & 0xFFFF] += h == b1
    return m, _select(lo0, r0 - c0) | (b0 << 16), _select(lo1, r1 - c1) | (b1 << 16)


@numba.njit(cache=True, nogil=True)
def _select(hist: NDArray[np.int64], rank: int) -> int:
    """The bin holding the value of ``rank`` (0-based) in a histogram."""
    c = 0
    for h in range(hist.size):
        c += hist[h]
        if c > rank:
            return h
    return hist.size - 1


def middle_values(values: NDArray[np.float32]) -> tuple[int, np.float32, np.float32]:
    """Number of non-NaN values of a float32 array and its values of ranks ``(m - 1) // 2``
    and ``m // 2`` (the two middle ones; the same one for odd ``m``; NaN when ``m`` is 0).

    Two passes over the data (radix selection), no copy or partition.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).ravel().view(np.uint32)
    m, k1, k2 = _ranked_keys(bits)
    if m == 0:
        return 0, np.float32(np.nan), np.float32(np.nan)
    keys = np.array([k1, k2], np.int64)
    neg = keys < 0x80000000
    v = np.where(neg, 0xFFFFFFFF - keys, keys - 0x80000000).astype(np.uint32).view(np.float32)
    return int(m), v[0], v[1]


def nanmedian_all(values: NDArray[np.float32]) -> np.float32:
    """Median of the non-NaN values of a float32 array (NaN when there are none).

    Same as ``np.nanmedian(values)`` (float32; the mean of the middle two in float32 for
    an even count) without its copy and partition: two passes over the data.
    """
    m, lo, hi = middle_values(values)
    if m % 2:
        return lo
    return np.float32((lo + hi) / np.float32(2.0))


@numba.njit(cache=True, nogil=True)
def row_median_filter(img: NDArray[np.float64], window: int) -> NDArray[np.float64]:
    """Running median along rows over ``window`` (odd) pixels, edges repeated.

    Same as ``scipy.ndimage.median_filter(img, size=(1, window), mode="nearest")`` on
    finite images (NaN counts as +inf): a sorted window updated by one removal and one
    insertion per pixel.
    """
    ny, nx = img.shape
    h = window // 2
    out = np.empty((ny, nx), np.float64)
    win = np.empty(window, np.float64)
    row = np.empty(nx, np.float64)
    for y in range(ny):
        for x in range(nx):  # NaN sorts last (as +inf) so that removals always match
            d = img[y, x]
            row[x] = d if d == d else np.inf
        for k in range(window):  # window centred on x = 0, edge repeated
            d = row[min(max(k - h, 0), nx - 1)]
            j = k
            while j > 0 and win[j - 1] > d:
                win[j] = win[j - 1]
                j -= 1
            win[j] = d
        out[y, 0] = win[h]
        for x in range(1, nx):
            gone = row[min(max(x - 1 - h, 0), nx - 1)]
            new = row[min(max(x + h, 0), nx - 1)]
            i = 0
            while i < window - 1 and win[i] != gone:  # the value leaving (it is in the window)
                i += 1
            while i < window - 1:
                win[i] = win[i + 1]
                i += 1
            j = window - 1
            while j > 0 and win[j - 1] > new:
                win[j] = win[j - 1]
                j -= 1
            win[j] = new
            out[y, x] = win[h]
    return out
