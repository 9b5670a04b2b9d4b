"""Warping: resample calexps onto patch grids (Lanczos3 by default), lazily per chunk."""

from typing import TYPE_CHECKING

from lsstlite._lazy import lazy_exports

if TYPE_CHECKING:
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

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ops": ["WarpError", "matching_kernel", "psf_match_warp", "warp_exposure"],
        "psf": ["WarpedPsf", "adaptive_moments"],
    },
)
