"""Sky correction: a smooth background over a visit's whole focal plane (``skyCorr``)."""

from lsstlite.stages.skycorr.ops import (
    SKY_BAD_PLANES,
    SkyModel,
    apply_sky_model,
    binned_sky,
    fit_sky_model,
    pair_backgrounds,
    tangent_plane,
)
from lsstlite.stages.skycorr.task import SkyCorrectionConfig, SkyCorrectionTask

__all__ = [
    "SKY_BAD_PLANES",
    "SkyCorrectionConfig",
    "SkyCorrectionTask",
    "SkyModel",
    "apply_sky_model",
    "binned_sky",
    "fit_sky_model",
    "pair_backgrounds",
    "tangent_plane",
]
