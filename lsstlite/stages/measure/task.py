"""Tasks of the multi-band measurement: deblend + measure, reference band, forced, objects."""

from __future__ import annotations

import pandas as pd
import xarray as xr
from pydantic import Field

from lsstlite.data.objects import APERTURE_RADII_PX
from lsstlite.pipe import Config, Input, Output, Task, TaskResult
from lsstlite.stages.measure.ops import (
    DEFAULT_REFERENCE_FLAGS,
    choose_reference,
    deblend_measure_children,
    forced_photometry,
    make_object_table,
)

__all__ = [
    "DeblendMeasureConfig",
    "DeblendMeasureTask",
    "ForcedPhotometryTask",
    "MakeObjectTableConfig",
    "MakeObjectTableTask",
    "MergeMeasurementsConfig",
    "MergeMeasurementsTask",
]

_PATCH = ("skymap", "tract", "patch")
_PATCH_BAND = (*_PATCH, "band")
_TRACT = ("skymap", "tract")


class DeblendMeasureConfig(Config):
    """Deblending and measurement (shared by ForcedPhotometryTask: use the same values)."""

    aperture_radii_px: list[int] = Field(
        default=list(APERTURE_RADII_PX), description="circular aperture radii (pixels)"
    )
    do_cmodel: bool = Field(True, description="fit exponential + de Vaucouleurs models")
    max_peaks: int = Field(50, ge=1, description="footprints with more peaks: no templates")
    point_chi2: float = Field(
        3.0, ge=0, description="reduced χ² below which a peak gets a PSF template (0: never)"
    )
    noise_seed: int = Field(1, description="seed of the noise replacing neighbours")


def _measure_kwargs(c: DeblendMeasureConfig) -> dict[str, object]:
    return {
        "aperture_radii_px": c.aperture_radii_px,
        "do_cmodel": c.do_cmodel,
        "max_peaks": c.max_peaks,
        "point_chi2": c.point_chi2,
        "noise_seed": c.noise_seed,
    }


class DeblendMeasureTask(Task):
    """DMTN-023 ``deblendCoaddSources`` + ``measureCoaddSources`` on one band."""

    ConfigClass = DeblendMeasureConfig
    dimensions = _PATCH_BAND
    inputs = {
        "coadd": Input("coadd", _PATCH_BAND),
        "merged": Input("merged_det", _PATCH, storage_class="Table"),
    }
    outputs = {
        "measurement": Output("coadd_meas", _PATCH_BAND, storage_class="Table"),
        "deblended": Output("coadd_deblend", _PATCH_BAND, storage_class="Table"),
    }

    def run(self, coadd: xr.Dataset, merged: pd.DataFrame) -> TaskResult:  # type: ignore[override]
        assert isinstance(self.config, DeblendMeasureConfig)
        table, children = deblend_measure_children(
            coadd,
            merged,
            **_measure_kwargs(self.config),  # type: ignore[arg-type]
        )
        return TaskResult(measurement=table, deblended=children)


class MergeMeasurementsConfig(Config):
    """How the reference band of each object is chosen."""

    priority: list[str] = Field(
        default=["i", "r", "z", "y", "g", "u"], description="band order of preference"
    )
    min_snr: float = Field(10.0, description="minimum PSF-flux S/N of a reference band")
    flags: list[str] = Field(
        default=list(DEFAULT_REFERENCE_FLAGS), description="flags that disqualify a band"
    )


class MergeMeasurementsTask(Task):
    """DMTN-023 ``mergeCoaddMeasurements``: the reference band per object (``coadd_ref``)."""

    ConfigClass = MergeMeasurementsConfig
    dimensions = _PATCH
    inputs = {
        "measurements": Input("coadd_meas", _PATCH_BAND, storage_class="Table", multiple=True)
    }
    outputs = {"reference": Output("coadd_ref", _PATCH, storage_class="Table")}

    def run(self, measurements: list[pd.DataFrame]) -> TaskResult:  # type: ignore[override]
        c = self.config
        assert isinstance(c, MergeMeasurementsConfig)
        ref = choose_reference(measurements, priority=c.priority, min_snr=c.min_snr, flags=c.flags)
        return TaskResult(reference=ref)


class ForcedPhotometryTask(Task):
    """DMTN-023 ``forcedPhotCoadd``: every band at the reference positions and shapes."""

    ConfigClass = DeblendMeasureConfig
    dimensions = _PATCH_BAND
    inputs = {
        "coadd": Input("coadd", _PATCH_BAND),
        "merged": Input("merged_det", _PATCH, storage_class="Table"),
        "reference": Input("coadd_ref", _PATCH, storage_class="Table"),
        "deblended": Input("coadd_deblend", _PATCH_BAND, storage_class="Table"),
    }
    outputs = {"forced": Output("coadd_forced", _PATCH_BAND, storage_class="Table")}

    def run(  # type: ignore[override]
        self,
        coadd: xr.Dataset,
        merged: pd.DataFrame,
        reference: pd.DataFrame,
        deblended: pd.DataFrame,
    ) -> TaskResult:
        assert isinstance(self.config, DeblendMeasureConfig)
        table = forced_photometry(
            coadd,
            merged,
            reference,
            deblended=deblended,
            **_measure_kwargs(self.config),  # type: ignore[arg-type]
        )
        return TaskResult(forced=table)


class MakeObjectTableConfig(Config):
    """The tract's object table."""

    bands: list[str] | None = Field(None, description="bands in the table (default: all)")
    aperture_radii_px: list[int] = Field(
        default=list(APERTURE_RADII_PX), description="aperture radii (as measured)"
    )
    duplicate_radius_arcsec: float = Field(
        0.5, gt=0, description="copies of one object in overlapping patches"
    )


class MakeObjectTableTask(Task):
    """One row per primary object of a tract, forced fluxes per band (``object``)."""

    ConfigClass = MakeObjectTableConfig
    dimensions = _TRACT
    inputs = {
        "references": Input("coadd_ref", _PATCH, storage_class="Table", multiple=True),
        "forced": Input("coadd_forced", _PATCH_BAND, storage_class="Table", multiple=True),
    }
    outputs = {"objects": Output("object", _TRACT, storage_class="Table")}

    def run(self, references: list[pd.DataFrame], forced: list[pd.DataFrame]) -> TaskResult:  # type: ignore[override]
        c = self.config
        assert isinstance(c, MakeObjectTableConfig)
        table = make_object_table(
            references,
            forced,
            bands=c.bands,
            aperture_radii_px=c.aperture_radii_px,
            duplicate_radius_arcsec=c.duplicate_radius_arcsec,
        )
        return TaskResult(objects=table)
