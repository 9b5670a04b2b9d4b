"""Master calibrations: bias, dark, flat, defects and fringe frames from calibration raws."""

from lsstlite.stages.calibs.task import (
    BiasTask,
    CalibConfig,
    DarkTask,
    DefectsTask,
    FlatNormTask,
    FlatTask,
    FringeConfig,
    FringeTask,
)

__all__ = [
    "BiasTask",
    "CalibConfig",
    "DarkTask",
    "DefectsTask",
    "FlatNormTask",
    "FlatTask",
    "FringeConfig",
    "FringeTask",
]
