"""Detection kernels on one in-memory image: thresholds, footprints, peaks, spans.

No I/O, no dask. Images are float64 ``(ny, nx)`` arrays in the exposure's pixel grid;
positions are 0-based array indices (the ops add the parent-frame origin).
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from lsstlite.stages.characterize._kernels import (
    gaussian_taps,
    label_sums,
    local_maxima,
    matched_snr,
)

__all__ = [
    "clean_pixels",
    "decode_spans",
    "encode_spans",
    "find_peaks",
    "footprint_labels",
    "gaussian_snr",
    "grow_kept",
]

#: 8-connectivity: diagonal neighbours belong to the same footprint (as in LSST).
_EIGHT = np.ones((3, 3), dtype=bool)


def gaussian_snr(
    image: NDArray[np.floating[Any]],
    variance: NDArray[np.floating[Any]],
    sigma: float,
    bad: NDArray[np.bool_],
) -> NDArray[np.float64]:
    """Matched-filter significance: ``(G ∗ I) / sqrt(G² ∗ V)`` with a Gaussian ``G``.

    ``bad`` pixels count as zero signal and infinite variance. Returns 0 where no pixel
    of the kernel is usable. The halo of the filter is ``ceil(4 sigma)`` pixels.
    """
    g = gaussian_taps(sigma)
    # G² is a Gaussian of sigma/√2 with peak 1/(4π σ²); the taps are normalised to 1.
    g2 = gaussian_taps(sigma / math.sqrt(2.0))
    snr = np.empty(image.shape, dtype=np.float64)
    matched_snr(
        np.ascontiguousarray(image, dtype=np.float32),
        np.ascontiguousarray(variance, dtype=np.float32),
        np.ascontiguousarray(bad),
        g,
        g,
        g2,
        g2,
        1.0 / (4.0 * math.pi * sigma * sigma),
        snr,
    )
    return snr


def footprint_labels(
    above: NDArray[np.bool_], *, min_area: int, grow_px: int
) -> tuple[NDArray[np.int32], int]:
    """Label 8-connected regions of ``above`` with ≥ ``min_area`` pixels, grown by a disc.

    Returns the label image (0 = background, 1..n) and n. Growing can join footprints;
    labels are assigned after growing, in raster order of each region's first pixel.
    The regions are labelled before growing only when ``min_area > 1`` (their areas are
    needed); the disc growth is :func:`grow_kept`.
    """
    if min_area > 1:
        labels, n = ndimage.label(above, structure=_EIGHT)
        if n == 0:
            return labels.astype(np.int32, copy=False), 0
        # areas: sums of `above` over each label (np.bincount would copy to intp first)
        keep = label_sums(labels, above, n) >= min_area
        keep[0] = False
        mask = grow_kept(labels, keep, int(grow_px))
    elif grow_px > 0:
        mask = grow_kept(above.view(np.uint8), np.array([False, True]), int(grow_px))
    else:
        mask = above
    out, n = ndimage.label(mask, structure=_EIGHT)
    return out.astype(np.int32, copy=False), int(n)


def grow_kept(
    labels: NDArray[np.integer[Any]], keep: NDArray[np.bool_], r: int
) -> NDArray[np.bool_]:
    """``keep[labels]`` dilated by a disc of radius ``r`` (``x² + y² <= r²``, nothing
    beyond the edges): ``ndimage.binary_dilation(keep[labels], structure=disc)``.

    ``labels`` must be non-negative and below ``len(keep)``. Each run of kept pixels
    along a row is widened by the disc's half-width on every row it reaches, so the cost
    follows the number of runs, not the image area times the disc area.
    """
    half = np.array([math.isqrt(r * r - d * d) for d in range(-r, r + 1)], dtype=np.int64)
    return _grow_runs(np.ascontiguousarray(labels), np.ascontiguousarray(keep), half)


@numba.njit(cache=True, nogil=True)
def _grow_runs(
    labels: NDArray[Any], keep: NDArray[np.bool_], half: NDArray[np.int64]
) -> NDArray[np.bool_]:
    ny, nx = labels.shape
    r = half.size // 2
    out = np.zeros((ny, nx), dtype=np.bool_)
    for y in range(ny):
        row = labels[y]
        x = 0
        while x < nx:
            if not keep[row[x]]:
                x += 1
                continue
            x0 = x
            while x < nx and keep[row[x]]:
                x += 1
            for d in range(-r, r + 1):
                yy = y + d
                if 0 <= yy < ny:
                    h = half[d + r]
                    out[yy, max(x0 - h, 0) : min(x + h, nx)] = True
    return out


def clean_pixels(
    image: NDArray[np.floating[Any]],
    variance: NDArray[np.floating[Any]],
    mask: NDArray[np.integer[Any]],
    bits: int,
) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]], NDArray[np.bool_]]:
    """Image and variance (in their float precision, at least float32) set to 0 where a
    pixel is bad, and the bad pixels: ``mask & bits``, a non-finite image or variance,
    or a variance ``<= 0``.

    One pass instead of the numpy expression's seven full-size temporaries.
    """
    img = np.empty(image.shape, dtype=np.result_type(image.dtype, np.float32))
    var = np.empty(image.shape, dtype=np.result_type(variance.dtype, np.float32))
    bad = np.empty(image.shape, dtype=np.bool_)
    _clean_pixels(
        np.ascontiguousarray(image),
        np.ascontiguousarray(variance),
        np.ascontiguousarray(mask),
        np.int64(bits),
        img,
        var,
        bad,
    )
    return img, var, bad


@numba.njit(cache=True, nogil=True)
def _clean_pixels(
    image: NDArray[Any],
    variance: NDArray[Any],
    mask: NDArray[Any],
    bits: np.int64,
    img: NDArray[Any],
    var: NDArray[Any],
    bad: NDArray[np.bool_],
) -> None:
    ny, nx = image.shape
    for y in range(ny):
        for x in range(nx):
            i = image[y, x]
            v = variance[y, x]
            b = (
                (mask[y, x] & bits) != 0
                or not math.isfinite(i)
                or not math.isfinite(v)
                or not v > 0
            )
            bad[y, x] = b
            img[y, x] = 0.0 if b else i
            var[y, x] = 0.0 if b else v


def find_peaks(
    snr: NDArray[np.float64],
    labels: NDArray[np.int32],
    *,
    min_snr: float,
    min_dip_sigma: float,
    window: int = 3,
    flux: NDArray[np.floating[Any]] | None = None,
) -> NDArray[np.int64]:
    """Peaks of the significance image ``snr`` inside footprints, as an ``(n, 3)`` array
    ``(label, iy, ix)``.

    A candidate is a local maximum over a ``window × window`` box (``snr ==
    maximum_filter(snr)``, edges clipped) with ``snr >= min_snr``; only footprint pixels
    above the threshold are visited. Within a footprint, candidates are taken in
    decreasing order and one is kept only if, towards every brighter kept peak, the
    profile along the straight line between them dips at least ``min_dip_sigma`` below
    it (the saddle test of multi-threshold deblenders, on one line instead of a threshold
    tree). Rows are sorted by footprint label, then by decreasing peak value.

    With ``flux`` (the same smoothing of the image, whose ratio to ``snr`` is the noise)
    the candidates are the local maxima of ``flux`` with ``snr >= min_snr``, ordered and
    dipped in ``flux``, the dip in units of the fainter peak's noise (``flux / snr``
    there): where the variance changes from pixel to pixel (a coadd's core where some
    visits were left out) the significance has maxima that are not sources.
    """
    if flux is None:
        values = np.ascontiguousarray(snr, dtype=np.float64)
        # v > nextafter(min_snr, -inf) is v >= min_snr
        threshold = float(np.nextafter(min_snr, -np.inf))
    else:
        values = np.ascontiguousarray(flux, dtype=np.float64)
        threshold = -np.inf
    iy, ix = local_maxima(values, np.ascontiguousarray(labels), threshold, window // 2)
    if flux is not None:
        significant = snr[iy, ix] >= min_snr
        iy, ix = iy[significant], ix[significant]
    if iy.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    lab = labels[iy, ix].astype(np.int64)
    val = values[iy, ix]
    order = np.lexsort((-val, lab))
    lab, iy, ix = lab[order], iy[order], ix[order]
    scale = np.ones(iy.size) if flux is None else values[iy, ix] / snr[iy, ix]
    return _select_peaks(values, lab, iy, ix, float(min_dip_sigma), scale)


@numba.njit(cache=True)
def _select_peaks(
    smooth: NDArray[np.float64],
    lab: NDArray[np.int64],
    iy: NDArray[np.int64],
    ix: NDArray[np.int64],
    min_dip_sigma: float,
    scale: NDArray[np.float64],
) -> NDArray[np.int64]:
    n = lab.size
    keep = np.zeros(n, dtype=np.bool_)
    start = 0
    while start < n:
        stop = start
        while stop < n and lab[stop] == lab[start]:
            stop += 1
        for i in range(start, stop):
            vi = smooth[iy[i], ix[i]]
            ok = True
            for j in range(start, i):
                if not keep[j]:
                    continue
                dy = iy[j] - iy[i]
                dx = ix[j] - ix[i]
                steps = max(abs(dy), abs(dx))
                lowest = vi
                for s in range(1, steps):
                    py = math.floor(iy[i] + dy * s / steps + 0.5)
                    px = math.floor(ix[i] + dx * s / steps + 0.5)
                    v = smooth[py, px]
                    if v < lowest:
                        lowest = v
                if vi - lowest < min_dip_sigma * scale[i]:
                    ok = False
                    break
            keep[i] = ok
        start = stop
    count = 0
    for i in range(n):
        if keep[i]:
            count += 1
    out = np.empty((count, 3), dtype=np.int64)
    k = 0
    for i in range(n):
        if keep[i]:
            out[k, 0] = lab[i]
            out[k, 1] = iy[i]
            out[k, 2] = ix[i]
            k += 1
    return out


@numba.njit(cache=True)
def encode_spans(labels: NDArray[np.int32]) -> NDArray[np.int64]:
    """Runs of equal non-zero labels along rows: ``(n, 4)`` rows ``(label, y, x0, x1)``.

    ``x1`` is exclusive. Rows are in raster order.
    """
    ny, nx = labels.shape
    count = 0
    for y in range(ny):
        prev = 0
        for x in range(nx):
            v = labels[y, x]
            if v != 0 and v != prev:
                count += 1
            prev = v
    out = np.empty((count, 4), dtype=np.int64)
    k = 0
    for y in range(ny):
        x = 0
        while x < nx:
            v = labels[y, x]
            if v == 0:
                x += 1
                continue
            x0 = x
            while x < nx and labels[y, x] == v:
                x += 1
            out[k, 0] = v
            out[k, 1] = y
            out[k, 2] = x0
            out[k, 3] = x
            k += 1
    return out


def decode_spans(
    ys: NDArray[np.int64], x0s: NDArray[np.int64], x1s: NDArray[np.int64]
) -> tuple[tuple[int, int, int, int], NDArray[np.bool_]]:
    """Footprint mask from spans: ``((ymin, ymax + 1, xmin, xmax), mask)`` in its bbox."""
    ya, yb = int(ys.min()), int(ys.max()) + 1
    xa, xb = int(x0s.min()), int(x1s.max())
    mask = np.zeros((yb - ya, xb - xa), dtype=bool)
    for y, x0, x1 in zip(ys, x0s, x1s, strict=True):
        mask[int(y) - ya, int(x0) - xa : int(x1) - xa] = True
    return (ya, yb, xa, xb), mask
