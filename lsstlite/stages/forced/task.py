"""``ForcedPhotCcdTask``: forced photometry of the object table on each calexp
(``forced_src``, LSST's ``forcedPhotCcd``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import xarray as xr
from pydantic import Field

from lsstlite.pipe import Config, Input, Output, Task, TaskResult
from lsstlite.stages.forced.ops import forced_photometry_ccd

__all__ = ["ForcedPhotCcdConfig", "ForcedPhotCcdTask"]

DETECTOR = ("instrument", "exposure", "detector")


class ForcedPhotCcdConfig(Config):
    """Which object tables give the positions."""

    skymap_name: str = Field(
        "discrete", description="the sky map whose tracts' object tables are measured"
    )


class ForcedPhotCcdTask(Task):
    """PSF fluxes of the objects of the tracts' object tables at their coadd positions on
    one calexp (see :func:`~lsstlite.stages.forced.forced_photometry_ccd`): with every
    calexp, each object's light curve."""

    ConfigClass = ForcedPhotCcdConfig
    config: ForcedPhotCcdConfig
    dimensions = DETECTOR
    inputs = {
        "calexp": Input("calexp", DETECTOR, doc="calibrated exposure"),
        "objects": Input(
            "object", ("skymap", "tract"), storage_class="Table", multiple=True,
            doc="object tables of the sky map's tracts (those off the detector add nothing)",
        ),
    }  # fmt: skip
    outputs = {
        "forced": Output("forced_src", DETECTOR, storage_class="Table", doc="forced PSF fluxes")
    }

    def group_quanta(
        self,
        records: Mapping[str, list[dict[str, Any]]],
        *,
        butler: Any,
        collections: Sequence[str],
    ) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]]:
        """One quantum per calexp, with the object tables of ``skymap_name``."""
        objects = [r for r in records["objects"] if r.get("skymap") == self.config.skymap_name]
        plans: list[tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]] = []
        for rec in records["calexp"]:
            data_id = {d: rec[d] for d in DETECTOR}
            implied: dict[str, Any] = {
                k: rec[k] for k in ("band", "physical_filter", "day_obs", "mjd") if k in rec
            }
            plans.append((data_id, implied, {"calexp": [rec], "objects": objects}))
        return plans

    def run(self, calexp: xr.Dataset, objects: list[pd.DataFrame]) -> TaskResult:  # type: ignore[override]
        return TaskResult(forced=forced_photometry_ccd(calexp, objects))
