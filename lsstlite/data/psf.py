"""Point-spread-function models that serialise to plain JSON.

Every model answers the same questions: the PSF image at a position (pixel-integrated,
normalised to unit sum, centred on a fractional pixel position), its second moments and
its FWHM. Models are immutable and round-trip through :meth:`PsfModel.to_dict` /
:func:`psf_from_dict`, which is how exposures carry them in their attrs.

Ellipticity convention (used everywhere in lsstlite): the *distortion*
``e1 = (Ixx - Iyy) / (Ixx + Iyy)``, ``e2 = 2 Ixy / (Ixx + Iyy)`` of the second moments.
For elliptical isophotes of axis ratio ``q``, ``|e| = (1 - q²) / (1 + q²)``. An
elliptical profile is a circular one sheared with a unit-determinant matrix, so the
``fwhm`` parameter is the geometric mean of the major- and minor-axis FWHM.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "GaussianPsf",
    "MoffatPsf",
    "PsfModel",
    "VaryingMoffatPsf",
    "psf_from_dict",
    "register_psf",
    "shape_matrix",
]

_REGISTRY: dict[str, type[PsfModel]] = {}

#: Models defined outside this module: imported on first use, so that a dataset read in a
#: fresh process (a notebook, a worker) rebuilds its PSF without the caller importing the
#: stage that made it.
_LAZY_MODULES = {
    "pixel": "lsstlite.data.psf_pixel",
    "warped": "lsstlite.stages.warp.psf",
    "coadd": "lsstlite.stages.coadd.psf",
}

#: Oversampling used to integrate analytic profiles over pixels.
DEFAULT_OVERSAMPLE = 5


def register_psf(cls: type[PsfModel]) -> type[PsfModel]:
    """Class decorator: make a PSF model loadable by :func:`psf_from_dict`."""
    _REGISTRY[cls.kind] = cls
    return cls


def psf_from_dict(data: dict[str, Any]) -> PsfModel:
    """Rebuild a PSF model from :meth:`PsfModel.to_dict` output.

    Raises
    ------
    ValueError
        If ``data`` has no ``"kind"`` or names a model that is not registered.
    """
    kind = data.get("kind")
    if kind not in _REGISTRY and kind in _LAZY_MODULES:
        importlib.import_module(_LAZY_MODULES[str(kind)])
    if kind not in _REGISTRY:
        raise ValueError(f"unknown PSF model kind {kind!r}; known kinds: {sorted(_REGISTRY)}")
    return _REGISTRY[str(kind)].from_dict(data)


def shape_matrix(e1: float, e2: float) -> NDArray[np.float64]:
    """Unit-determinant 2×2 matrix that shears a circular profile to ellipticity (e1, e2).

    The second-moment matrix of the sheared profile is ``s * M`` where ``s`` is the
    circular profile's (one-axis) second moment.
    """
    e = math.hypot(e1, e2)
    if e >= 1.0:
        raise ValueError(f"ellipticity |e| = {e:.3f} must be < 1")
    norm = math.sqrt(1.0 - e * e)
    return np.array([[1.0 + e1, e2], [e2, 1.0 - e1]]) / norm


class PsfModel:
    """Base class: a PSF that can be drawn at any pixel position."""

    kind: ClassVar[str] = "base"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (round-trips through :func:`psf_from_dict`)."""
        data = asdict(self)  # type: ignore[call-overload]
        data["kind"] = self.kind
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PsfModel:
        kwargs = {k: v for k, v in data.items() if k != "kind"}
        return cls(**kwargs)

    def params_at(self, x: float, y: float) -> PsfModel:
        """The (constant) model valid at pixel position ``(x, y)``."""
        return self

    def profile(self, dx: NDArray[np.float64], dy: NDArray[np.float64]) -> NDArray[np.float64]:
        """Surface density (per pixel², unit integral) at offsets from the centre."""
        raise NotImplementedError

    def image(
        self,
        x: float,
        y: float,
        *,
        size: int = 25,
        center: tuple[float, float] | None = None,
        oversample: int = DEFAULT_OVERSAMPLE,
    ) -> NDArray[np.float64]:
        """Pixel-integrated PSF image of the model valid at ``(x, y)``.

        Parameters
        ----------
        x, y
            Position (0-based pixel, parent frame) where the model is evaluated.
        size
            Side of the square stamp (odd sizes keep the centre on the middle pixel).
        center
            Position of the PSF centre inside the stamp (0-based, pixel centres at
            integers); default: the middle pixel shifted by the fractional part of x, y.
        oversample
            Sub-pixels per pixel side used to integrate over each pixel.

        Returns
        -------
        numpy.ndarray
            ``(size, size)`` float64 image; it sums to the fraction of flux inside the
            stamp (not renormalised, so large stamps approach 1).
        """
        model = self.params_at(x, y)
        half = size // 2
        if center is None:
            cx = half + (x - math.floor(x + 0.5))
            cy = half + (y - math.floor(y + 0.5))
        else:
            cx, cy = center
        return _integrate(model.profile, size, size, cx, cy, oversample)

    def second_moments(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float, float]:
        """Unweighted analytic second moments ``(ixx, iyy, ixy)`` in pixel²."""
        raise NotImplementedError

    def fwhm_at(self, x: float = 0.0, y: float = 0.0) -> float:
        """FWHM in pixels (geometric mean of major and minor axes) at ``(x, y)``."""
        raise NotImplementedError

    def ellipticity_at(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float]:
        """Distortion ellipticity ``(e1, e2)`` at ``(x, y)``."""
        raise NotImplementedError


