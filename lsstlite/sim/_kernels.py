"""Numba kernels of the simulator: pixel-integrated profiles, charge bleeding.

No I/O, no randomness: every kernel is a pure function of its arguments (the caller owns
the random generators), so rendering is reproducible to the bit.

Pixel integration follows :func:`lsstlite.data.psf._integrate`: the mean of the profile
on an ``n × n`` grid of sub-pixel midpoints (offsets ``(k + 0.5) / n - 0.5``). The
Moffat kernel uses ``n = 5`` within 2 FWHM of the centre (like ``MoffatPsf.image``),
``n = 3`` out to 4 FWHM and the pixel centre beyond, where the profile is so flat and faint
that the midpoint rule is exact to < 1e-6 of the peak.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

__all__ = ["add_moffat", "bleed_columns", "moffat_grid", "sersic_grid"]


@numba.njit(cache=True, fastmath=False)
def _moffat_value(
    dx: float, dy: float, i00: float, i01: float, i11: float, inv_a2: float, beta: float
) -> float:
    r2 = i00 * dx * dx + 2.0 * i01 * dx * dy + i11 * dy * dy
    return math.exp(-beta * math.log1p(r2 * inv_a2))


@numba.njit(cache=True)
def add_moffat(
    image: NDArray[np.float64],
    x: float,
    y: float,
    flux: float,
    fwhm: float,
    beta: float,
    e1: float,
    e2: float,
    radius: int,
) -> None:
    """Add a pixel-integrated elliptical Moffat of total ``flux`` centred at ``(x, y)``.

    ``image`` is modified in place; pixels farther than ``radius`` (box half-size) from
    the centre pixel are not touched. The profile is that of
    :class:`lsstlite.data.psf.MoffatPsf` (``fwhm`` the geometric-mean FWHM in pixels,
    distortion ellipticity ``e1``, ``e2``).
    """
    ny, nx = image.shape
    e = math.sqrt(e1 * e1 + e2 * e2)
    norm_shear = math.sqrt(1.0 - e * e)
    # inverse of shape_matrix(e1, e2) (unit determinant): adjugate.
    i00 = (1.0 - e1) / norm_shear
    i11 = (1.0 + e1) / norm_shear
    i01 = -e2 / norm_shear
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    inv_a2 = 1.0 / (alpha * alpha)
    norm = flux * (beta - 1.0) / (math.pi * alpha * alpha)
    ix = math.floor(x + 0.5)
    iy = math.floor(y + 0.5)
    r_in2 = (2.0 * fwhm) ** 2
    r_mid2 = (4.0 * fwhm) ** 2
    for py in range(max(iy - radius, 0), min(iy + radius + 1, ny)):
        for px in range(max(ix - radius, 0), min(ix + radius + 1, nx)):
            dx0 = px - x
            dy0 = py - y
            d2 = dx0 * dx0 + dy0 * dy0
            if d2 < r_in2:
                n = 5
            elif d2 < r_mid2:
                n = 3
            else:
                n = 1
            acc = 0.0
            for ky in range(n):
                sy = dy0 + (ky + 0.5) / n - 0.5
                for kx in range(n):
                    sx = dx0 + (kx + 0.5) / n - 0.5
                    acc += _moffat_value(sx, sy, i00, i01, i11, inv_a2, beta)
            image[py, px] += norm * acc / (n * n)


@numba.njit(cache=True)
def moffat_grid(
    size: int, step: float, fwhm: float, beta: float, e1: float, e2: float
) -> NDArray[np.float64]:
    """Moffat sampled at the centres of a ``size × size`` grid of cells of side ``step`` px.

    The grid is centred on the middle cell (``size`` odd); values are the profile times
    the cell area, so the grid sums to ~1 (the caller renormalises).
    """
    e = math.sqrt(e1 * e1 + e2 * e2)
    norm_shear = math.sqrt(1.0 - e * e)
    i00 = (1.0 - e1) / norm_shear
    i11 = (1.0 + e1) / norm_shear
    i01 = -e2 / norm_shear
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    inv_a2 = 1.0 / (alpha * alpha)
    norm = (beta - 1.0) / (math.pi * alpha * alpha) * step * step
    out = np.empty((size, size))
    half = size // 2
    for j in range(size):
        for i in range(size):
            out[j, i] = norm * _moffat_value(
                (i - half) * step, (j - half) * step, i00, i01, i11, inv_a2, beta
            )
    return out


@numba.njit(cache=True, inline="always")
def _sersic_value(r2: float, r_e: float, b_n: float, n: float, inv_n: float) -> float:
    """``exp(-b_n (r / r_e)^(1/n))``; n = 1 and 4 without ``pow`` (most of the cost)."""
    x = math.sqrt(r2) / r_e
    if n == 1.0:
        t = x
    elif n == 4.0:
        t = math.sqrt(math.sqrt(x))
    else:
        t = x**inv_n
    return math.exp(-b_n * t)


@numba.njit(cache=True, inline="always")
def ellipse_cells(
    size: int, step: float, cx: float, cy: float, m00: float, m01: float, m11: float, r: float
) -> tuple[int, int, int, int]:
    """Rows ``j0:j1`` and columns ``i0:i1`` of a ``size × size`` grid of cells (side
    ``step``, centre ``(cx, cy)`` in cells) holding every cell centre with
    ``dᵀ m d < r²``: the ellipse's bounding box, a cell wider on each side."""
    det = m00 * m11 - m01 * m01
    hx = r * math.sqrt(max(m11 / det, 0.0)) / step + 1.0
    hy = r * math.sqrt(max(m00 / det, 0.0)) / step + 1.0
    i0 = min(max(math.floor(cx - hx), 0), size)
    i1 = min(max(math.ceil(cx + hx) + 1, i0), size)
    j0 = min(max(math.floor(cy - hy), 0), size)
    j1 = min(max(math.ceil(cy + hy) + 1, j0), size)
    return j0, j1, i0, i1


