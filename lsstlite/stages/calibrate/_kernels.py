"""Numpy kernels of calibration: pattern matching, affine refinement, robust means."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

__all__ = ["fit_affine", "offset_vote", "sigma_clipped_mean"]


def offset_vote(
    sx: NDArray[np.float64],
    sy: NDArray[np.float64],
    rx: NDArray[np.float64],
    ry: NDArray[np.float64],
    *,
    center: tuple[float, float],
    max_offset: float,
    max_rotation_rad: float,
    tolerance: float,
) -> tuple[int, float, float, float]:
    """Find the rotation and shift that superpose most sources on reference positions.

    For each trial rotation (about ``center``, steps keeping the rotation error below
    ``tolerance`` at the farthest source) every source–reference pair within
    ``max_offset`` votes for its offset in a histogram of ``tolerance`` bins (summed over
    2 × 2 bins so a peak on a bin edge is not split). Missing and spurious stars only add
    flat noise to the histogram.

    Returns
    -------
    votes, theta, dx, dy
        Height of the best peak, the rotation (radians) and the shift (pixels) to apply to
        the sources (rotate, then shift) to land on the references.
    """
    cx, cy = center
    reach = float(np.max(np.hypot(sx - cx, sy - cy))) if len(sx) else 1.0
    step = tolerance / max(reach, 1.0)
    n_rot = math.ceil(max_rotation_rad / step) if max_rotation_rad > 0 else 0
    thetas = np.arange(-n_rot, n_rot + 1) * step
    nb = math.ceil(2 * max_offset / tolerance)
    best = (0, 0.0, 0.0, 0.0)
    for theta in thetas:
        c, s = math.cos(theta), math.sin(theta)
        x = c * (sx - cx) - s * (sy - cy) + cx
        y = s * (sx - cx) + c * (sy - cy) + cy
        dx = (rx[None, :] - x[:, None]).ravel()
        dy = (ry[None, :] - y[:, None]).ravel()
        sel = (np.abs(dx) < max_offset) & (np.abs(dy) < max_offset)
        if not sel.any():
            continue
        h, xe, ye = np.histogram2d(
            dx[sel], dy[sel], bins=nb, range=[[-max_offset, max_offset], [-max_offset, max_offset]]
        )
        h2 = h[:-1, :-1] + h[1:, :-1] + h[:-1, 1:] + h[1:, 1:]
        i, j = np.unravel_index(int(np.argmax(h2)), h2.shape)
        votes = int(h2[i, j])
        if votes > best[0]:
            in_peak = sel.copy()
            in_peak[sel] = (
                (dx[sel] >= xe[i])
                & (dx[sel] < xe[i + 2])
                & (dy[sel] >= ye[j])
                & (dy[sel] < ye[j + 2])
            )
            best = (
                votes,
                float(theta),
                float(np.median(dx[in_peak])),
                float(np.median(dy[in_peak])),
            )
    return best


def fit_affine(
    x: NDArray[np.float64], y: NDArray[np.float64], u: NDArray[np.float64], v: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Least-squares affine ``(u, v) ≈ M @ (1, x, y)``; returns the ``2 × 3`` matrix."""
    design = np.stack([np.ones_like(x), x, y], axis=1)
    cu, *_ = np.linalg.lstsq(design, u, rcond=None)
    cv, *_ = np.linalg.lstsq(design, v, rcond=None)
    return np.stack([cu, cv])


def apply_affine(
    m: NDArray[np.float64], x: NDArray[np.float64], y: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Apply a :func:`fit_affine` matrix."""
    return m[0, 0] + m[0, 1] * x + m[0, 2] * y, m[1, 0] + m[1, 1] * x + m[1, 2] * y


def nearest_matches(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    u: NDArray[np.float64],
    v: NDArray[np.float64],
    radius: float,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """One-to-one nearest-neighbour matches of points ``(x, y)`` to ``(u, v)`` within ``radius``.

    Returns
    -------
    i, j, distance
        Indices into the first and second set (each used at most once, closest pairs win).
    """
    if len(x) == 0 or len(u) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    tree = cKDTree(np.stack([u, v], axis=1))
    d, j = tree.query(np.stack([x, y], axis=1), distance_upper_bound=radius)
    ok = np.isfinite(d)
    i = np.nonzero(ok)[0]
    j, d = j[ok], d[ok]
    order = np.argsort(d)
    _, first = np.unique(j[order], return_index=True)
    keep = order[first]
    return i[keep].astype(np.int64), j[keep].astype(np.int64), d[keep]


def sigma_clipped_mean(
    values: NDArray[np.float64],
    errors: NDArray[np.float64],
    *,
    n_sigma: float = 3.0,
    n_iter: int = 5,
) -> tuple[float, float, NDArray[np.bool_]]:
    """Inverse-variance mean with iterative clipping around it.

    Returns
    -------
    mean, error, used
        ``error`` is scaled up by ``√(χ²/dof)`` when the scatter exceeds the errors.
    """
    used = np.isfinite(values) & np.isfinite(errors) & (errors > 0)
    mean = float("nan")
    err = float("nan")
    for _ in range(n_iter):
        if used.sum() == 0:
            break
        w = 1.0 / errors[used] ** 2
        mean = float(np.sum(w * values[used]) / np.sum(w))
        chi2 = float(np.sum(w * (values[used] - mean) ** 2))
        dof = max(int(used.sum()) - 1, 1)
        err = math.sqrt(1.0 / float(np.sum(w))) * max(1.0, math.sqrt(chi2 / dof))
        # Clip on the robust scatter of the pulls (outliers: blends, trails, variables).
        pulls = (values - mean) / errors
        scale = max(1.4826 * float(np.median(np.abs(pulls[used]))), 1.0)
        new = np.isfinite(pulls) & (np.abs(pulls) < n_sigma * scale)
        if new.sum() == used.sum():
            break
        used = new
    return mean, err, used
