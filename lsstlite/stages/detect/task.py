"""Task: merge the coadd detections of every band of a patch (``merged_det``)."""

from __future__ import annotations

import pandas as pd
import xarray as xr
from pydantic import Field

from lsstlite.pipe import Config, Input, Output, Task, TaskResult
from lsstlite.stages.detect.ops import merge_detections

__all__ = ["MergeDetectionsConfig", "MergeDetectionsTask"]

_PATCH = ("skymap", "tract", "patch")
_PATCH_BAND = (*_PATCH, "band")


class MergeDetectionsConfig(Config):
    """How peaks and footprints of several bands become one list."""

    priority: list[str] = Field(
        default=["i", "r", "z", "y", "g", "u"],
        description="band order: the first band's peak positions win",
    )
    match_radius_arcsec: float = Field(0.5, gt=0, description="peaks closer are one object")
    n_sigma: float = Field(5.0, gt=0, description="footprint threshold if DETECTED is unset")
    min_radius_px: int = Field(3, ge=1, description="radius of the footprint made at each peak")
    grow_px: int = Field(0, ge=0, description="grow merged footprints by this radius")


class MergeDetectionsTask(Task):
    """DMTN-023 ``mergeCoaddDetections``: one peak list and footprint set per patch."""

    ConfigClass = MergeDetectionsConfig
    dimensions = _PATCH
    inputs = {
        "detections": Input("coadd_det", _PATCH_BAND, storage_class="Table", multiple=True),
        "coadds": Input("coadd", _PATCH_BAND, multiple=True, doc="footprints (DETECTED)"),
    }
    outputs = {"merged": Output("merged_det", _PATCH, storage_class="Table")}

    def run(self, detections: list[pd.DataFrame], coadds: list[xr.Dataset]) -> TaskResult:  # type: ignore[override]
        c = self.config
        assert isinstance(c, MergeDetectionsConfig)
        merged = merge_detections(
            detections,
            coadds,
            priority=c.priority,
            match_radius_arcsec=c.match_radius_arcsec,
            n_sigma=c.n_sigma,
            min_radius_px=c.min_radius_px,
            grow_px=c.grow_px,
        )
        return TaskResult(merged=merged)