@numba.njit(cache=True)
def sersic_grid(
    size: int,
    step: float,
    cx: float,
    cy: float,
    n: float,
    b_n: float,
    r_e: float,
    m00: float,
    m01: float,
    m11: float,
    r_trunc: float,
    core: int = 9,
    centred: bool = False,
) -> NDArray[np.float64]:
    """Unnormalised Sérsic profile on a ``size × size`` grid of cells of side ``step`` px.

    ``(cx, cy)`` is the centre in grid-cell units (cell centres at integers); ``m`` is the
    inverse of the unit-determinant shape matrix (so ``r² = dᵀ m d`` is the circularised
    radius²); the profile is ``exp(-b_n (r / r_e)^(1/n))``, zero beyond ``r_trunc``. Cells
    within r_e are the mean of 3 × 3 sub-samples, those within r_e / 4 (and the cells
    next to the centre) of ``core × core`` (9 by default, for the steep n = 4 cusp); the
    others are sampled at their centre.

    ``centred``: the centre is the grid's middle (``cx = cy = (size - 1) / 2``, checked),
    where the profile is point-symmetric: the lower half of the rows is computed and
    mirrored (equal to rounding: the mirrored sub-samples are the same points).
    """
    out = np.zeros((size, size))
    if centred and not (cx == cy == 0.5 * (size - 1)):
        raise ValueError("sersic_grid: centred=True needs cx = cy = (size - 1) / 2")
    inv_n = 1.0 / n
    rt2 = r_trunc * r_trunc
    inner2 = r_e * r_e
    core2 = 0.0625 * r_e * r_e + 2.0 * step * step
    j0, j1, i0, i1 = ellipse_cells(size, step, cx, cy, m00, m01, m11, r_trunc)
    if centred:
        # rows j >= size / 2 are the mirrors of rows size - 1 - j; for an odd size the
        # middle row is computed whole
        j1 = min(j1, (size + 1) // 2)
    for j in range(j0, j1):
        for i in range(i0, i1):
            dy = (j - cy) * step
            dx = (i - cx) * step
            r2 = m00 * dx * dx + 2.0 * m01 * dx * dy + m11 * dy * dy
            if r2 >= inner2:
                if r2 < rt2:
                    out[j, i] = _sersic_value(r2, r_e, b_n, n, inv_n)
                continue
            k = core if r2 < core2 else 3  # the n = 4 cusp needs fine sampling
            acc = 0.0
            for ky in range(k):
                sy = (j - cy + (ky + 0.5) / k - 0.5) * step
                for kx in range(k):
                    sx = (i - cx + (kx + 0.5) / k - 0.5) * step
                    s2 = m00 * sx * sx + 2.0 * m01 * sx * sy + m11 * sy * sy
                    acc += _sersic_value(s2, r_e, b_n, n, inv_n)
            out[j, i] = acc / (k * k)
    if centred:
        for j in range(j0, j1):
            jm = size - 1 - j
            if jm > j:
                for i in range(i0, i1):
                    out[jm, size - 1 - i] = out[j, i]
    return out


@numba.njit(cache=True)
def bleed_columns(image: NDArray[np.float64], full_well: NDArray[np.float64]) -> None:
    """Spread charge above the full well up and down each column, conserving it.

    ``full_well`` gives the well depth of each column (e⁻). Each run of pixels above the
    full well is clipped to it and its excess shared equally between the pixels below
    and above the run, filling each to the full well before moving on; charge pushed past
    the ends of the column is lost (it drains into the serial register in a real CCD).
    """
    ny, nx = image.shape
    for c in range(nx):
        fw = full_well[c]
        i = 0
        while i < ny:
            if image[i, c] <= fw:
                i += 1
                continue
            start = i
            excess = 0.0
            while i < ny and image[i, c] >= fw:
                excess += image[i, c] - fw
                image[i, c] = fw
                i += 1
            stop = i
            down = 0.5 * excess
            up = excess - down
            j = start - 1
            while down > 0.0 and j >= 0:
                room = fw - image[j, c]
                if room > 0.0:
                    add = min(room, down)
                    image[j, c] += add
                    down -= add
                j -= 1
            j = stop
            while up > 0.0 and j < ny:
                room = fw - image[j, c]
                if room > 0.0:
                    add = min(room, up)
                    image[j, c] += add
                    up -= add
                j += 1
            i = stop
