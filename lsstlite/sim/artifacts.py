"""Cosmic rays and satellite trails: what the true image leaves out but the raws contain.

Both are drawn from per-(exposure, detector) child seeds, so the truth writer (main
process) and the raw writer (worker processes) regenerate exactly the same ones.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.special import erf

from lsstlite.instruments.simcam import PIXEL_SIZE_UM, SimCam
from lsstlite.sim.config import SurveyConfig
from lsstlite.sim.observe import Visit

__all__ = ["add_trail", "cosmic_rays", "deposit_cosmic_rays", "trail_for_detector"]

#: Child-seed stream of cosmic rays (see ``lsstlite.sim.survey`` for the others).
CR_STREAM = 2


def cosmic_rays(
    config: SurveyConfig, seed: int, exposure: int, detector: int, darktime: float, camera: SimCam
) -> pd.DataFrame:
    """Cosmic-ray hits of one exposure of one detector, one row per pixel hit.

    The number of events is Poisson with mean ``rate × area × (darktime + readout)``.
    Two populations: 70% muon-like "spots and short tracks" (1–4 px, 2–10 ke⁻ in total) and
    30% grazing tracks (5–60 px, 600–1500 e⁻ per px of length), straight, one pixel wide.

    Returns
    -------
    pandas.DataFrame
        Columns ``cr_id`` (within the exposure/detector), ``x``, ``y`` (assembled frame,
        int), ``electrons`` (deposited in that pixel).
    """
    g = camera.geometry
    rng = np.random.default_rng(np.random.SeedSequence([seed, exposure, detector, CR_STREAM]))
    area_cm2 = g.det_nx * g.det_ny * (PIXEL_SIZE_UM * 1e-4) ** 2
    minutes = (darktime + config.cr_readout_s) / 60.0
    n = int(rng.poisson(config.cr_rate_cm2_min * area_cm2 * minutes))
    rows: list[tuple[int, int, int, float]] = []
    for k in range(n):
        x0, y0 = rng.uniform(0, g.det_nx), rng.uniform(0, g.det_ny)
        angle = rng.uniform(0.0, math.pi)
        if rng.uniform() < 0.7:
            length = rng.uniform(0.0, 3.0)
            total = rng.uniform(2000.0, 10_000.0)
        else:
            length = rng.uniform(5.0, 60.0)
            total = rng.uniform(600.0, 1500.0) * length
        n_step = max(int(length * 10), 1)
        t = (np.arange(n_step) + 0.5) / n_step * length
        xs = np.floor(x0 + t * math.cos(angle)).astype(np.int64)
        ys = np.floor(y0 + t * math.sin(angle)).astype(np.int64)
        ok = (xs >= 0) & (xs < g.det_nx) & (ys >= 0) & (ys < g.det_ny)
        pix, counts = np.unique(np.stack([ys[ok], xs[ok]], axis=1), axis=0, return_counts=True)
        for (py, px), c in zip(pix, counts, strict=True):
            rows.append((k, int(px), int(py), float(total * c / n_step)))
    return pd.DataFrame(rows, columns=["cr_id", "x", "y", "electrons"]).astype(
        {"cr_id": np.int32, "x": np.int32, "y": np.int32, "electrons": np.float64}
    )


def deposit_cosmic_rays(image: NDArray[np.float64], crs: pd.DataFrame) -> None:
    """Add cosmic-ray electrons to an assembled-frame image in place."""
    np.add.at(image, (crs["y"].to_numpy(), crs["x"].to_numpy()), crs["electrons"].to_numpy())


def trail_for_detector(visit: Visit, camera: SimCam, detector: int) -> dict[str, float] | None:
    """A visit's satellite trail as seen by one detector, or None if it misses it.

    The trail is a straight line across the focal plane (the optical distortion's slight
    bending is ignored). Returns ``x0, y0, x1, y1`` (where the line enters and leaves the
    detector, 0-based pixels), ``fwhm_px`` and ``peak_e`` (e⁻/px on the line, before the
    flat).
    """
    if visit.trail is None:
        return None
    fx0, fy0, angle, peak, fwhm = visit.trail
    layout = camera.layout(detector)
    rot = layout.rotation_matrix
    g = camera.geometry
    d = rot.T @ np.array([fx0 - layout.x_center, fy0 - layout.y_center])
    px, py = d[0] + (g.det_nx - 1) / 2.0, d[1] + (g.det_ny - 1) / 2.0
    t = math.radians(angle - layout.rotation_deg)
    ux, uy = math.cos(t), math.sin(t)
    # Clip the infinite line px + s u to the detector box [-0.5, n - 0.5].
    lo, hi = -math.inf, math.inf
    for p, u, n in ((px, ux, g.det_nx), (py, uy, g.det_ny)):
        if abs(u) < 1e-12:
            if not -0.5 <= p <= n - 0.5:
                return None
            continue
        s0, s1 = sorted(((-0.5 - p) / u, (n - 0.5 - p) / u))
        lo, hi = max(lo, s0), min(hi, s1)
    if lo >= hi:
        return None
    return {
        "x0": px + lo * ux,
        "y0": py + lo * uy,
        "x1": px + hi * ux,
        "y1": py + hi * uy,
        "fwhm_px": fwhm,
        "peak_e": peak,
    }


def add_trail(image: NDArray[np.float64], trail: dict[str, float]) -> None:
    """Add a trail's electrons to ``image`` in place: a Gaussian cross-section integrated
    over pixels.

    The integral across the trail uses the pixel's extent along the normal (exact for
    trails parallel to an axis, within 1% of the peak otherwise). Only 64-px blocks near
    the line are evaluated.
    """
    ny, nx = image.shape
    dx, dy = trail["x1"] - trail["x0"], trail["y1"] - trail["y0"]
    length = math.hypot(dx, dy)
    nxu, nyu = -dy / length, dx / length  # unit normal
    sigma = trail["fwhm_px"] / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    half = 0.5 * (abs(nxu) + abs(nyu))  # half-width of a pixel along the normal
    s2 = math.sqrt(2.0) * sigma
    reach = 8.0 * sigma + 2.0
    block = 64
    for by in range(0, ny, block):
        for bx in range(0, nx, block):
            cx, cy = bx + 0.5 * block, by + 0.5 * block
            if abs((cx - trail["x0"]) * nxu + (cy - trail["y0"]) * nyu) > reach + block:
                continue
            y = np.arange(by, min(by + block, ny), dtype=np.float64)[:, None]
            x = np.arange(bx, min(bx + block, nx), dtype=np.float64)[None, :]
            dist = (x - trail["x0"]) * nxu + (y - trail["y0"]) * nyu
            frac = 0.5 * (erf((dist + half) / s2) - erf((dist - half) / s2))
            image[by : by + y.shape[0], bx : bx + x.shape[1]] += (
                trail["peak_e"] * math.sqrt(2.0 * math.pi) * sigma * frac / (2.0 * half)
            )
