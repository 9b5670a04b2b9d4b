"""Coaddition: streaming, chunk-parallel warp + combine with CompareWarp artifact rejection."""

from lsstlite.stages.coadd.ops import (
    ArtifactConfig,
    coadd_exposures,
    input_weights,
    select_inputs,
)
from lsstlite.stages.coadd.psf import CoaddPsf

__all__ = ["ArtifactConfig", "CoaddPsf", "coadd_exposures", "input_weights", "select_inputs"]
