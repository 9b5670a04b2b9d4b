"""Truth tables (Parquet) and true calibration frames (FITS) of a simulated survey.

Column reference: ``docs/design/simulation.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits

from lsstlite.instruments.simcam import PIXEL_SCALE_ARCSEC, SimCam
from lsstlite.sim.artifacts import trail_for_detector
from lsstlite.sim.calibs import bias_structure_adu, dark_current_map, flat_field, fringe_pattern
from lsstlite.sim.config import SurveyConfig
from lsstlite.sim.observe import CalibExposure, Visit, sky_level, true_psf_for, true_wcs_for

__all__ = [
    "calib_exposures_table",
    "defects_table",
    "exposures_table",
    "trails_table",
    "write_calib_truth",
    "write_parquet",
]


def write_parquet(table: pd.DataFrame, path: Path) -> None:
    """Write a table atomically, deterministically (same data → same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp)
    os.replace(tmp, path)


def exposures_table(config: SurveyConfig, visits: list[Visit], camera: SimCam) -> pd.DataFrame:
    """One row per (science visit, detector): observing conditions and true models."""
    rows = []
    g = camera.geometry
    xc, yc = (g.det_nx - 1) / 2.0, (g.det_ny - 1) / 2.0
    for v in visits:
        for det in camera.detectors:
            psf = true_psf_for(v, camera, det)
            wcs = true_wcs_for(v, camera, det)
            e1, e2 = psf.ellipticity_at(xc, yc)
            rows.append(
                {
                    "visit": v.exposure,
                    "detector": det,
                    "band": v.band,
                    "physical_filter": v.physical_filter,
                    "mjd": v.mjd,
                    "exptime": v.exptime,
                    "airmass": v.airmass,
                    "boresight_ra": v.boresight_ra,
                    "boresight_dec": v.boresight_dec,
                    "rot_angle": v.rot_deg,
                    "wcs_header": wcs.to_header(relax=True).tostring(),
                    "psf_fwhm_arcsec": psf.fwhm_at(xc, yc) * PIXEL_SCALE_ARCSEC,
                    "psf_e1": e1,
                    "psf_e2": e2,
                    "psf_beta": v.beta,
                    "psf_model": json.dumps(psf.to_dict(), sort_keys=True),
                    "sky": float(sky_level(v, camera, det, np.array(xc), np.array(yc))),
                    "zero_point": v.zero_point,
                    "fringe_amplitude": v.fringe_e,
                    "has_trail": trail_for_detector(v, camera, det) is not None,
                    "header_pointing_error_arcsec": float(np.hypot(*v.pointing_error_arcsec)),
                    "header_rotation_error_deg": v.rotation_error_deg,
                }
            )
    return pd.DataFrame(rows)


def calib_exposures_table(calibs: list[CalibExposure]) -> pd.DataFrame:
    """One row per calibration exposure (all detectors share it)."""
    return pd.DataFrame(
        [
            {
                "exposure": c.exposure,
                "obs_type": c.obs_type,
                "band": c.band,
                "physical_filter": c.physical_filter,
                "mjd": c.mjd,
                "exptime": c.exptime,
                "flat_level_e": c.level_e,
            }
            for c in calibs
        ]
    )


def trails_table(visits: list[Visit], camera: SimCam) -> pd.DataFrame:
    """One row per (visit, detector) crossed by a satellite trail."""
    rows = []
    for v in visits:
        for det in camera.detectors:
            t = trail_for_detector(v, camera, det)
            if t is not None:
                rows.append({"exposure": v.exposure, "detector": det, **t})
    cols = ["exposure", "detector", "x0", "y0", "x1", "y1", "fwhm_px", "peak_e"]
    return pd.DataFrame(rows, columns=cols).astype({"exposure": np.int64, "detector": np.int64})


def defects_table(camera: SimCam) -> pd.DataFrame:
    """Every defect of every detector (assembled frame), with hot-pixel dark rates."""
    rows = []
    for det in camera.detectors:
        rates = iter(camera.hot_pixel_rates(det))
        for d in camera.defects(det):
            rate = {"bad_column": np.nan, "hot_box": 1.0}.get(d["kind"])
            rows.append({"detector": det, **d, "dark_rate": next(rates) if rate is None else rate})
    return pd.DataFrame(rows)


def write_calib_truth(outdir: Path, config: SurveyConfig, detector: int) -> None:
    """True master calibrations of one detector under ``truth/calibs/``.

    ``bias_DDD.fits`` (HDUs ``ADU`` and ``ELECTRONS``: structure left after per-row
    overscan subtraction), ``dark_DDD.fits`` (e⁻/s), ``flat_<band>_DDD.fits`` (focal-plane
    mean ≈ 1) and, for the fringe band, ``fringe_DDD.fits`` (dimensionless
    pattern; an exposure adds ``fringe_amplitude`` e⁻ times it).
    """
    camera = SimCam(config.geometry)
    cdir = outdir / "truth" / "calibs"
    cdir.mkdir(parents=True, exist_ok=True)
    geom = config.geometry
    bias = bias_structure_adu(geom, detector)
    gain = np.empty_like(bias)
    for amp in camera.amplifier_parameters(detector):
        _, _, x0, x1 = amp.detector_section
        gain[:, x0:x1] = amp.gain

    def save(name: str, hdus: list[tuple[str, np.ndarray, str]]) -> None:
        hl = [fits.PrimaryHDU()]
        hl[0].header["DETECTOR"] = detector
        for extname, data, bunit in hdus:
            hdu = fits.ImageHDU(np.asarray(data, dtype=np.float32), name=extname)
            hdu.header["BUNIT"] = bunit
            hl.append(hdu)
        tmp = cdir / f"{name}_{detector:03d}.fits.part"
        fits.HDUList(hl).writeto(tmp, overwrite=True)
        os.replace(tmp, cdir / f"{name}_{detector:03d}.fits")

    save("bias", [("ADU", bias, "adu"), ("ELECTRONS", bias * gain, "electron")])
    save("dark", [("DARK", dark_current_map(geom, detector), "electron/s")])
    for band in config.bands:
        save(f"flat_{band}", [("FLAT", flat_field(geom, detector, band), "")])
    save("fringe", [("FRINGE", fringe_pattern(geom, detector), "")])
