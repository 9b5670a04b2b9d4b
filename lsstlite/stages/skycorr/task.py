"""``SkyCorrectionTask``: the focal-plane sky model of a visit (``sky_model``)."""

from __future__ import annotations

import xarray as xr
from pydantic import Field

from lsstlite.pipe import Config, Input, Output, Task, TaskResult
from lsstlite.stages.skycorr.ops import fit_sky_model, pair_backgrounds

__all__ = ["SkyCorrectionConfig", "SkyCorrectionTask"]

DETECTOR = ("instrument", "exposure", "detector")
VISIT = ("instrument", "visit")


class SkyCorrectionConfig(Config):
    """How the focal-plane sky is fitted (see :func:`lsstlite.stages.skycorr.fit_sky_model`)."""

    bin_px: int = Field(64, ge=8, description="superpixel side (px)")
    order: int = Field(2, ge=0, le=8, description="total degree of the Legendre polynomial")
    n_sigma: float = Field(3.0, gt=0, description="clipping of pixels and superpixels")
    n_iter: int = Field(3, ge=1, description="clipping rounds of the fit")


class SkyCorrectionTask(Task):
    """Fit one smooth sky over all detectors of a visit (LSST's ``skyCorr``).

    The coadd applies it when ``assemble_coadd.do_sky_correction`` is true: each calexp
    gets its per-detector background back and the focal-plane model subtracted instead.
    """

    ConfigClass = SkyCorrectionConfig
    config: SkyCorrectionConfig
    dimensions = VISIT
    inputs = {
        "calexps": Input("calexp", DETECTOR, multiple=True, doc="calibrated exposures"),
        "backgrounds": Input(
            "background", DETECTOR, multiple=True, doc="per-detector backgrounds (counts)"
        ),
    }
    outputs = {"sky_model": Output("sky_model", VISIT, storage_class="Json", doc="focal-plane sky")}

    def run(  # type: ignore[override]
        self, calexps: list[xr.Dataset], backgrounds: list[xr.Dataset]
    ) -> TaskResult:
        c = self.config
        model = fit_sky_model(
            calexps,
            pair_backgrounds(calexps, backgrounds),
            bin_px=c.bin_px,
            order=c.order,
            n_sigma=c.n_sigma,
            n_iter=c.n_iter,
        )
        return TaskResult(sky_model=model.to_dict())
