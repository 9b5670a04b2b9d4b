"""PSF models of warped images, and the moment measurements used to describe them.

:class:`WarpedPsf` is an input PSF (in its detector's pixels) seen through the warp: at a
position of the target grid it maps the position back to the detector, draws the input
model there and resamples the stamp with the local affine approximation of the mapping
(Jacobian, exact to first order over a PSF stamp). It is what a warp carries in its
``psf`` attr, and what :class:`lsstlite.stages.coadd.CoaddPsf` sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from lsstlite.data.psf import PsfModel, psf_from_dict, register_psf
from lsstlite.data.psf_pixel import PixelPsf
from lsstlite.data.wcs import WcsCards, cached_wcs

__all__ = ["SIGMA_TO_FWHM", "WarpedPsf", "adaptive_moments", "local_affine", "moments_summary"]

#: FWHM of a Gaussian in units of its sigma.
SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


def adaptive_moments(
    stamp: NDArray[np.floating[Any]],
    *,
    center: tuple[float, float] | None = None,
    sigma_guess: float = 2.0,
    max_iter: int = 50,
) -> tuple[float, float, float, float, float]:
    """Adaptive (elliptical-Gaussian-weighted) moments of a background-free stamp.

    Returns ``(x, y, ixx, iyy, ixy)``: centroid (stamp pixels) and the second moments of
    the best-matching elliptical Gaussian (for a Gaussian, its covariance). The same
    estimator is applied to PSF models and to stars, so they compare like for like
    (LSST's SdssShape convention).

    Raises
    ------
    ValueError
        If the iteration does not converge (e.g. a stamp of pure noise).
    """
    img = np.asarray(stamp, dtype=np.float64)
    ny, nx = img.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    cx, cy = center if center is not None else ((nx - 1) / 2.0, (ny - 1) / 2.0)
    mxx = myy = sigma_guess**2
    mxy = 0.0
    for _ in range(max_iter):
        det = mxx * myy - mxy * mxy
        dx, dy = xx - cx, yy - cy
        r2 = (myy * dx * dx - 2.0 * mxy * dx * dy + mxx * dy * dy) / det
        wimg = img * np.exp(-0.5 * r2)
        s = wimg.sum()
        if not s > 0:
            raise ValueError("adaptive moments: non-positive weighted flux")
        ncx, ncy = (wimg * xx).sum() / s, (wimg * yy).sum() / s
        dx, dy = xx - ncx, yy - ncy
        wxx, wyy, wxy = (
            (wimg * dx * dx).sum() / s,
            (wimg * dy * dy).sum() / s,
            (wimg * dx * dy).sum() / s,
        )
        # Weighted moments of a Gaussian C under weight W: (C⁻¹ + W⁻¹)⁻¹ → C = (Mw⁻¹ − W⁻¹)⁻¹.
        mw = np.array([[wxx, wxy], [wxy, wyy]])
        w = np.array([[mxx, mxy], [mxy, myy]])
        try:
            c = np.linalg.inv(np.linalg.inv(mw) - np.linalg.inv(w))
        except np.linalg.LinAlgError as exc:
            raise ValueError("adaptive moments: singular moment matrix") from exc
        if not (c[0, 0] > 0 and c[1, 1] > 0 and np.linalg.det(c) > 0):
            c = 2.0 * mw  # fall back to the damped update
        done = abs(c[0, 0] - mxx) < 1e-6 * mxx and abs(c[1, 1] - myy) < 1e-6 * myy
        mxx, myy, mxy = float(c[0, 0]), float(c[1, 1]), float(c[0, 1])
        cx, cy = float(ncx), float(ncy)
        if done:
            return cx, cy, mxx, myy, mxy
    raise ValueError("adaptive moments did not converge")


def moments_summary(ixx: float, iyy: float, ixy: float) -> tuple[float, float, float]:
    """``(fwhm, e1, e2)``: Gaussian-equivalent FWHM ``2.355 det(M)^¼`` and distortion."""
    fwhm = SIGMA_TO_FWHM * (ixx * iyy - ixy * ixy) ** 0.25
    return fwhm, (ixx - iyy) / (ixx + iyy), 2.0 * ixy / (ixx + iyy)


def local_affine(
    wcs_in_cards: WcsCards, wcs_out_cards: WcsCards, x_out: float, y_out: float
) -> tuple[float, float, NDArray[np.float64]]:
    """Input position of output pixel ``(x_out, y_out)`` and ``J = d(in)/d(out)`` there."""
    return affine_from_sky(wcs_in_cards, *stencil_sky(wcs_out_cards, x_out, y_out))


def stencil_sky(
    wcs_out_cards: WcsCards, x_out: float, y_out: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Sky positions of output pixel ``(x_out, y_out)`` and of its four ±1 px neighbours
    (the stencil of :func:`affine_from_sky`; one transform shared by every input)."""
    xo = np.array([x_out, x_out + 1.0, x_out - 1.0, x_out, x_out])
    yo = np.array([y_out, y_out, y_out, y_out + 1.0, y_out - 1.0])
    ra, dec = cached_wcs(wcs_out_cards).all_pix2world(xo, yo, 0)
    return ra, dec


def affine_from_sky(
    wcs_in_cards: WcsCards, ra: NDArray[np.float64], dec: NDArray[np.float64]
) -> tuple[float, float, NDArray[np.float64]]:
    """Input position and ``J = d(in)/d(out)`` from the sky positions of a stencil."""
    xi, yi = cached_wcs(wcs_in_cards).all_world2pix(
        ra, dec, 0, tolerance=1e-8, maxiter=50, quiet=True
    )
    return affine_from_stencil(xi, yi)


def affine_from_stencil(
    xi: NDArray[np.float64], yi: NDArray[np.float64]
) -> tuple[float, float, NDArray[np.float64]]:
    """Input position and ``J`` from the input positions of the stencil of
    :func:`stencil_sky` (centre, x ± 1, y ± 1; central differences)."""
    jac = np.array(
        [
            [(xi[1] - xi[2]) / 2.0, (xi[3] - xi[4]) / 2.0],
            [(yi[1] - yi[2]) / 2.0, (yi[3] - yi[4]) / 2.0],
        ]
    )
    return float(xi[0]), float(yi[0]), jac


def _stamp_center(
    x: float, y: float, size: int, center: tuple[float, float] | None
) -> tuple[float, float]:
    if center is not None:
        return center
    half = size // 2
    return half + (x - math.floor(x + 0.5)), half + (y - math.floor(y + 0.5))


def resample_stamp(
    stamp_in: NDArray[np.float64],
    center_in: tuple[float, float],
    jac: NDArray[np.float64],
    size: int,
    center_out: tuple[float, float],
) -> NDArray[np.float64]:
    """Resample a PSF stamp through the affine map ``d_in = J d_out`` (flux conserved)."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dxo, dyo = xx - center_out[0], yy - center_out[1]
    xi = center_in[0] + jac[0, 0] * dxo + jac[0, 1] * dyo
    yi = center_in[1] + jac[1, 0] * dxo + jac[1, 1] * dyo
    out = ndimage.map_coordinates(stamp_in, [yi, xi], order=3, mode="constant", cval=0.0)
    return out * abs(float(np.linalg.det(jac)))


@register_psf
@dataclass(frozen=True)
class WarpedPsf(PsfModel):
    """An input PSF seen on a warp's grid.

    Attributes
    ----------
    psf
        The input model's dict (:meth:`PsfModel.to_dict`), in detector pixels.
    wcs_in, wcs_out
        FITS cards of the detector's and of the target grid's WCS.

    Notes
    -----
    :meth:`second_moments`, :meth:`fwhm_at` and :meth:`ellipticity_at` are *adaptive*
    moments of the drawn stamp (see :func:`adaptive_moments`).
    """

    kind: ClassVar[str] = "warped"
    psf: dict[str, Any] = field(default_factory=dict)
    wcs_in: WcsCards = field(default_factory=dict)
    wcs_out: WcsCards = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "psf": self.psf, "wcs_in": self.wcs_in, "wcs_out": self.wcs_out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WarpedPsf:
        return cls(dict(data["psf"]), dict(data["wcs_in"]), dict(data["wcs_out"]))

    def input_model(self) -> PsfModel:
        """The input PSF model, rebuilt once from :attr:`psf` and kept."""
        model = self.__dict__.get("_input_model")
        if model is None:
            model = psf_from_dict(self.psf)
            object.__setattr__(self, "_input_model", model)
        return model

    def image(
        self,
        x: float,
        y: float,
        *,
        size: int = 25,
        center: tuple[float, float] | None = None,
        oversample: int = 5,
    ) -> NDArray[np.float64]:
        xi, yi, jac = local_affine(self.wcs_in, self.wcs_out, x, y)
        return self.image_from_affine(xi, yi, jac, x, y, size, center, oversample)

    def image_from_affine(
        self,
        xi: float,
        yi: float,
        jac: NDArray[np.float64],
        x: float,
        y: float,
        size: int,
        center: tuple[float, float] | None,
        oversample: int,
    ) -> NDArray[np.float64]:
        """:meth:`image` given the input position and Jacobian (:func:`local_affine`)."""
        out = np.zeros((size, size))
        self.add_image_from_affine(out, xi, yi, jac, x, y, center)
        return out

    def add_image_from_affine(
        self,
        out: NDArray[np.float64],
        xi: float,
        yi: float,
        jac: NDArray[np.float64],
        x: float,
        y: float,
        center: tuple[float, float] | None,
        weight: float = 1.0,
        oversample: int = 5,
    ) -> None:
        """Add ``weight`` × the image at output ``(x, y)`` (input ``(xi, yi)``, Jacobian
        ``jac``) to the square stamp ``out``, in place.

        A pixel-basis input model is interpolated straight from its sample grid through
        the affine map (:meth:`PixelPsf.add_affine_image`); other models are drawn on a
        detector-pixel stamp that is then resampled (cubic spline)."""
        size = out.shape[0]
        model = self.input_model()
        if isinstance(model, PixelPsf):
            model.add_affine_image(out, xi, yi, jac, _stamp_center(x, y, size, center), weight)
            return
        # Draw the input generously (the map may rotate/scale), centred on a whole pixel.
        size_in = math.ceil(size * 1.5 * max(1.0, float(np.abs(jac).max()))) | 1
        half = size_in // 2
        stamp = self.input_model().image(
            xi, yi, size=size_in, center=(half, half), oversample=oversample
        )
        out += weight * resample_stamp(
            stamp, (half, half), jac, size, _stamp_center(x, y, size, center)
        )

    def second_moments(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float, float]:
        _, _, ixx, iyy, ixy = adaptive_moments(self.image(x, y, size=41, center=(20.0, 20.0)))
        return ixx, iyy, ixy

    def fwhm_at(self, x: float = 0.0, y: float = 0.0) -> float:
        return moments_summary(*self.second_moments(x, y))[0]

    def ellipticity_at(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float]:
        _, e1, e2 = moments_summary(*self.second_moments(x, y))
        return e1, e2
