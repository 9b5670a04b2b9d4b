"""Warping: resample calexps onto patch grids (Lanczos3 by default), lazily per chunk."""

from lsstlite.stages.warp.ops import (
    WarpError,
    matching_kernel,
    psf_match_warp,
    warp_exposure,
)
from lsstlite.stages.warp.psf import WarpedPsf, adaptive_moments

__all__ = [
    "WarpError",
    "WarpedPsf",
    "adaptive_moments",
    "matching_kernel",
    "psf_match_warp",
    "warp_exposure",
]