def _integrate(
    profile: Callable[[NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]],
    ny: int,
    nx: int,
    cx: float,
    cy: float,
    oversample: int,
) -> NDArray[np.float64]:
    """Integrate ``profile`` over pixels by midpoint sampling on an oversampled grid."""
    n = int(oversample)
    sub = (np.arange(n) + 0.5) / n - 0.5
    xs = (np.arange(nx)[:, None] + sub[None, :]).ravel() - cx
    ys = (np.arange(ny)[:, None] + sub[None, :]).ravel() - cy
    values = profile(xs[None, :], ys[:, None])
    return values.reshape(ny, n, nx, n).mean(axis=(1, 3))


@dataclass(frozen=True)
class _Elliptical:
    """Shared parameters of sheared circular profiles."""

    fwhm: float
    e1: float = 0.0
    e2: float = 0.0

    def _r2(self, dx: NDArray[np.float64], dy: NDArray[np.float64]) -> NDArray[np.float64]:
        inv = np.linalg.inv(shape_matrix(self.e1, self.e2))
        return inv[0, 0] * dx * dx + 2.0 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy

    def fwhm_at(self, x: float = 0.0, y: float = 0.0) -> float:
        return self.fwhm

    def ellipticity_at(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float]:
        return (self.e1, self.e2)

    def _moments(self, s: float) -> tuple[float, float, float]:
        m = s * shape_matrix(self.e1, self.e2)
        return float(m[0, 0]), float(m[1, 1]), float(m[0, 1])


@register_psf
@dataclass(frozen=True)
class GaussianPsf(_Elliptical, PsfModel):  # type: ignore[misc]
    """Elliptical Gaussian; ``fwhm`` in pixels."""

    kind: ClassVar[str] = "gaussian"

    @property
    def sigma(self) -> float:
        return self.fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))

    def profile(self, dx: NDArray[np.float64], dy: NDArray[np.float64]) -> NDArray[np.float64]:
        s2 = self.sigma**2
        return np.exp(-0.5 * self._r2(dx, dy) / s2) / (2.0 * math.pi * s2)

    def second_moments(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float, float]:
        return self._moments(self.sigma**2)


@register_psf
@dataclass(frozen=True)
class MoffatPsf(_Elliptical, PsfModel):  # type: ignore[misc]
    """Elliptical Moffat ``(1 + r²/α²)^-β``; ``fwhm`` in pixels, ``beta`` > 2 for finite moments."""

    kind: ClassVar[str] = "moffat"
    beta: float = 3.0

    @property
    def alpha(self) -> float:
        return self.fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    def profile(self, dx: NDArray[np.float64], dy: NDArray[np.float64]) -> NDArray[np.float64]:
        a2 = self.alpha**2
        norm = (self.beta - 1.0) / (math.pi * a2)
        return norm * (1.0 + self._r2(dx, dy) / a2) ** (-self.beta)

    def second_moments(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float, float]:
        if self.beta <= 2.0:
            raise ValueError("a Moffat profile with beta <= 2 has infinite second moments")
        return self._moments(self.alpha**2 / (2.0 * (self.beta - 2.0)))


def _poly2(coeffs: list[float], u: float, v: float) -> float:
    """Evaluate ``c0 + c1 u + c2 v + c3 u² + c4 u v + c5 v²`` (missing terms are zero)."""
    terms = (1.0, u, v, u * u, u * v, v * v)
    return float(sum(c * t for c, t in zip(coeffs, terms, strict=False)))


@register_psf
@dataclass(frozen=True)
class VaryingMoffatPsf(PsfModel):
    """Moffat whose FWHM and ellipticity vary as quadratic polynomials across a detector.

    Each of ``fwhm``, ``e1`` and ``e2`` is a list of up to six coefficients of
    ``1, u, v, u², u v, v²`` with ``u = (x - x0) / scale``, ``v = (y - y0) / scale``.
    """

    kind: ClassVar[str] = "varying_moffat"
    fwhm_coeffs: list[float] = field(default_factory=lambda: [3.0])
    e1_coeffs: list[float] = field(default_factory=lambda: [0.0])
    e2_coeffs: list[float] = field(default_factory=lambda: [0.0])
    beta: float = 3.0
    x0: float = 0.0
    y0: float = 0.0
    scale: float = 1000.0

    def params_at(self, x: float, y: float) -> MoffatPsf:
        u, v = (x - self.x0) / self.scale, (y - self.y0) / self.scale
        return MoffatPsf(
            fwhm=_poly2(self.fwhm_coeffs, u, v),
            e1=_poly2(self.e1_coeffs, u, v),
            e2=_poly2(self.e2_coeffs, u, v),
            beta=self.beta,
        )

    def profile(self, dx: NDArray[np.float64], dy: NDArray[np.float64]) -> NDArray[np.float64]:
        return self.params_at(self.x0, self.y0).profile(dx, dy)

    def second_moments(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float, float]:
        return self.params_at(x, y).second_moments()

    def fwhm_at(self, x: float = 0.0, y: float = 0.0) -> float:
        return self.params_at(x, y).fwhm

    def ellipticity_at(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float]:
        return self.params_at(x, y).ellipticity_at()
