"""Single-frame calibration: reference matching, WCS and zero point, ``calexp`` and ``src``."""

from lsstlite.stages.calibrate.ops import (
    AstrometryConfig,
    CalibrateConfig,
    CalibrateResult,
    CalibrationError,
    ColourTerm,
    PhotometryConfig,
    calibrate_exposure,
    fit_photometry,
    fit_wcs,
    match_to_reference,
)
from lsstlite.stages.calibrate.task import CalibrateTask

__all__ = [
    "AstrometryConfig",
    "CalibrateConfig",
    "CalibrateResult",
    "CalibrateTask",
    "CalibrationError",
    "ColourTerm",
    "PhotometryConfig",
    "calibrate_exposure",
    "fit_photometry",
    "fit_wcs",
    "match_to_reference",
]
