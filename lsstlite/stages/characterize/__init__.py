"""Single-frame characterisation: background, detection, cosmic rays, PSF, measurement."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lsstlite._lazy import lazy_exports

if TYPE_CHECKING:
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

# Imported on first use: the coadd and the measurement import this package's kernels
# without the whole stage (sep, scipy.stats, the ISR and calibration stages).
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "config": [
            "BackgroundConfig",
            "CharacterizeConfig",
            "CosmicRayConfig",
            "DetectionConfig",
            "MeasurementConfig",
            "PsfConfig",
            "StarSelectionConfig",
        ],
        "ops": [
            "CharacterizeResult",
            "PsfFitError",
            "characterize_exposure",
            "detect_sources",
            "fit_psf",
            "measure_sources",
            "repair_cosmic_rays",
            "select_psf_stars",
            "subtract_background",
        ],
        "task": ["CharacterizeTask"],
    },
)
