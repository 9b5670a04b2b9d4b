"""Sky maps: build a discrete or a full-sky rings sky map and find the patches of a calexp.

The geometry objects (:class:`SkyMap`, :class:`TractInfo`, :class:`PatchInfo`,
:class:`PatchGeometry`) live in :mod:`lsstlite.data.skymap`; this stage builds them.
"""

from typing import TYPE_CHECKING

from lsstlite._lazy import lazy_exports

if TYPE_CHECKING:
    from lsstlite.data.skymap import PatchGeometry, PatchInfo, SkyMap, TractInfo
    from lsstlite.stages.skymap.ops import (
        exposure_corners,
        make_discrete_skymap,
        make_rings_skymap,
        make_skymap,
        patches_for_exposure,
    )

__all__ = [
    "PatchGeometry",
    "PatchInfo",
    "SkyMap",
    "TractInfo",
    "exposure_corners",
    "make_discrete_skymap",
    "make_rings_skymap",
    "make_skymap",
    "patches_for_exposure",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "lsstlite.data.skymap": ["PatchGeometry", "PatchInfo", "SkyMap", "TractInfo"],
        "ops": [
            "exposure_corners",
            "make_discrete_skymap",
            "make_rings_skymap",
            "make_skymap",
            "patches_for_exposure",
        ],
    },
)
