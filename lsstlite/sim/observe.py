"""The observing log: pointings, dithers, rotations, seeing, airmass, sky, zero points.

Also the per-detector views of a visit that rendering needs: the exact TAN-SIP WCS, the
header's (slightly wrong) copy of it, the PSF model in detector pixels and the sky level.

Conventions
-----------
Focal-plane coordinates are pixels from the optical axis (see
:class:`lsstlite.instruments.simcam.DetectorLayout`). The sky maps to the *ideal* focal
plane linearly (scale × rotation × east-left parity); the optics move light from its
ideal position to the actual one, and ``SimCam.distortion`` gives ``ideal − actual``. In
each detector's pixel frame that is exactly a SIP polynomial (orders 2 and 3) about
CRPIX = the optical axis, so the true WCS is an exact TAN-SIP.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS, Sip
from numpy.typing import NDArray

from lsstlite.data.psf import VaryingMoffatPsf
from lsstlite.instruments.simcam import PIXEL_SCALE_ARCSEC, SimCam
from lsstlite.sim.config import SurveyConfig

__all__ = [
    "CalibExposure",
    "Visit",
    "calib_exposures",
    "header_wcs",
    "iso_date",
    "make_visits",
    "sky_level",
    "true_psf_for",
    "true_wcs_for",
]

#: Filter names of SimCam's bands.
PHYSICAL_FILTER = {"g": "SIM-g", "r": "SIM-r", "i": "SIM-i", "z": "SIM-z"}
#: First science exposure number (calibrations are numbered from 1).
FIRST_SCIENCE_EXPOSURE = 101


@dataclass(frozen=True)
class Visit:
    """One science exposure of the whole focal plane (all numbers are truth)."""

    exposure: int
    band: str
    mjd: float
    exptime: float
    airmass: float
    boresight_ra: float  # deg, the true pointing of the optical axis
    boresight_dec: float
    rot_deg: float  # sky rotation of the focal plane (deg)
    seeing_fwhm_arcsec: float  # FWHM at the optical axis
    beta: float
    fwhm_radial: float  # fractional FWHM growth at the focal-plane corner
    fwhm_tilt: tuple[float, float]  # fractional FWHM gradient along X, Y (per field radius)
    e0: tuple[float, float]  # ellipticity at the optical axis
    e_astig: tuple[float, float]  # quadratic ellipticity pattern amplitude at the corner
    zero_point: float  # AB mag of 1 e⁻ in this exposure (includes extinction)
    sky_e: float  # sky (e⁻/px) at the optical axis, before the flat
    sky_gradient: tuple[float, float]  # fractional sky change along X, Y per field radius
    fringe_e: float  # fringe amplitude (e⁻ per unit pattern), 0 outside the fringe band
    pointing_error_arcsec: tuple[float, float]  # header CRVAL error (east, north)
    rotation_error_deg: float  # header rotation error
    trail: tuple[float, float, float, float, float] | None
    # trail = (X0, Y0 focal-plane px, angle deg, peak e⁻/px, FWHM px) or None

    @property
    def physical_filter(self) -> str:
        return PHYSICAL_FILTER[self.band]

    @property
    def darktime(self) -> float:
        return self.exptime


@dataclass(frozen=True)
class CalibExposure:
    """One calibration exposure (bias, dark or flat) of the whole focal plane."""

    exposure: int
    obs_type: str  # "bias", "dark" or "flat"
    band: str  # the filter in the beam (flats: the band being flattened)
    mjd: float
    exptime: float
    level_e: float  # flat lamp level (e⁻/px, flats only)

    @property
    def physical_filter(self) -> str:
        return PHYSICAL_FILTER[self.band]

    @property
    def darktime(self) -> float:
        return self.exptime


def iso_date(mjd: float) -> str:
    """ISO-8601 UTC time of an MJD, to the millisecond (deterministic, no leap seconds)."""
    t = _dt.datetime(1858, 11, 17) + _dt.timedelta(days=mjd)
    return t.isoformat(timespec="milliseconds")


def make_visits(config: SurveyConfig, seed: int) -> list[Visit]:
    """The science visits, in observing order (deterministic in ``config`` and ``seed``).

    Visit ``k`` of every band is taken on night ``k`` (bands one after the other, about
    30 min apart), starting the night after ``config.first_mjd``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    visits = []
    exposure = FIRST_SCIENCE_EXPOSURE
    for night in range(config.n_visits_per_band):
        for b_index, band in enumerate(config.bands):
            mjd = config.first_mjd + 1 + night + 0.05 + 0.02 * b_index
            airmass = float(rng.uniform(*config.airmass_range))
            r_dither = config.dither_arcsec * math.sqrt(rng.uniform())
            phi = rng.uniform(0.0, 2.0 * math.pi)
            ddec = r_dither * math.sin(phi) / 3600.0
            dra = r_dither * math.cos(phi) / 3600.0 / math.cos(math.radians(config.dec_deg))
            zp = (
                config.zero_point_1s[band]
                + 2.5 * math.log10(config.exptime)
                - config.extinction[band] * airmass
                + float(rng.normal(0.0, config.zero_point_jitter_mag))
            )
            # Sky emission is not extinguished; it brightens with airmass and moonlight.
            mu = (
                config.sky_mag[band]
                - float(rng.uniform(*config.moon_brightening_mag))
                - 0.5 * (airmass - 1.0)
            )
            mu_pix = mu - 5.0 * math.log10(PIXEL_SCALE_ARCSEC)
            zp_sky = config.zero_point_1s[band] + 2.5 * math.log10(config.exptime)
            sky_e = 10.0 ** (-0.4 * (mu_pix - zp_sky))
            grad_angle = rng.uniform(0.0, 2.0 * math.pi)
            grad = config.sky_gradient * float(rng.uniform(0.3, 1.0))
            fringe = (
                float(rng.uniform(*config.fringe_fraction)) * sky_e
                if band == config.fringe_band
                else 0.0
            )
            err_r = float(rng.uniform(*config.pointing_error_arcsec))
            err_phi = rng.uniform(0.0, 2.0 * math.pi)
            seeing = float(rng.uniform(*config.seeing_fwhm_arcsec))
            trail = None
            if rng.uniform() < config.trail_probability:
                # Tuple order: X0, Y0 (px), angle (deg), peak (e⁻/px), FWHM (px).
                trail = (
                    float(rng.uniform(-500.0, 500.0)),
                    float(rng.uniform(-500.0, 500.0)),
                    float(rng.uniform(0.0, 180.0)),
                    float(rng.uniform(*config.trail_surface_brightness_sky)) * sky_e,
                    seeing / PIXEL_SCALE_ARCSEC,
                )
            visits.append(
                Visit(
                    exposure=exposure,
                    band=band,
                    mjd=round(mjd, 8),
                    exptime=config.exptime,
                    airmass=airmass,
                    boresight_ra=config.ra_deg + dra,
                    boresight_dec=config.dec_deg + ddec,
                    rot_deg=float(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)),
                    seeing_fwhm_arcsec=seeing,
                    beta=float(rng.uniform(*config.moffat_beta)),
                    fwhm_radial=float(rng.uniform(0.02, 0.08)),
                    fwhm_tilt=(float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.02, 0.02))),
                    e0=(float(rng.normal(0.0, 0.015)), float(rng.normal(0.0, 0.015))),
                    e_astig=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03))),
                    zero_point=zp,
                    sky_e=sky_e,
                    sky_gradient=(grad * math.cos(grad_angle), grad * math.sin(grad_angle)),
                    fringe_e=fringe,
                    pointing_error_arcsec=(err_r * math.cos(err_phi), err_r * math.sin(err_phi)),
                    rotation_error_deg=float(rng.uniform(-1.0, 1.0)) * config.rotation_error_deg,
                    trail=trail,
                )
            )
            exposure += 1
    return visits


