"""Calibration ops: match to a reference catalog, fit the WCS and the zero point, and
produce the calibrated exposure (nJy) and source table.

Matching needs no prior offset: a rotation × offset vote between bright sources and
reference stars (robust to a pointing error of several arcseconds, a small rotation and
missing or extra stars), then affine refinement. The WCS keeps the header's distortion
(``distortion="header"``: the camera's optical model, SIP) and fits its linear part, or
fits a TAN-SIP of ``sip_degree`` (``distortion="fit"``).

Like the characterisation ops, these work on whole detectors: on a dask-backed exposure
they return a ``dask.delayed`` of their result.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from astropy.wcs import WCS
from numpy.typing import NDArray
from pydantic import Field

from lsstlite.data import AB_NJY_ZERO_POINT, PhotoCalib, wcs_to_cards
from lsstlite.data.sources import AP_RADII, SRC_COLUMNS, SRC_FLAGS, ap_flux_column
from lsstlite.pipe import Config
from lsstlite.stages.calibrate import _kernels
from lsstlite.stages.characterize.ops import _dispatch, _label

__all__ = [
    "AstrometryConfig",
    "CalibrateConfig",
    "CalibrateResult",
    "CalibrationError",
    "ColourTerm",
    "PhotometryConfig",
    "calibrate_exposure",
    "fit_photometry",
    "fit_wcs",
    "match_to_reference",
]

log = logging.getLogger(__name__)


class CalibrationError(RuntimeError):
    """Astrometric or photometric calibration impossible (e.g. no reference star matched)."""


class AstrometryConfig(Config):
    """Matching to the reference catalog and WCS fit."""

    max_offset_arcsec: float = Field(
        default=10.0, gt=0, description="largest pointing error searched"
    )
    max_rotation_deg: float = Field(
        default=0.2, ge=0, description="largest rotation error searched"
    )
    match_tolerance_px: float = Field(default=2.0, gt=0, description="histogram bin / first radius")
    match_radius_px: float = Field(default=1.0, gt=0, description="final matching radius")
    n_bright: int = Field(default=300, ge=10, description="brightest sources / references voted")
    min_matches: int = Field(default=5, ge=3, description="fewer: the quantum fails")
    distortion: Literal["header", "fit"] = "header"
    sip_degree: int = Field(default=3, ge=0, le=5, description="for distortion='fit'")
    n_clip_iter: int = 3
    clip_sigma: float = 3.0


class ColourTerm(Config):
    """``m_ref = m(primary) + Σ_k c_k (m(primary) - m(secondary))^k``."""

    primary: str
    secondary: str
    coeffs: list[float] = Field(default_factory=lambda: [0.0])


class PhotometryConfig(Config):
    """Zero point from PSF fluxes of matched reference stars."""

    min_snr: float = Field(default=50.0, description="minimum S/N of psf_flux")
    error_floor_mag: float = Field(
        default=0.005,
        ge=0,
        description="added in quadrature to each star's error (PSF model, blends)",
    )
    min_stars: int = Field(default=3, ge=1)
    colour_terms: dict[str, ColourTerm] = Field(
        default_factory=dict, description="band → colour term (none: same band in the refcat)"
    )
    clip_sigma: float = 3.0


class CalibrateConfig(Config):
    """Everything :func:`calibrate_exposure` does."""

    astrometry: AstrometryConfig = AstrometryConfig()
    photometry: PhotometryConfig = PhotometryConfig()


@dataclass
class CalibrateResult:
    """Output of :func:`calibrate_exposure`: ``calexp`` (nJy), ``src`` (nJy) and metadata."""

    calexp: xr.Dataset
    src: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=dict)


_CLEAN = (
    (1 << SRC_FLAGS["EDGE"])
    | (1 << SRC_FLAGS["SATURATED"])
    | (1 << SRC_FLAGS["CR"])
    | (1 << SRC_FLAGS["BAD"])
    | (1 << SRC_FLAGS["PSF_FLUX_FAILED"])
)


def _ref_flux_column(refcat: pd.DataFrame, band: str) -> str:
    for name in (f"{band}_flux", f"flux_{band}"):
        if name in refcat.columns:
            return name
    raise CalibrationError(
        f"reference catalog has no flux column for band {band!r} (looked for '{band}_flux', "
        f"'flux_{band}'); columns: {list(refcat.columns)}"
    )


# -- matching -----------------------------------------------------------------------------
def _match(
    sources: pd.DataFrame,
    refcat: pd.DataFrame,
    wcs: WCS,
    shape: tuple[int, int],
    xy0: tuple[int, int],
    config: AstrometryConfig,
    label: str,
) -> pd.DataFrame:
    ny, nx = shape
    x0, y0 = xy0
    scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
    max_off = config.max_offset_arcsec / scale
    rx, ry = wcs.all_world2pix(
        refcat["ra"].to_numpy(), refcat["dec"].to_numpy(), 0, tolerance=1e-8, maxiter=50, quiet=True
    )
    margin = max_off + 5
    on = (rx > x0 - margin) & (rx < x0 + nx + margin) & (ry > y0 - margin) & (ry < y0 + ny + margin)
    refs = refcat.loc[on].assign(px=rx[on], py=ry[on])
    good = sources[(sources["flags"] & _CLEAN) == 0]
    col = ap_flux_column(AP_RADII[-1])
    good = good[np.isfinite(good[col]) & (good[col] > 0)]
    if len(refs) == 0 or len(good) == 0:
        raise CalibrationError(
            f"{label}: no reference star within the detector ({len(refs)} references, "
            f"{len(good)} clean sources): wrong field or reference catalog?"
        )
    bright = good.nlargest(config.n_bright, col)
    flux_cols = [c for c in refs.columns if c.endswith("_flux")]
    ref_bright = (
        refs.nlargest(config.n_bright, flux_cols[0]) if flux_cols else refs.head(config.n_bright)
    )
    center = (x0 + (nx - 1) / 2.0, y0 + (ny - 1) / 2.0)
    votes, theta, dx, dy = _kernels.offset_vote(
        bright["x"].to_numpy(),
        bright["y"].to_numpy(),
        ref_bright["px"].to_numpy(),
        ref_bright["py"].to_numpy(),
        center=center,
        max_offset=max_off,
        max_rotation_rad=math.radians(config.max_rotation_deg),
        tolerance=config.match_tolerance_px,
    )
    if votes < config.min_matches:
        raise CalibrationError(
            f"{label}: only {votes} reference stars matched (astrometry.min_matches="
            f"{config.min_matches}); searched ±{config.max_offset_arcsec}″ and "
            f"±{config.max_rotation_deg}°"
        )
    c, s = math.cos(theta), math.sin(theta)
    cx, cy = center
    m = np.array([[cx - c * cx + s * cy + dx, c, -s], [cy - s * cx - c * cy + dy, s, c]])
    sx, sy = good["x"].to_numpy(), good["y"].to_numpy()
    radius = config.match_tolerance_px
    for _ in range(3):
        u, v = _kernels.apply_affine(m, sx, sy)
        i, j, _ = _kernels.nearest_matches(
            u, v, refs["px"].to_numpy(), refs["py"].to_numpy(), radius
        )
        if len(i) < 3:
            break
        m = _kernels.fit_affine(sx[i], sy[i], refs["px"].to_numpy()[j], refs["py"].to_numpy()[j])
        radius = config.match_radius_px
    u, v = _kernels.apply_affine(m, sx, sy)
    i, j, d = _kernels.nearest_matches(u, v, refs["px"].to_numpy(), refs["py"].to_numpy(), radius)
    if len(i) < config.min_matches:
        raise CalibrationError(
            f"{label}: {len(i)} reference stars matched after refinement "
            f"(astrometry.min_matches={config.min_matches})"
        )
    return pd.DataFrame(
        {
            "src_index": good.index.to_numpy()[i],
            "ref_index": refs.index.to_numpy()[j],
            "distance_px": d,
        }
    )


def match_to_reference(
    sources: pd.DataFrame,
    refcat: pd.DataFrame,
    exposure: xr.Dataset,
    config: AstrometryConfig | None = None,
) -> Any:
    """Match sources to reference stars without knowing the pointing error.

    Parameters
    ----------
    sources
        Source table (parent-frame ``x``, ``y``, ``flags``, aperture fluxes).
    refcat
        Reference catalog (``ra``, ``dec`` in degrees, ``<band>_flux``).
    exposure
        Gives the (approximate) WCS, the detector box and the data ID for messages.
    config
        Search ranges and radii.

    Returns
    -------
    pandas.DataFrame or a ``Delayed`` of it
        ``src_index``, ``ref_index`` (index labels of the two tables), ``distance_px``.

    Raises
    ------
    CalibrationError
        When fewer than ``min_matches`` stars match (the message names the data ID).

    Notes
    -----
    Lazy on dask input (one block; only the metadata and the tables are used).
    """

    def run(exp: xr.Dataset) -> pd.DataFrame:
        return _match(
            sources,
            refcat,
            exp.lsst.wcs,
            (exp.sizes["y"], exp.sizes["x"]),
            exp.lsst.xy0,
            config or AstrometryConfig(),
            _label(exp),
        )

    return _dispatch(run, exposure)


# -- WCS ----------------------------------------------------------------------------------
def _sky_residuals_arcsec(
    wcs: WCS,
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    ra: NDArray[np.float64],
    dec: NDArray[np.float64],
) -> NDArray[np.float64]:
    pra, pdec = wcs.all_pix2world(x, y, 0)
    d_ra = ((pra - ra + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec)) * 3600.0
    return np.hypot(d_ra, (pdec - dec) * 3600.0)


def _fit_linear_keep_distortion(
    wcs0: WCS,
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    ra: NDArray[np.float64],
    dec: NDArray[np.float64],
) -> WCS:
    """Refit CRVAL and CD of a (TAN or TAN-SIP) WCS, keeping CRPIX and the distortion."""
    wcs = wcs0.deepcopy()
    # Undistorted intermediate pixel offsets (SIP applied), relative to CRPIX.
    crpix = wcs.wcs.crpix - 1.0
    u, v = x - crpix[0], y - crpix[1]
    if wcs.sip is not None:
        # astropy returns focal-plane coordinates relative to CRPIX.
        u, v = wcs.sip_pix2foc(np.stack([x + 1.0, y + 1.0], axis=1), 1).T
    for _ in range(3):
        # Gnomonic projection of the references about the current CRVAL.
        a0, d0 = np.radians(wcs.wcs.crval)
        a, d = np.radians(ra), np.radians(dec)
        cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
        xi = np.degrees(np.cos(d) * np.sin(a - a0) / cosc)
        eta = np.degrees((np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc)
        design = np.stack([np.ones_like(u), u, v], axis=1)
        cxi, *_ = np.linalg.lstsq(design, xi, rcond=None)
        ceta, *_ = np.linalg.lstsq(design, eta, rcond=None)
        cd = np.array([[cxi[1], cxi[2]], [ceta[1], ceta[2]]])
        # Move CRVAL to the sky position of CRPIX: (xi, eta) = (cxi[0], ceta[0]) there.
        xi0, eta0 = np.radians(cxi[0]), np.radians(ceta[0])
        rho = math.hypot(xi0, eta0)
        c = math.atan(rho)
        if rho > 0:
            new_d = math.asin(math.cos(c) * math.sin(d0) + eta0 * math.sin(c) * math.cos(d0) / rho)
            new_a = a0 + math.atan2(
                xi0 * math.sin(c),
                rho * math.cos(d0) * math.cos(c) - eta0 * math.sin(d0) * math.sin(c),
            )
            wcs.wcs.crval = [math.degrees(new_a) % 360.0, math.degrees(new_d)]
        if wcs.wcs.has_cd():
            wcs.wcs.cd = cd
        else:
            wcs.wcs.pc = cd
            wcs.wcs.cdelt = [1.0, 1.0]
    wcs.wcs.set()
    return wcs


def _fit_wcs(
    wcs0: WCS,
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    ra: NDArray[np.float64],
    dec: NDArray[np.float64],
    config: AstrometryConfig,
    center: tuple[float, float],
) -> tuple[WCS, dict[str, Any]]:
    from astropy.coordinates import SkyCoord
    from astropy.wcs.utils import fit_wcs_from_points

    use = np.ones(len(x), dtype=bool)
    wcs = wcs0
    mode = config.distortion if wcs0.sip is not None or config.distortion == "fit" else "fit"
    degree = 0
    for _ in range(config.n_clip_iter + 1):
        if mode == "header":
            wcs = _fit_linear_keep_distortion(wcs0, x[use], y[use], ra[use], dec[use])
        else:
            n = int(use.sum())
            degree = config.sip_degree
            while degree > 0 and n < 3 * (6 + (degree + 1) * (degree + 2) - 6):
                degree -= 1
            ra0, dec0 = wcs0.all_pix2world([center[0]], [center[1]], 0)
            wcs = fit_wcs_from_points(
                (x[use], y[use]),
                SkyCoord(ra[use], dec[use], unit="deg"),
                proj_point=SkyCoord(ra0[0], dec0[0], unit="deg"),
                projection="TAN",
                sip_degree=degree if degree >= 2 else None,
            )
        res = _sky_residuals_arcsec(wcs, x, y, ra, dec)
        rms = float(np.sqrt(np.mean(res[use] ** 2)))
        new = res < max(config.clip_sigma * rms, 1e-3)
        if new.sum() == use.sum() or new.sum() < 4:
            break
        use = new
    res = _sky_residuals_arcsec(wcs, x, y, ra, dec)
    meta = {
        "astrometry_mode": mode,
        "sip_degree": degree if mode == "fit" else None,
        "n_astrometry_stars": int(use.sum()),
        "astrometry_rms_mas": float(np.sqrt(np.mean(res[use] ** 2)) * 1000.0),
    }
    return wcs, meta


def fit_wcs(
    exposure: xr.Dataset,
    sources: pd.DataFrame,
    refcat: pd.DataFrame,
    matches: pd.DataFrame,
    config: AstrometryConfig | None = None,
) -> Any:
    """Fit the WCS to matched reference stars, with sigma clipping.

    ``distortion="header"`` keeps the exposure WCS's SIP distortion and CRPIX and refits
    CRVAL and CD (6 parameters: robust with few stars); ``"fit"`` fits a TAN-SIP of
    degree ≤ ``sip_degree`` (lowered until there are 3 stars per parameter) with
    :func:`astropy.wcs.utils.fit_wcs_from_points`.

    Returns
    -------
    (WCS, metadata) or a ``Delayed`` of it
        ``metadata`` holds the mode, the star count and the rms residual (mas).
    """

    def run(exp: xr.Dataset) -> tuple[WCS, dict[str, Any]]:
        cfg = config or AstrometryConfig()
        src = sources.loc[matches["src_index"]]
        ref = refcat.loc[matches["ref_index"]]
        nx, ny = exp.sizes["x"], exp.sizes["y"]
        x0, y0 = exp.lsst.xy0
        return _fit_wcs(
            exp.lsst.wcs,
            src["x"].to_numpy(),
            src["y"].to_numpy(),
            ref["ra"].to_numpy(),
            ref["dec"].to_numpy(),
            cfg,
            (x0 + (nx - 1) / 2.0, y0 + (ny - 1) / 2.0),
        )

    return _dispatch(run, exposure)


# -- photometry ---------------------------------------------------------------------------
def _reference_mags(
    refcat: pd.DataFrame, band: str, config: PhotometryConfig
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    term = config.colour_terms.get(band)
    primary = term.primary if term else band
    col = _ref_flux_column(refcat, primary)
    flux = refcat[col].to_numpy(np.float64)
    err = refcat[col + "_err"].to_numpy(np.float64) if col + "_err" in refcat else 0.01 * flux
    mag = AB_NJY_ZERO_POINT - 2.5 * np.log10(flux)
    mag_err = 2.5 / math.log(10) * err / flux
    if term is not None:
        other = refcat[_ref_flux_column(refcat, term.secondary)].to_numpy(np.float64)
        colour = mag - (AB_NJY_ZERO_POINT - 2.5 * np.log10(other))
        mag = mag + sum(c * colour**k for k, c in enumerate(term.coeffs))
    return mag, mag_err


def fit_photometry(
    sources: pd.DataFrame,
    refcat: pd.DataFrame,
    matches: pd.DataFrame,
    band: str,
    config: PhotometryConfig | None = None,
    *,
    label: str = "exposure",
) -> dict[str, Any]:
    """Zero point (AB mag of one image unit) from ``psf_flux`` of matched reference stars.

    Each star gives ``m_ref + 2.5 log10(psf_flux)``; their inverse-variance mean with
    clipping is the zero point. ``config.colour_terms[band]`` converts reference
    magnitudes to the instrument's band.

    Returns
    -------
    dict
        ``zero_point``, ``zero_point_err``, ``n_photometry_stars``, ``photometry_rms_mag``.

    Raises
    ------
    CalibrationError
        With fewer than ``min_stars`` usable stars.
    """
    cfg = config or PhotometryConfig()
    src = sources.loc[matches["src_index"]]
    ref = refcat.loc[matches["ref_index"]]
    mag, mag_err = _reference_mags(ref, band, cfg)
    flux = src["psf_flux"].to_numpy(np.float64)
    ferr = src["psf_flux_err"].to_numpy(np.float64)
    ok = (flux > 0) & (flux / ferr > cfg.min_snr) & ((src["flags"].to_numpy() & _CLEAN) == 0)
    zp = mag + 2.5 * np.log10(np.where(flux > 0, flux, np.nan))
    err = np.sqrt(
        mag_err**2
        + (2.5 / math.log(10) * ferr / np.where(flux > 0, flux, np.nan)) ** 2
        + cfg.error_floor_mag**2
    )
    zp[~ok] = np.nan
    mean, mean_err, used = _kernels.sigma_clipped_mean(zp, err, n_sigma=cfg.clip_sigma)
    if used.sum() < cfg.min_stars:
        raise CalibrationError(
            f"{label}: {int(used.sum())} usable photometric reference stars "
            f"(photometry.min_stars={cfg.min_stars}, min_snr={cfg.min_snr})"
        )
    return {
        "zero_point": mean,
        "zero_point_err": mean_err,
        "n_photometry_stars": int(used.sum()),
        "photometry_rms_mag": float(np.std(zp[used])),
    }


# -- everything ---------------------------------------------------------------------------
_FLUX_COLUMNS = ["psf_flux", "kron_flux"] + [ap_flux_column(r) for r in AP_RADII]


def _calibrate(
    exposure: xr.Dataset, sources: pd.DataFrame, refcat: pd.DataFrame, config: CalibrateConfig
) -> CalibrateResult:
    label = _label(exposure)
    vi = exposure.attrs.get("visit_info") or {}
    band = vi.get("band")
    if not band:
        raise CalibrationError(f"{label}: visit_info has no band; cannot pick reference fluxes")
    shape = (exposure.sizes["y"], exposure.sizes["x"])
    xy0 = exposure.lsst.xy0
    wcs0 = exposure.lsst.wcs
    matches = _match(sources, refcat, wcs0, shape, xy0, config.astrometry, label)
    center = (xy0[0] + (shape[1] - 1) / 2.0, xy0[1] + (shape[0] - 1) / 2.0)
    src_m = sources.loc[matches["src_index"]]
    ref_m = refcat.loc[matches["ref_index"]]
    wcs, meta = _fit_wcs(
        wcs0,
        src_m["x"].to_numpy(),
        src_m["y"].to_numpy(),
        ref_m["ra"].to_numpy(),
        ref_m["dec"].to_numpy(),
        config.astrometry,
        center,
    )
    # Re-match everything with the fitted WCS (1 match radius) for photometry.
    rx, ry = wcs.all_world2pix(
        refcat["ra"].to_numpy(), refcat["dec"].to_numpy(), 0, tolerance=1e-8, maxiter=50, quiet=True
    )
    i, j, _ = _kernels.nearest_matches(
        sources["x"].to_numpy(), sources["y"].to_numpy(), rx, ry, config.astrometry.match_radius_px
    )
    final_matches = pd.DataFrame(
        {"src_index": sources.index.to_numpy()[i], "ref_index": refcat.index.to_numpy()[j]}
    )
    meta["n_reference_matches"] = len(final_matches)
    meta.update(
        fit_photometry(sources, refcat, final_matches, band, config.photometry, label=label)
    )
    njy = 10.0 ** (-0.4 * (meta["zero_point"] - AB_NJY_ZERO_POINT))
    meta["njy_per_count"] = njy
    rel_err = 0.4 * math.log(10.0) * meta["zero_point_err"]

    src = sources.copy()
    ra, dec = wcs.all_pix2world(src["x"].to_numpy(), src["y"].to_numpy(), 0)
    src["ra"], src["dec"] = ra, dec
    for col in _FLUX_COLUMNS:
        src[col] = src[col] * njy
        src[col + "_err"] = src[col + "_err"] * njy
    src = src[[c for c in SRC_COLUMNS]].reset_index(drop=True)

    calexp = exposure.copy()
    calexp["image"] = (exposure["image"] * np.float32(njy)).assign_attrs(units="nJy")
    calexp["variance"] = (exposure["variance"] * np.float32(njy * njy)).assign_attrs(units="nJy^2")
    calexp.attrs = dict(exposure.attrs)
    calexp.attrs["units"] = "nJy"
    calexp.attrs["wcs"] = wcs_to_cards(wcs)
    calexp.attrs["photo_calib"] = PhotoCalib(
        njy_per_count=1.0, njy_per_count_err=rel_err
    ).model_dump()
    calexp.attrs["calibrate"] = meta
    log.info(
        "%s: %d matches, astrometric rms %.1f mas, zero point %.4f ± %.4f (%d stars)",
        label,
        meta["n_astrometry_stars"],
        meta["astrometry_rms_mas"],
        meta["zero_point"],
        meta["zero_point_err"],
        meta["n_photometry_stars"],
    )
    return CalibrateResult(calexp, src, meta)


def calibrate_exposure(
    exposure: xr.Dataset,
    sources: pd.DataFrame,
    refcat: pd.DataFrame,
    config: CalibrateConfig | None = None,
) -> Any:
    """Astrometric and photometric calibration of a characterised exposure.

    Parameters
    ----------
    exposure
        Characterised exposure (image units, header WCS, ``visit_info["band"]``).
    sources
        Its source table (:func:`lsstlite.stages.characterize.characterize_exposure`).
    refcat
        Reference catalog (``ra``, ``dec``, ``<band>_flux``, ``<band>_flux_err``).
    config
        See :class:`CalibrateConfig`.

    Returns
    -------
    CalibrateResult or a ``Delayed`` of it
        ``calexp``: image and variance in nJy (``photo_calib`` is then the identity, its
        error the zero point's), the fitted WCS, ``attrs["calibrate"]`` (zero point of
        the input units, match counts, rms); ``src``: fluxes in nJy, ``ra``/``dec``.

    Raises
    ------
    CalibrationError
        No or too few reference stars matched (the message names the data ID).

    Notes
    -----
    Lazy on dask input (one block; the pixels are only scaled, lazily, when eager).
    """
    return _dispatch(_calibrate, exposure, sources, refcat, config or CalibrateConfig())
