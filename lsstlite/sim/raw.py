"""The electronics: collected electrons → ADU per amplifier → multi-extension FITS raw.

Order of the detector chain (each step is the physical one, applied to the image in
electrons unless stated):

1. ``flat × (true image + fringes + trail)`` (expected electrons), brighter-fatter
   around bright stars, + dark current × darktime → Poisson draw;
2. + cosmic rays; charge above the full well bleeds along columns (charge conserved);
3. per amplifier, in readout order: nonlinearity ``f(e)``; ÷ gain → ADU; crosstalk from
   the other amplifiers (ADU); + fixed bias structure (data pixels only), + bias level +
   per-exposure offset + row drift (every pixel, overscan included), + read noise;
4. round, clip to the ADC's 0…65535, store as ``uint16`` (``BZERO = 32768``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from numpy.typing import NDArray

from lsstlite.instruments.simcam import OBS_TYPE_TO_OBSTYPE, SimCam, day_obs_from_mjd
from lsstlite.sim.calibs import bias_structure_adu
from lsstlite.sim.observe import iso_date

__all__ = ["bias_levels", "electrons_to_adu", "primary_header", "raw_path", "write_raw"]

#: Child-seed stream of the per-exposure bias offsets and drifts.
BIAS_STREAM = 3


def raw_path(outdir: str | Path, obs_type: str, exposure: int, detector: int) -> Path:
    """Where the raw of (exposure, detector) lives under a simulation directory."""
    return (
        Path(outdir)
        / "raw"
        / obs_type
        / f"{exposure:07d}"
        / f"SimCam_{exposure:07d}_{detector:03d}.fits"
    )


def _sexagesimal(value: float, hours: bool) -> str:
    v = value / 15.0 if hours else value
    sign = "-" if v < 0 else ("" if hours else "+")
    v = abs(v)
    d = int(v)
    m = int((v - d) * 60)
    s = (v - d - m / 60.0) * 3600.0
    return f"{sign}{d:02d}:{m:02d}:{s:05.2f}"


def primary_header(
    camera: SimCam,
    detector: int,
    *,
    exposure: int,
    obs_type: str,
    physical_filter: str,
    exptime: float,
    darktime: float,
    mjd: float,
    ra: float,
    dec: float,
    rot_deg: float,
    airmass: float,
    object_name: str,
    wcs: WCS | None,
) -> fits.Header:
    """Primary header of a raw file (no timestamps other than the observation's)."""
    g = camera.geometry
    h = fits.Header()
    obstype = OBS_TYPE_TO_OBSTYPE[obs_type]
    cards: list[tuple[str, Any, str]] = [
        ("INSTRUME", camera.name, "instrument"),
        ("TELESCOP", "SimScope 8.4m", "telescope"),
        ("OBSERVAT", "SimObservatory", "observatory"),
        ("SIMGEOM", g.name, "SimCam geometry (small, ci, full)"),
        ("OBSTYPE", obstype, "observation type"),
        ("IMAGETYP", obstype, "image type"),
        ("OBJECT", object_name, "target"),
        ("EXPNUM", exposure, "exposure number"),
        ("DETECTOR", detector, "detector number"),
        ("CCDNUM", detector, "detector number"),
        ("DETNAME", camera.detector_name(detector), "detector name"),
        ("DETSIZE", f"[1:{g.det_nx},1:{g.det_ny}]", "assembled detector size"),
        ("NAMPS", g.n_amps, "number of amplifiers"),
        ("FILTER", physical_filter, "physical filter"),
        ("EXPTIME", float(exptime), "[s] exposure time"),
        ("DARKTIME", float(darktime), "[s] dark time"),
        ("MJD-OBS", float(mjd), "[d] MJD at start of exposure (UTC)"),
        ("DATE-OBS", iso_date(mjd), "UTC start of exposure"),
        ("DAYOBS", day_obs_from_mjd(mjd), "observing day (UTC-12h)"),
        ("RA", float(ra), "[deg] telescope boresight RA"),
        ("DEC", float(dec), "[deg] telescope boresight Dec"),
        ("TELRA", _sexagesimal(ra, True), "boresight RA (h:m:s)"),
        ("TELDEC", _sexagesimal(dec, False), "boresight Dec (d:m:s)"),
        ("ROTANGLE", float(rot_deg), "[deg] sky rotation of the focal plane"),
        ("AIRMASS", float(airmass), "airmass at start"),
    ]
    for key, value, comment in cards:
        h[key] = (value, comment)
    if wcs is not None:
        for card in wcs.to_header(relax=True).cards:
            if card.keyword not in ("DATE-OBS", "MJD-OBS", "MJDREF", "DATEREF", "WCSAXES"):
                h[card.keyword] = (card.value, card.comment)
    return h


def bias_levels(seed: int, exposure: int, detector: int, camera: SimCam) -> NDArray[np.float64]:
    """Bias level (ADU) of every row of every amplifier in one exposure, ``(n_amps, ny)``.

    Nominal level + a per-exposure offset (σ = 8 ADU) + a slow row drift (a 1–4 ADU
    sinusoid of period 0.5–3 detector heights plus a ±3 ADU ramp). Every column of the
    row, prescan and overscan included, carries it, so per-row overscan removes it.
    """
    g = camera.geometry
    rng = np.random.default_rng(np.random.SeedSequence([seed, exposure, detector, BIAS_STREAM]))
    y = np.arange(g.det_ny, dtype=np.float64)
    out = np.empty((g.n_amps, g.det_ny))
    for amp in camera.amplifier_parameters(detector):
        offset = rng.normal(0.0, 8.0)
        amplitude, period = rng.uniform(1.0, 4.0), rng.uniform(0.5, 3.0) * g.det_ny
        phase, slope = rng.uniform(0.0, 2.0 * math.pi), rng.uniform(-3.0, 3.0)
        out[amp.index] = (
            amp.bias_level
            + offset
            + amplitude * np.sin(2 * math.pi * y / period + phase)
            + slope * y / g.det_ny
        )
    return out


def electrons_to_adu(
    electrons: NDArray[np.float64],
    camera: SimCam,
    detector: int,
    levels: NDArray[np.float64],
    rng: np.random.Generator,
) -> list[NDArray[np.uint16]]:
    """Read a detector out: one ``uint16`` raw array per amplifier, in readout order.

    ``electrons`` is the assembled-frame charge after bleeding (e⁻); ``levels`` the
    exposure's bias levels (:func:`bias_levels`); ``rng`` draws the read noise.
    """
    g = camera.geometry
    amps = camera.amplifier_parameters(detector)
    lin = camera.linearity(detector)
    xtalk = camera.crosstalk_matrix(detector)
    structure = bias_structure_adu(g.name, detector)
    signals = []
    for amp in amps:
        _, _, x0, x1 = amp.detector_section
        e = electrons[:, x0:x1]
        sig = lin[amp.index].apply(e) / amp.gain
        if amp.flip_x:
            sig = sig[:, ::-1]
        # The amplifier's output saturates at the ADC ceiling; crosstalk sees that signal.
        signals.append(np.minimum(sig, 65535.0 - amp.bias_level).astype(np.float32))
    out = []
    # float32 from here on: ample for integer ADU with ≥ 3 ADU of read noise, and twice
    # as fast on the 8-Mpixel frames of the ci preset.
    for amp in amps:
        ya, yb, xa, xb = amp.data_section
        raw = np.zeros((g.det_ny, g.raw_amp_width), np.float32)
        data = raw[ya:yb, xa:xb]
        data += signals[amp.index]
        for src in amps:
            if src.index != amp.index:
                data += np.float32(xtalk[src.index, amp.index]) * signals[src.index]
        _, _, x0, x1 = amp.detector_section
        bstruct = structure[:, x0:x1]
        data += bstruct[:, ::-1] if amp.flip_x else bstruct
        raw += levels[amp.index][:, None].astype(np.float32)
        raw += rng.standard_normal(raw.shape, dtype=np.float32) * np.float32(
            amp.read_noise / amp.gain
        )
        np.rint(raw, out=raw)
        np.clip(raw, 0, 65535, out=raw)
        out.append(raw.astype(np.uint16))
    return out


def write_raw(
    path: Path,
    header: fits.Header,
    amp_arrays: list[NDArray[np.uint16]],
    camera: SimCam,
    detector: int,
) -> int:
    """Write a raw MEF atomically (temporary file + rename); returns the bytes written."""
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [fits.PrimaryHDU(header=header)]
    for amp, data in zip(camera.amplifier_parameters(detector), amp_arrays, strict=True):
        hdu = fits.ImageHDU(data=data)
        for key, value, comment in camera.amp_header_cards(detector, amp):
            hdu.header[key] = (value, comment)
        hdus.append(hdu)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    fits.HDUList(hdus).writeto(tmp, overwrite=True)
    os.replace(tmp, path)
    return path.stat().st_size
