"""Forced photometry on calibrated exposures: light curves of the object table."""

from lsstlite.stages.forced.ops import FORCED_SRC_COLUMNS, forced_photometry_ccd
from lsstlite.stages.forced.task import ForcedPhotCcdConfig, ForcedPhotCcdTask

__all__ = [
    "FORCED_SRC_COLUMNS",
    "ForcedPhotCcdConfig",
    "ForcedPhotCcdTask",
    "forced_photometry_ccd",
]
