"""``CalibrateTask``: astrometric and photometric calibration → ``calexp`` and ``src``."""

from __future__ import annotations

import dask
import pandas as pd
import xarray as xr
from dask.delayed import Delayed

from lsstlite.pipe import Input, Output, PrerequisiteInput, Task, TaskResult
from lsstlite.stages.calibrate.ops import CalibrateConfig, CalibrateResult, calibrate_exposure

__all__ = ["CalibrateTask"]

DETECTOR = ("instrument", "exposure", "detector")


class CalibrateTask(Task):
    """Fit the WCS and the zero point against the reference catalog (LSST's
    ``calibrateImage``), and write the calibrated exposure (nJy) and source table.

    A detector with no matching reference star fails with
    :class:`~lsstlite.stages.calibrate.CalibrationError` naming its data ID; the
    executor records the failure and the run continues.
    """

    ConfigClass = CalibrateConfig
    dimensions = DETECTOR
    inputs = {
        "icexp": Input("icexp", DETECTOR, doc="characterised exposure"),
        "icsrc": Input("icsrc", DETECTOR, storage_class="Table", doc="uncalibrated sources"),
        "refcat": PrerequisiteInput(
            "refcat", (), storage_class="Table", doc="reference catalog (chain 'refcats')"
        ),
    }
    outputs = {
        "calexp": Output("calexp", DETECTOR, doc="calibrated exposure (nJy, fitted WCS, PSF)"),
        "src": Output("src", DETECTOR, storage_class="Table", doc="calibrated source table"),
    }

    def run(self, icexp: xr.Dataset, icsrc: pd.DataFrame, refcat: pd.DataFrame) -> TaskResult:
        """Calibrate one detector; see :func:`lsstlite.stages.calibrate.calibrate_exposure`."""
        result = calibrate_exposure(icexp, icsrc, refcat, self.config)  # type: ignore[arg-type]
        if isinstance(result, Delayed):
            (result,) = dask.compute(result, scheduler="synchronous")
        assert isinstance(result, CalibrateResult)
        return TaskResult(calexp=result.calexp, src=result.src)
