"""True calibration maps of SimCam: bias structure, dark current, flats, fringe pattern.

Like the electronic constants in :mod:`lsstlite.instruments.simcam`, these depend only on
the camera (seeded by ``CAMERA_SEED``), never on the survey seed. All maps are in the
assembled, trimmed detector frame, shape ``(det_ny, det_nx)``.

- Bias structure (ADU): what is left of a bias after subtracting each row's overscan
  level: a fixed per-column pattern (σ ≈ 1.2 ADU), a decaying ramp over the first rows
  (3 ADU) and a slow 2-D wave (0.8 ADU). Only a master bias removes it.
- Dark current (e⁻/s): each amplifier's rate, plus hot boxes (~1 e⁻/s) and hot pixels.
- Flat (dimensionless, per band): vignetting ``1 − v ρ²`` (ρ = focal-plane radius / field
  radius; v = 6–8%) × pixel response (σ = 1%) × tree rings (0.3%) × dead bad columns
  (5% response), divided by the focal-plane mean of the vignetting. Dome flats see the
  same flat as the sky (no illumination correction is simulated).
- Fringe pattern (dimensionless, within [−1, 1]): three sets of curved interference
  fringes of 60–150 px period; an exposure adds ``fringe_e × pattern`` electrons.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from lsstlite.instruments.simcam import CAMERA_SEED, GEOMETRIES, SimCam

__all__ = ["bias_structure_adu", "dark_current_map", "flat_field", "fringe_pattern"]

#: Vignetting depth at the field radius, per band.
VIGNETTING = {"g": 0.08, "r": 0.07, "i": 0.065, "z": 0.06}
TREE_RING_AMPLITUDE = 0.003
PRNU_SIGMA = 0.01
DEAD_COLUMN_RESPONSE = 0.05


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([CAMERA_SEED, *key])


@lru_cache(maxsize=4)
def bias_structure_adu(geometry: str, detector: int) -> NDArray[np.float32]:
    """Fixed 2-D bias structure (ADU) left after per-row overscan subtraction."""
    cam = SimCam(geometry)
    g = cam.geometry
    rng = _rng(detector, 600)
    out = np.empty((g.det_ny, g.det_nx), np.float32)
    y = np.arange(g.det_ny, dtype=np.float64)[:, None]
    for amp in cam.amplifier_parameters(detector):
        _, _, x0, x1 = amp.detector_section
        xr = np.arange(x1 - x0, dtype=np.float64)[None, :]
        if amp.flip_x:  # the ramp and wave follow readout order
            xr = xr[:, ::-1]
        columns = rng.normal(0.0, 1.2, size=(1, x1 - x0))
        ramp = 3.0 * np.exp(-y / 30.0)
        wave = (
            0.8
            * np.sin(2 * math.pi * y / g.det_ny + rng.uniform(0, 2 * math.pi))
            * np.cos(math.pi * xr / (x1 - x0))
        )
        out[:, x0:x1] = columns + ramp + wave
    return out


@lru_cache(maxsize=4)
def dark_current_map(geometry: str, detector: int) -> NDArray[np.float32]:
    """Dark current (e⁻/s/px) including hot boxes and hot pixels."""
    cam = SimCam(geometry)
    g = cam.geometry
    out = np.empty((g.det_ny, g.det_nx), np.float32)
    for amp in cam.amplifier_parameters(detector):
        _, _, x0, x1 = amp.detector_section
        out[:, x0:x1] = amp.dark_current
    rates = iter(cam.hot_pixel_rates(detector))
    for d in cam.defects(detector):
        sl = (slice(d["y0"], d["y0"] + d["height"]), slice(d["x0"], d["x0"] + d["width"]))
        if d["kind"] == "hot_box":
            out[sl] = 1.0
        elif d["kind"] == "hot_pixel":
            out[sl] = next(rates)
    return out


@lru_cache(maxsize=2)
def _pixel_response(geometry: str, detector: int) -> NDArray[np.float32]:
    g = GEOMETRIES[geometry]
    prnu = _rng(detector, 500).normal(1.0, PRNU_SIGMA, size=(g.det_ny, g.det_nx))
    return (prnu / prnu.mean()).astype(np.float32)


def _vignetting(
    cam: SimCam, detector: int, band: str, x: NDArray[np.float64], y: NDArray[np.float64]
) -> NDArray[np.float64]:
    fx, fy = cam.layout(detector).to_focal_plane(x, y)
    rho2 = (fx * fx + fy * fy) / cam.geometry.field_radius**2
    return 1.0 - VIGNETTING[band] * rho2


def _vignetting_mean(cam: SimCam, band: str) -> float:
    g = cam.geometry
    yy, xx = np.mgrid[0 : g.det_ny : 64j, 0 : g.det_nx : 64j]
    return float(np.mean([_vignetting(cam, d, band, xx, yy).mean() for d in cam.detectors]))


@lru_cache(maxsize=4)
def flat_field(geometry: str, detector: int, band: str) -> NDArray[np.float32]:
    """The true flat of a detector in a band (focal-plane mean of the vignetting = 1)."""
    cam = SimCam(geometry)
    g = cam.geometry
    y = np.arange(g.det_ny, dtype=np.float64)[:, None]
    x = np.arange(g.det_nx, dtype=np.float64)[None, :]
    flat = _vignetting(cam, detector, band, x, y) / _vignetting_mean(cam, band)
    rng = _rng(detector, 510)
    # Tree rings: concentric about the wafer centre, far off one corner of the detector.
    cx, cy = rng.uniform(-0.6, -0.3) * g.det_nx, rng.uniform(-0.3, 0.0) * g.det_ny
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    period = 40.0 * (1.0 + 0.2 * np.sin(r / 300.0))
    rings = 1.0 + TREE_RING_AMPLITUDE * np.sin(
        2 * math.pi * r / period + rng.uniform(0, 2 * math.pi)
    )
    flat = flat * rings * _pixel_response(geometry, detector)
    for d in cam.defects(detector):
        if d["kind"] == "bad_column":
            flat[d["y0"] : d["y0"] + d["height"], d["x0"] : d["x0"] + d["width"]] *= (
                DEAD_COLUMN_RESPONSE
            )
    return flat.astype(np.float32)


@lru_cache(maxsize=2)
def fringe_pattern(geometry: str, detector: int) -> NDArray[np.float32]:
    """Fixed fringe pattern of a detector (dimensionless, in [−1, 1])."""
    g = GEOMETRIES[geometry]
    rng = _rng(detector, 700)
    y = np.arange(g.det_ny, dtype=np.float64)[:, None]
    x = np.arange(g.det_nx, dtype=np.float64)[None, :]
    out = np.zeros((g.det_ny, g.det_nx))
    for _ in range(3):
        cx = rng.uniform(-2.0, 3.0) * g.det_nx
        cy = rng.uniform(-2.0, 3.0) * g.det_ny
        period = rng.uniform(60.0, 150.0)
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        out += np.cos(2 * math.pi * r / period + rng.uniform(0, 2 * math.pi))
    return (out / 3.0).astype(np.float32)
