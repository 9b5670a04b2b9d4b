"""``MakeWarpTask``: one visit's calexps warped onto a patch (optional output).

Coadds do not need it (they warp on the fly, chunk by chunk); run it to keep warps for
inspection. Quanta come from the same spatial join as the coadd's, split per visit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import xarray as xr
from pydantic import Field

from lsstlite.pipe import Config, Input, Output, PrerequisiteInput, Task, TaskResult
from lsstlite.stages.skymap.planning import load_skymap, plan_patch_quanta

__all__ = ["MakeWarpConfig", "MakeWarpTask"]

_DET = ("instrument", "exposure", "detector")
_WARP = ("skymap", "tract", "patch", "instrument", "visit")


class MakeWarpConfig(Config):
    skymap_name: str = Field("discrete", description="sky map used to place calexps on patches")
    kernel: Literal["lanczos3", "lanczos4", "lanczos2", "bilinear"] = "lanczos3"
    chunk_size: int = Field(512, gt=0)
    grid_step_px: int = 16


class MakeWarpTask(Task):
    """Warp the detectors of one visit onto one patch (NO_DATA where none covers)."""

    ConfigClass = MakeWarpConfig
    config: MakeWarpConfig
    dimensions = _WARP
    inputs = {
        "calexps": Input("calexp", _DET, multiple=True),
        "skymap": PrerequisiteInput("skymap", ("skymap",), storage_class="Json"),
    }
    outputs = {"warp": Output("warp", _WARP)}

    def group_quanta(
        self,
        records: Mapping[str, list[dict[str, Any]]],
        *,
        butler: Any,
        collections: Sequence[str],
    ) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]]:
        """Calexps × the patches they overlap, per visit."""
        skymap = load_skymap(butler, self.config.skymap_name, collections)
        return plan_patch_quanta(
            records["calexps"],
            input_name="calexps",
            skymap=skymap,
            butler=butler,
            collections=collections,
            split_by=("instrument", "exposure"),
        )

    def run(  # type: ignore[override]
        self,
        calexps: list[xr.Dataset],
        skymap: dict[str, Any],
        data_id: Mapping[str, Any] | None = None,
    ) -> TaskResult:
        # A visit's detectors do not overlap: a weighted mean with equal weights places
        # each detector's pixels, and the CoaddPsf picks the detector covering a position.
        from lsstlite.stages.coadd.ops import coadd_exposures
        from lsstlite.stages.coadd.task import patch_of

        cfg = self.config
        warp = coadd_exposures(
            calexps,
            patch_of(skymap, data_id, self.label),
            method="mean",
            weights=[1.0] * len(calexps),
            kernel=cfg.kernel,
            chunks=(cfg.chunk_size, cfg.chunk_size),
            bad_mask_planes=("NO_DATA",),
            grid_step_px=cfg.grid_step_px,
        )
        return TaskResult(warp=warp)