def calib_exposures(config: SurveyConfig) -> list[CalibExposure]:
    """Biases, darks and per-band dome flats, taken the afternoon before the first night."""
    out = []
    mjd = config.first_mjd + 0.8
    exposure = 1
    red = config.fringe_band
    plan = (
        [("bias", red, 0.0, 0.0)] * config.n_bias
        + [("dark", red, config.dark_exptime, 0.0)] * config.n_dark
        + [
            ("flat", b, config.flat_exptime, config.flat_level_e)
            for b in config.bands
            for _ in range(config.n_flat)
        ]
    )
    for obs_type, band, exptime, level in plan:
        out.append(CalibExposure(exposure, obs_type, band, round(mjd, 8), exptime, level))
        mjd += (exptime + 30.0) / 86400.0
        exposure += 1
    return out


def _rot(deg: float) -> NDArray[np.float64]:
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def _sip_coefficients(
    camera: SimCam, detector: int, order: int = 3
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """SIP A, B matrices of a detector: the distortion in its pixel frame about the axis.

    The distortion is a polynomial of orders 2 and 3 in focal-plane coordinates, and
    detector offsets from the optical axis map to focal-plane offsets by a rotation, so a
    least-squares fit on a grid recovers the SIP coefficients exactly (to rounding).
    """
    layout = camera.layout(detector)
    rot = layout.rotation_matrix
    g = camera.geometry
    u0, v0 = layout.optical_axis_pixel
    yy, xx = np.mgrid[0 : g.det_ny : 9j, 0 : g.det_nx : 9j]
    u, v = xx.ravel() - u0, yy.ravel() - v0
    fx = rot[0, 0] * u + rot[0, 1] * v
    fy = rot[1, 0] * u + rot[1, 1] * v
    dx, dy = camera.distortion(fx, fy)
    du = rot[0, 0] * dx + rot[1, 0] * dy  # rotᵀ @ (dx, dy)
    dv = rot[0, 1] * dx + rot[1, 1] * dy
    terms = [(p, q) for p in range(order + 1) for q in range(order + 1) if 2 <= p + q <= order]
    scale = float(max(g.det_nx, g.det_ny))  # condition the fit
    design = np.stack([(u / scale) ** p * (v / scale) ** q for p, q in terms], axis=1)
    ca, *_ = np.linalg.lstsq(design, du, rcond=None)
    cb, *_ = np.linalg.lstsq(design, dv, rcond=None)
    a = np.zeros((order + 1, order + 1))
    b = np.zeros((order + 1, order + 1))
    for (p, q), va, vb in zip(terms, ca, cb, strict=True):
        a[p, q] = va / scale ** (p + q)
        b[p, q] = vb / scale ** (p + q)
    return a, b


def _build_wcs(ra: float, dec: float, rot_deg: float, camera: SimCam, detector: int) -> WCS:
    layout = camera.layout(detector)
    scale = PIXEL_SCALE_ARCSEC / 3600.0
    cd = scale * _rot(rot_deg) @ np.diag([-1.0, 1.0]) @ layout.rotation_matrix
    u0, v0 = layout.optical_axis_pixel
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [u0 + 1.0, v0 + 1.0]
    wcs.wcs.cd = cd
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    a, b = _sip_coefficients(camera, detector)
    wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    wcs.pixel_shape = (layout.nx, layout.ny)
    return wcs


def true_wcs_for(visit: Visit, camera: SimCam, detector: int) -> WCS:
    """The exact sky → pixel mapping of a detector in a visit (0-based pixel frame)."""
    return _build_wcs(visit.boresight_ra, visit.boresight_dec, visit.rot_deg, camera, detector)


def header_wcs(visit: Visit, camera: SimCam, detector: int) -> WCS:
    """The WCS written in the raw header: true pointing off by 1–2″ and ≲0.01° in rotation."""
    de, dn = visit.pointing_error_arcsec
    dec = visit.boresight_dec + dn / 3600.0
    ra = visit.boresight_ra + de / 3600.0 / math.cos(math.radians(visit.boresight_dec))
    return _build_wcs(ra, dec, visit.rot_deg + visit.rotation_error_deg, camera, detector)


def _field_psf(
    visit: Visit, camera: SimCam, fx: NDArray[np.float64], fy: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """FWHM (px), e1, e2 of the PSF at focal-plane positions (focal-plane axes)."""
    r_fp = camera.geometry.field_radius
    x, y = fx / r_fp, fy / r_fp
    fwhm0 = visit.seeing_fwhm_arcsec / PIXEL_SCALE_ARCSEC
    fwhm = fwhm0 * (
        1.0 + visit.fwhm_radial * (x * x + y * y) + visit.fwhm_tilt[0] * x + visit.fwhm_tilt[1] * y
    )
    e1 = visit.e0[0] + visit.e_astig[0] * (x * x - y * y)
    e2 = visit.e0[1] + visit.e_astig[1] * 2.0 * x * y
    return fwhm, e1, e2


def true_psf_for(visit: Visit, camera: SimCam, detector: int) -> VaryingMoffatPsf:
    """The PSF of a detector in a visit, in detector pixel coordinates.

    The field pattern is quadratic in focal-plane position; detector pixels map to the
    focal plane affinely, so the detector model is exactly quadratic too. Ellipticities
    are rotated from focal-plane to detector axes (by twice the detector's rotation).
    """
    layout = camera.layout(detector)
    g = camera.geometry
    x0, y0 = (g.det_nx - 1) / 2.0, (g.det_ny - 1) / 2.0
    scale = 1000.0
    yy, xx = np.mgrid[0 : g.det_ny : 7j, 0 : g.det_nx : 7j]
    fx, fy = layout.to_focal_plane(xx.ravel(), yy.ravel())
    fwhm, e1, e2 = _field_psf(visit, camera, fx, fy)
    c, s = (
        math.cos(2 * math.radians(layout.rotation_deg)),
        math.sin(2 * math.radians(layout.rotation_deg)),
    )
    e1d, e2d = c * e1 + s * e2, -s * e1 + c * e2
    u, v = (xx.ravel() - x0) / scale, (yy.ravel() - y0) / scale
    design = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)

    def fit(values: NDArray[np.float64]) -> list[float]:
        coeffs, *_ = np.linalg.lstsq(design, values, rcond=None)
        return [float(c) for c in coeffs]

    return VaryingMoffatPsf(
        fwhm_coeffs=fit(fwhm),
        e1_coeffs=fit(e1d),
        e2_coeffs=fit(e2d),
        beta=visit.beta,
        x0=x0,
        y0=y0,
        scale=scale,
    )


def sky_level(
    visit: Visit, camera: SimCam, detector: int, x: NDArray[np.float64], y: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Sky (e⁻/px, before the flat) at detector pixels: a plane across the focal plane."""
    fx, fy = camera.layout(detector).to_focal_plane(x, y)
    r_fp = camera.geometry.field_radius
    gx, gy = visit.sky_gradient
    return visit.sky_e * (1.0 + gx * fx / r_fp + gy * fy / r_fp)
