"""The coadd PSF: the weighted sum of the warped PSFs of the inputs covering a position.

CompareWarp-style artifact rejection masks whole artifacts instead of clipping pixels, so
at every pixel without INEXACT_PSF the coadd is exactly ``Σ wᵢ warpᵢ / Σ wᵢ`` over the
inputs whose footprint covers it, and its PSF is ``Σ wᵢ PSFᵢ / Σ wᵢ`` over the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from lsstlite.data.psf import PsfModel, register_psf
from lsstlite.data.wcs import WcsCards, cached_wcs
from lsstlite.stages.warp.psf import WarpedPsf, adaptive_moments, moments_summary

__all__ = ["CoaddPsf"]


@register_psf
@dataclass(frozen=True)
class CoaddPsf(PsfModel):
    """Weighted sum of warped input PSFs; evaluable anywhere an input covers.

    Attributes
    ----------
    components
        One dict per input: ``psf`` (model dict, detector pixels), ``wcs_in`` (detector
        WCS cards), ``det_box`` (``[x0, y0, x1, y1]`` detector pixels, end exclusive),
        ``weight``, and the input's ``visit`` / ``detector``.
    wcs_out
        WCS cards of the coadd grid.

    Notes
    -----
    :meth:`second_moments`, :meth:`fwhm_at` and :meth:`ellipticity_at` are adaptive
    moments of the drawn stamp, as measured on stars (LSST's convention).
    """

    kind: ClassVar[str] = "coadd"
    components: list[dict[str, Any]] = field(default_factory=list)
    wcs_out: WcsCards = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "components": self.components, "wcs_out": self.wcs_out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoaddPsf:
        return cls([dict(c) for c in data["components"]], dict(data["wcs_out"]))

    def _warped(self, k: int) -> WarpedPsf:
        """Component ``k`` as a :class:`WarpedPsf`, built once and kept."""
        cache: dict[int, WarpedPsf] = self.__dict__.setdefault("_warped_cache", {})
        if k not in cache:
            comp = self.components[k]
            cache[k] = WarpedPsf(comp["psf"], comp["wcs_in"], self.wcs_out)
        return cache[k]

    def covering(self, x: float, y: float) -> list[int]:
        """Indices of the components whose detector contains coadd pixel ``(x, y)``."""
        ra, dec = cached_wcs(self.wcs_out).all_pix2world([x], [y], 0)
        out = []
        for k, comp in enumerate(self.components):
            xi, yi = cached_wcs(comp["wcs_in"]).all_world2pix(ra, dec, 0, quiet=True)
            x0, y0, x1, y1 = comp["det_box"]
            if x0 - 0.5 <= xi[0] < x1 - 0.5 and y0 - 0.5 <= yi[0] < y1 - 0.5:
                out.append(k)
        return out

    def image(
        self,
        x: float,
        y: float,
        *,
        size: int = 25,
        center: tuple[float, float] | None = None,
        oversample: int = 5,
    ) -> NDArray[np.float64]:
        idx = self.covering(x, y)
        if not idx:
            raise ValueError(f"CoaddPsf: no input covers coadd pixel ({x}, {y})")
        total = np.zeros((size, size))
        wsum = 0.0
        for k in idx:
            comp = self.components[k]
            warped = self._warped(k)
            total += comp["weight"] * warped.image(
                x, y, size=size, center=center, oversample=oversample
            )
            wsum += comp["weight"]
        return total / wsum

    def second_moments(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float, float]:
        _, _, ixx, iyy, ixy = adaptive_moments(self.image(x, y, size=41, center=(20.0, 20.0)))
        return ixx, iyy, ixy

    def fwhm_at(self, x: float = 0.0, y: float = 0.0) -> float:
        return moments_summary(*self.second_moments(x, y))[0]

    def ellipticity_at(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float]:
        _, e1, e2 = moments_summary(*self.second_moments(x, y))
        return e1, e2
