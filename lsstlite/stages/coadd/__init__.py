"""Coaddition: streaming, chunk-parallel warp + combine with CompareWarp artifact rejection."""

from typing import TYPE_CHECKING

from lsstlite._lazy import lazy_exports

if TYPE_CHECKING:
    from lsstlite.stages.coadd.ops import (
        ArtifactConfig,
        coadd_exposures,
        input_weights,
        select_inputs,
    )
    from lsstlite.stages.coadd.psf import CoaddPsf

__all__ = ["ArtifactConfig", "CoaddPsf", "coadd_exposures", "input_weights", "select_inputs"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ops": ["ArtifactConfig", "coadd_exposures", "input_weights", "select_inputs"],
        "psf": ["CoaddPsf"],
    },
)
