"""Single-frame characterisation: background, detection, cosmic rays, PSF, measurement."""

from lsstlite.stages.characterize.config import (
    BackgroundConfig,
    CharacterizeConfig,
    CosmicRayConfig,
    DetectionConfig,
    MeasurementConfig,
    PsfConfig,
    StarSelectionConfig,
)
from lsstlite.stages.characterize.ops import (
    CharacterizeResult,
    PsfFitError,
    characterize_exposure,
    detect_sources,
    fit_psf,
    measure_sources,
    repair_cosmic_rays,
    select_psf_stars,
    subtract_background,
)
from lsstlite.stages.characterize.task import CharacterizeTask

__all__ = [
    "BackgroundConfig",
    "CharacterizeConfig",
    "CharacterizeResult",
    "CharacterizeTask",
    "CosmicRayConfig",
    "DetectionConfig",
    "MeasurementConfig",
    "PsfConfig",
    "PsfFitError",
    "StarSelectionConfig",
    "characterize_exposure",
    "detect_sources",
    "fit_psf",
    "measure_sources",
    "repair_cosmic_rays",
    "select_psf_stars",
    "subtract_background",
]
