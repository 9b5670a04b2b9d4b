"""Synthetic SimCam raws built in memory with the simulator's exact electronics.

Shared by the ISR tests and ``benchmarks/isr.py``: an electron image goes through
:func:`lsstlite.sim.raw.electrons_to_adu` (nonlinearity, gain, crosstalk, bias structure,
bias levels, optional read noise, rounding, ADC clipping) and comes back as the Dataset
that :meth:`lsstlite.instruments.simcam.SimCam.read_raw` would return for the FITS file,
without writing one. With ``read_noise=False`` the only error left in a round trip
through the ISR is the ADC's rounding (±0.5 ADU) and the linearity fit's residual.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from numpy.typing import NDArray

from lsstlite.instruments.simcam import CameraGeometry, SimCam

__all__ = ["amplifier_dicts", "geometry", "simcam_raw"]


class _NoNoise:
    """Stands in for ``numpy.random.Generator`` where the readout draws its read noise."""

    def standard_normal(self, shape: Any, dtype: Any = np.float64) -> NDArray[Any]:
        return np.zeros(shape, dtype=dtype)


def geometry(ny: int, nx: int, n_amps: int) -> CameraGeometry:
    """A one-detector SimCam geometry of ``ny × nx`` pixels read by ``n_amps`` amplifiers."""
    return CameraGeometry(f"synthetic{ny}x{nx}", 1, 1, nx, ny, n_amps)


def amplifier_dicts(camera: SimCam, detector: int) -> list[dict[str, Any]]:
    """``attrs['amplifiers']`` of a raw of ``camera`` (the layout ``SimCam.read_raw`` gives)."""
    g = camera.geometry
    out = []
    for amp in camera.amplifier_parameters(detector):
        off = amp.index * g.raw_amp_width

        def shift(s: tuple[int, int, int, int], off: int = off) -> list[int]:
            return [s[0], s[1], s[2] + off, s[3] + off]

        out.append(
            {
                "name": amp.name,
                "bbox_raw": [0, g.det_ny, off, off + g.raw_amp_width],
                "data_section": shift(amp.data_section),
                "serial_overscan": shift(amp.serial_overscan),
                "prescan": shift(amp.prescan),
                "detector_section": list(amp.detector_section),
                "flip_x": amp.flip_x,
                "flip_y": amp.flip_y,
                "gain": amp.gain,
                "read_noise": amp.read_noise,
                "saturation_adu": amp.saturation_adu,
            }
        )
    return out


def _readout_without_structure(
    electrons: NDArray[np.float64],
    camera: SimCam,
    detector: int,
    levels: NDArray[np.float64],
    rng: Any,
) -> list[NDArray[np.uint16]]:
    """:func:`lsstlite.sim.raw.electrons_to_adu` minus the fixed bias structure."""
    g = camera.geometry
    amps = camera.amplifier_parameters(detector)
    lin = camera.linearity(detector)
    xtalk = camera.crosstalk_matrix(detector)
    signals = []
    for amp in amps:
        _, _, x0, x1 = amp.detector_section
        sig = lin[amp.index].apply(electrons[:, x0:x1]) / amp.gain
        sig = sig[:, ::-1] if amp.flip_x else sig
        signals.append(np.minimum(sig, 65535.0 - amp.bias_level).astype(np.float32))
    out = []
    for amp in amps:
        ya, yb, xa, xb = amp.data_section
        raw = np.zeros((g.det_ny, g.raw_amp_width), np.float32)
        data = raw[ya:yb, xa:xb]
        data += signals[amp.index]
        for src in amps:
            if src.index != amp.index:
                data += np.float32(xtalk[src.index, amp.index]) * signals[src.index]
        raw += levels[amp.index][:, None].astype(np.float32)
        raw += rng.standard_normal(raw.shape, dtype=np.float32) * np.float32(
            amp.read_noise / amp.gain
        )
        np.rint(raw, out=raw)
        np.clip(raw, 0, 65535, out=raw)
        out.append(raw.astype(np.uint16))
    return out


def simcam_raw(
    electrons: NDArray[np.floating],
    camera: SimCam,
    detector: int = 0,
    *,
    bias_offset_adu: float = 0.0,
    read_noise: bool = False,
    seed: int = 0,
    exptime: float = 30.0,
    chunk_rows: int | None = None,
) -> xr.Dataset:
    """A raw Dataset (readout order, dask-backed) of ``electrons`` read out by ``camera``.

    Parameters
    ----------
    electrons
        Collected charge (e⁻) in the assembled detector frame, ``(det_ny, det_nx)``.
    camera, detector
        Whose electronics (gains, linearity, crosstalk, bias structure) read it out.
    bias_offset_adu
        Added to every amplifier's nominal bias level (all rows, overscan included).
    read_noise
        Draw Gaussian read noise (``seed``); off, the raw is exact up to rounding.
    exptime
        Exposure and dark time written to ``visit_info``.
    chunk_rows
        Row chunks of the dask array (default: one chunk).
    """
    from lsstlite.sim.raw import electrons_to_adu

    g = camera.geometry
    levels = np.array(
        [
            np.full(g.det_ny, a.bias_level + bias_offset_adu)
            for a in camera.amplifier_parameters(detector)
        ]
    )
    rng: Any = np.random.default_rng(seed) if read_noise else _NoNoise()
    e = np.asarray(electrons, np.float64)
    if g.name in ("small", "ci", "full"):
        arrays = electrons_to_adu(e, camera, detector, levels, rng)
    else:  # the simulator's bias structure exists only for its named geometries
        arrays = _readout_without_structure(e, camera, detector, levels, rng)
    image = np.concatenate(arrays, axis=1).astype(np.float32)
    header = {"INSTRUME": camera.name, "SIMGEOM": g.name, "DETECTOR": detector}
    visit_info = {
        "instrument": camera.name,
        "exposure": 1,
        "visit": 1,
        "detector": detector,
        "obs_type": "science",
        "exptime": exptime,
        "darktime": exptime,
        "mjd": 61000.0,
        "date_obs": "2026-02-25T00:00:00.000",
        "day_obs": 20260224,
    }
    return xr.Dataset(
        {"image": (("y", "x"), da.from_array(image, chunks=(chunk_rows or g.det_ny, -1)))},
        attrs={
            "amplifiers": amplifier_dicts(camera, detector),
            "visit_info": visit_info,
            "wcs": {},
            "header": header,
            "filename": f"<synthetic {g.name} raw>",
        },
    )
