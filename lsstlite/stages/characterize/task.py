"""``CharacterizeTask``: background, cosmic rays, detection, PSF and measurement of a detector."""

from __future__ import annotations

import dask
import xarray as xr
from dask.delayed import Delayed

from lsstlite.pipe import Input, Output, Task, TaskResult
from lsstlite.stages.characterize.config import CharacterizeConfig
from lsstlite.stages.characterize.ops import CharacterizeResult, characterize_exposure

__all__ = ["CharacterizeTask"]

DETECTOR = ("instrument", "exposure", "detector")


class CharacterizeTask(Task):
    """Characterise a post-ISR exposure (LSST's ``characterizeImage``).

    Outputs ``icexp`` (background-subtracted, cosmic-ray-repaired exposure carrying the
    PSF model and ``attrs["characterize"]``), ``background`` (the subtracted sky) and
    ``icsrc`` (the source table in image units, before calibration).
    """

    ConfigClass = CharacterizeConfig
    dimensions = DETECTOR
    inputs = {"post_isr": Input("post_isr", DETECTOR, doc="exposure after ISR (electrons)")}
    outputs = {
        "icexp": Output("icexp", DETECTOR, doc="characterised exposure (PSF, CR repaired)"),
        "background": Output("background", DETECTOR, doc="subtracted background model"),
        "icsrc": Output("icsrc", DETECTOR, storage_class="Table", doc="uncalibrated sources"),
    }

    def run(self, post_isr: xr.Dataset) -> TaskResult:
        """Characterise one detector; see
        :func:`lsstlite.stages.characterize.characterize_exposure`."""
        result = characterize_exposure(post_isr, self.config)  # type: ignore[arg-type]
        if isinstance(result, Delayed):
            # One whole-detector block: run it here, in this worker thread.
            (result,) = dask.compute(result, scheduler="synchronous")
        assert isinstance(result, CharacterizeResult)
        return TaskResult(icexp=result.exposure, background=result.background, icsrc=result.sources)
