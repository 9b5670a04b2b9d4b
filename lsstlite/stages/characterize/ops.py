"""Image characterisation ops: background, detection, cosmic rays, PSF, measurement.

Every op takes an exposure (``xarray.Dataset``, see :mod:`lsstlite.data.exposure`). On a
numpy-backed exposure it returns its result directly; on a dask-backed one it returns a
``dask.delayed`` object that computes to the same result, so building the graph reads and
computes nothing. These are whole-detector algorithms (detection links pixels across
the image, the PSF is fitted to all stars): each runs as one block, and detectors
parallelise across quanta.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import sep
import xarray as xr
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from lsstlite.data import GaussianPsf, MoffatPsf, PsfModel, VaryingMoffatPsf, mask_bits
from lsstlite.data.masks import mask_planes as _mask_planes
from lsstlite.data.psf_pixel import PixelPsf, fit_moffat_image, poly_terms
from lsstlite.data.sources import AP_RADII, SRC_COLUMNS, SRC_FLAGS, ap_flux_column
from lsstlite.stages.calibs._kernels import dilate_diamond
from lsstlite.stages.characterize import _kernels
from lsstlite.stages.characterize._background import MeshBackground, mesh_background
from lsstlite.stages.characterize.config import (
    BackgroundConfig,
    CharacterizeConfig,
    CosmicRayConfig,
    DetectionConfig,
    MeasurementConfig,
    PsfConfig,
    StarSelectionConfig,
)

__all__ = [
    "CharacterizeResult",
    "PsfFitError",
    "aperture_correction",
    "characterize_exposure",
    "detect_sources",
    "fit_psf",
    "measure_sources",
    "psf_photometry",
    "repair_cosmic_rays",
    "select_psf_stars",
    "subtract_background",
]

log = logging.getLogger(__name__)

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


class PsfFitError(RuntimeError):
    """No PSF model could be built (no star-like source at all)."""


@dataclass
class CharacterizeResult:
    """Output of :func:`characterize_exposure`.

    Attributes
    ----------
    exposure
        Background-subtracted, cosmic-ray-repaired exposure with ``psf`` and
        ``characterize`` (metadata dict) in its attrs; mask planes CR, INTRP, DETECTED set.
    background
        The subtracted background (an exposure whose ``image`` is the model).
    sources
        Source table with the :data:`lsstlite.data.sources.SRC_COLUMNS` (image units,
        ``ra``/``dec`` NaN).
    psf
        The PSF model.
    metadata
        What was done: PSF model kind (and why), star counts, χ², corrections, sky.
    """

    exposure: xr.Dataset
    background: xr.Dataset
    sources: pd.DataFrame
    psf: PsfModel
    metadata: dict[str, Any] = field(default_factory=dict)


# -- helpers ------------------------------------------------------------------------------
def _is_lazy(exposure: xr.Dataset) -> bool:
    return any(isinstance(exposure[v].data, da.Array) for v in ("image", "mask", "variance"))


def _dispatch(func: Any, exposure: xr.Dataset, *args: Any, **kwargs: Any) -> Any:
    """Run ``func`` now (numpy exposure) or return it as one delayed block (dask exposure)."""
    if _is_lazy(exposure):
        return dask.delayed(func)(exposure, *args, **kwargs)
    return func(exposure, *args, **kwargs)


def _arrays(
    exposure: xr.Dataset,
) -> tuple[NDArray[np.float32], NDArray[np.int32], NDArray[np.float32]]:
    # sep needs writeable, C-contiguous buffers (zarr/xarray may hand out read-only views).
    req: list[Any] = ["C", "W"]
    return (
        np.require(np.asarray(exposure["image"].values), np.float32, req),
        np.require(np.asarray(exposure["mask"].values), np.int32, req),
        np.require(np.asarray(exposure["variance"].values), np.float32, req),
    )


def _bits(exposure: xr.Dataset, names: tuple[str, ...] | list[str]) -> int:
    planes = _mask_planes(exposure)
    return mask_bits(planes, [n for n in names if n in planes])


def _with_planes(exposure: xr.Dataset, image: Any, mask: Any, variance: Any) -> xr.Dataset:
    out = exposure.copy()
    out["image"] = (("y", "x"), image, exposure["image"].attrs)
    out["mask"] = (("y", "x"), mask, exposure["mask"].attrs)
    out["variance"] = (("y", "x"), variance, exposure["variance"].attrs)
    return out


def _gaussian_kernel(fwhm: float) -> NDArray[np.float32]:
    sigma = max(fwhm, 1.0) / FWHM_PER_SIGMA
    r = math.ceil(2.0 * sigma)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return np.exp(-0.5 * (xx * xx + yy * yy) / sigma**2).astype(np.float32)


def _label(exposure: xr.Dataset) -> str:
    vi = exposure.attrs.get("visit_info") or {}
    keys = ("instrument", "exposure", "detector")
    parts = [f"{k}={vi[k]}" for k in keys if vi.get(k) is not None]
    return "{" + ", ".join(parts) + "}" if parts else "exposure"


# -- background ---------------------------------------------------------------------------
def _background(
    image: NDArray[np.float32], bad: NDArray[np.bool_], config: BackgroundConfig
) -> MeshBackground:
    mesh = min(config.mesh_size, image.shape[0], image.shape[1])
    return mesh_background(
        image,
        bad,
        bw=mesh,
        bh=mesh,
        fw=config.filter_size,
        fh=config.filter_size,
        fthresh=config.filter_threshold,
    )


def _subtract_background(
    exposure: xr.Dataset, config: BackgroundConfig, detected: NDArray[np.bool_] | None
) -> tuple[xr.Dataset, xr.Dataset]:
    image, mask, variance = _arrays(exposure)
    bad = (mask & _bits(exposure, config.mask_planes)) != 0
    if detected is not None:
        bad |= detected
    bkg = _background(image, bad, config)
    subtracted, model = bkg.subtract(image)
    out = _with_planes(exposure, subtracted, mask, variance)
    # np.zeros maps zero pages lazily (zeros_like writes 128 MB on a 16-Mpix detector)
    background = _with_planes(
        exposure, model, np.zeros(mask.shape, mask.dtype), np.zeros(variance.shape, variance.dtype)
    )
    background.attrs = {
        **{k: v for k, v in exposure.attrs.items() if k not in ("psf",)},
        "background": {"global_mean": bkg.globalback, "global_rms": bkg.globalrms},
    }
    return out, background


def subtract_background(
    exposure: xr.Dataset,
    config: BackgroundConfig | None = None,
    *,
    detected: NDArray[np.bool_] | None = None,
) -> Any:
    """Estimate the sky on a mesh and subtract it.

    Parameters
    ----------
    exposure
        Input exposure.
    config
        Mesh size, cell filter and the mask planes left out of the estimate.
    detected
        Extra pixels to leave out (e.g. grown detection footprints), boolean ``(y, x)``.

    Returns
    -------
    (exposure, background) or a ``Delayed`` of it
        The subtracted exposure and the model as an exposure (``attrs["background"]``
        holds the global mean and rms).

    Notes
    -----
    Lazy on dask input (one delayed block); no halo: the whole detector is one block.
    SExtractor's estimator (``sep.Background``'s, equal to it: :mod:`._background`).
    """
    return _dispatch(_subtract_background, exposure, config or BackgroundConfig(), detected)


# -- detection ----------------------------------------------------------------------------
def _factor(kernel: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(ky, kx)`` with ``kernel ≈ ky ⊗ kx`` (exact for a rank-one kernel)."""
    u, sv, vt = np.linalg.svd(kernel)
    return u[:, 0] * math.sqrt(sv[0]), vt[0] * math.sqrt(sv[0])


def _snr_map(
    image: NDArray[np.float32],
    variance: NDArray[np.float32],
    bad: NDArray[np.bool_],
    kernel: NDArray[np.float32],
) -> NDArray[np.float32]:
    """Matched-filter S/N: ``(K ⋆ image) / √(K² ⋆ variance)`` (sep's ``"matched"``) for a
    rank-one kernel, by rows then columns (2k taps instead of k²), bad pixels as zero."""
    ky, kx = _factor((kernel / kernel.sum()).astype(np.float64))
    if len(ky) % 2 and len(kx) % 2:
        out = np.empty(image.shape, dtype=np.float32)
        _kernels.matched_snr(
            np.ascontiguousarray(image, dtype=np.float32),
            np.ascontiguousarray(variance, dtype=np.float32),
            np.ascontiguousarray(bad),
            ky,
            kx,
            ky * ky,
            kx * kx,
            1.0,
            out,
        )
        return out
    num = ndimage.correlate1d(np.where(bad, 0.0, image), ky, axis=0, mode="constant")
    num = ndimage.correlate1d(num, kx, axis=1, mode="constant")
    den = ndimage.correlate1d(np.where(bad, 0.0, variance), ky * ky, axis=0, mode="constant")
    den = ndimage.correlate1d(den, kx * kx, axis=1, mode="constant")
    return np.asarray(num / np.sqrt(np.maximum(den, 1e-30)), dtype=np.float32)


def _detect(
    exposure: xr.Dataset, config: DetectionConfig, fwhm: float | None, global_rms: float | None
) -> tuple[pd.DataFrame, NDArray[np.int32]]:
    image, mask, variance = _arrays(exposure)
    bad = (mask & _bits(exposure, ["BAD", "NO_DATA"])) != 0
    if config.filter_type == "none":
        kernel = None
    elif config.filter_kernel is not None:
        kernel = np.asarray(config.filter_kernel, dtype=np.float32)
    else:
        kernel = _gaussian_kernel(fwhm or 3.0)
    common: dict[str, Any] = {
        "mask": bad if bad.any() else None,  # sep reads a mask with every pixel: ~10%
        "minarea": config.min_area,
        "deblend_nthresh": config.deblend_n_thresh,
        "deblend_cont": config.deblend_cont,
        "clean": config.clean,
        "clean_param": config.clean_param,
        "segmentation_map": True,
    }
    fast = (
        kernel is not None
        and config.filter_type == "matched"
        and config.threshold_type == "pixel"
        and np.linalg.matrix_rank(kernel.astype(np.float64), tol=1e-6) == 1
    )
    snr = None
    if fast:
        # Same S/N map as sep's "matched" filter, computed separably (several times
        # faster on a 16-Mpix detector), thresholded by sep without further filtering.
        assert kernel is not None
        snr = _snr_map(image, variance, bad, kernel)
        objects, segmap = sep.extract(snr, config.threshold, filter_kernel=None, **common)
    else:
        kwargs: dict[str, Any] = {}
        if config.threshold_type == "global":
            if global_rms is None:
                global_rms = float(np.sqrt(np.median(variance[~bad]))) if (~bad).any() else 1.0
            kwargs["err"] = float(global_rms)
        else:
            var = np.array(variance, dtype=np.float32)
            np.putmask(var, bad, np.float32(np.inf))
            kwargs["var"] = var
        objects, segmap = sep.extract(
            image,
            config.threshold,
            filter_kernel=kernel,
            filter_type="conv" if config.filter_type == "none" else config.filter_type,
            **common,
            **kwargs,
        )
    table = pd.DataFrame({name: objects[name] for name in objects.dtype.names})
    segmap = np.asarray(segmap, dtype=np.int32)
    if snr is not None and len(table):
        # Shapes and fluxes were measured on the S/N map: take the fluxes from the image
        # and remove the filter's width from the second moments.
        assert kernel is not None
        _, xx = np.mgrid[: kernel.shape[0], : kernel.shape[1]]
        kw = kernel / kernel.sum()
        s2 = float((kw * (xx - (kernel.shape[1] - 1) / 2) ** 2).sum())
        table["flux"] = _kernels.label_sums(segmap, image, len(table))[1:]
        x2 = np.clip(table["x2"] - s2, 0.1, None)
        y2 = np.clip(table["y2"] - s2, 0.1, None)
        xy = table["xy"]
        common_t = 0.5 * (x2 + y2)
        root = np.sqrt((0.5 * (x2 - y2)) ** 2 + xy**2)
        table["x2"], table["y2"] = x2, y2
        table["a"] = np.sqrt(common_t + root)
        table["b"] = np.sqrt(np.clip(common_t - root, 0.05, None))
        table["theta"] = 0.5 * np.arctan2(2 * xy, x2 - y2)
    if config.find_peaks and kernel is not None and config.threshold_type == "pixel":
        if snr is None:
            snr = _snr_map(image, variance, bad, kernel)
        table = _add_peaks(table, segmap, image, snr, kernel, config.threshold)
    table.insert(0, "id", np.arange(1, len(table) + 1, dtype=np.int64))
    return table, segmap


def _add_peaks(
    table: pd.DataFrame,
    segmap: NDArray[np.int32],
    image: NDArray[np.float32],
    snr: NDArray[np.float32],
    kernel: NDArray[np.float32],
    threshold: float,
) -> pd.DataFrame:
    """Secondary peaks inside footprints that sep's deblender left merged (faint stars in
    the wings of much brighter ones), as extra rows flagged as deblended.

    A peak of the matched-filter S/N map counts when it stands ``threshold`` above the
    median of a ring 1.5 kernel-FWHM around it (noise bumps on a bright wing do not).
    """
    half = kernel.shape[0] // 2
    py, px = _kernels.local_maxima(
        np.ascontiguousarray(snr, dtype=np.float32), segmap, float(threshold), half
    )
    if len(px) == 0:
        return table
    # Ring contrast.
    r = max(1.5 * (half + 1), 3.0)
    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    ry = np.clip(np.round(py[:, None] + r * np.sin(ang)).astype(int), 0, snr.shape[0] - 1)
    rx = np.clip(np.round(px[:, None] + r * np.cos(ang)).astype(int), 0, snr.shape[1] - 1)
    prominent = snr[py, px] - np.median(snr[ry, rx], axis=1) > threshold
    # Not already a detection.
    from scipy.spatial import cKDTree

    if len(table):
        d, _ = cKDTree(np.c_[table["x"], table["y"]]).query(np.c_[px, py])
        new = prominent & (d > r)
    else:
        new = prominent
    if not new.any():
        return table
    px, py = px[new], py[new]
    parent = segmap[py, px] - 1
    sigma = max(half / 2.0, 0.7)
    rows = pd.DataFrame(
        {c: np.zeros(len(px), dtype=np.dtype(str(table[c].dtype))) for c in table.columns}
    )
    for c, v in (
        ("x", px.astype(float)),
        ("y", py.astype(float)),
        ("a", sigma),
        ("b", sigma),
        ("theta", 0.0),
        ("x2", sigma**2),
        ("y2", sigma**2),
        ("xy", 0.0),
        ("errx2", 0.01),
        ("erry2", 0.01),
        ("npix", 1),
        ("flux", image[py, px] * 2 * np.pi * sigma**2),
        ("xmin", px - half),
        ("xmax", px + half),
        ("ymin", py - half),
        ("ymax", py + half),
        ("xpeak", px),
        ("ypeak", py),
        ("flag", sep.OBJ_MERGED),
    ):
        if c in rows:
            rows[c] = np.asarray(v, dtype=np.dtype(str(rows[c].dtype))) if np.ndim(v) else v
    flags = table["flag"].to_numpy().copy()
    flags[np.unique(parent)] |= sep.OBJ_MERGED
    table = table.assign(flag=flags, added_peak=False)
    return pd.concat([table, rows.assign(added_peak=True)], ignore_index=True)


def detect_sources(
    exposure: xr.Dataset,
    config: DetectionConfig | None = None,
    *,
    fwhm: float | None = None,
    global_rms: float | None = None,
) -> Any:
    """Find connected pixels above a threshold, deblended, with footprints.

    Parameters
    ----------
    exposure
        Background-subtracted exposure.
    config
        Threshold (σ of the variance plane, or of ``global_rms``), minimum area, filter.
    fwhm
        PSF FWHM (pixels) for the default Gaussian detection filter.
    global_rms
        Noise for ``threshold_type="global"`` (default: from the variance plane).

    Returns
    -------
    (table, segmentation) or a ``Delayed`` of it
        ``table`` has sep's columns (``x``, ``y``, ``a``, ``b``, ``theta``, ``flux``,
        ``npix``, ``flag``, …; 0-based *array* pixels), ``id`` and, when peaks were added,
        ``added_peak``; ``segmentation``
        (int32, ``(y, x)``) holds the id of the source owning each pixel (0: none).

    Notes
    -----
    Lazy on dask input (one delayed block: footprints link pixels across the image).
    sep 1.4 only sets its pixel stack globally, so the default (300 000 pixels of
    simultaneously open objects) is used; a detector with more raises sep's error.
    """
    return _dispatch(_detect, exposure, config or DetectionConfig(), fwhm, global_rms)


# -- cosmic rays --------------------------------------------------------------------------
def _repair_cosmic_rays(
    exposure: xr.Dataset,
    fwhm: float,
    config: CosmicRayConfig,
    stars: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
) -> xr.Dataset:
    image, mask, variance = _arrays(exposure)
    planes = _mask_planes(exposure)
    bad = (mask & _bits(exposure, ["BAD", "SAT", "NO_DATA"])) != 0
    ratios = None
    if stars is not None:
        x0, y0 = int(exposure["x"].values[0]), int(exposure["y"].values[0])
        ratios = _kernels.measured_neighbour_ratios(image, stars[0] - x0, stars[1] - y0)
    if ratios is None:
        ratios = _kernels.psf_neighbour_ratios(fwhm)
    cr = _kernels.find_cosmic_rays(
        image,
        variance,
        bad,
        ratios=ratios,
        n_sigma=config.n_sigma,
        cond=config.cond,
        k=config.k_noise,
        k_grow=config.k_grow,
        n_grow=config.n_grow,
    )
    new_mask = mask.copy()
    if cr.any():
        new_mask[cr] |= np.int32((1 << planes["CR"]) | (1 << planes["INTRP"]))
        if config.do_repair:
            image = _kernels.interpolate_masked(image, cr | bad, only=cr)
    out = _with_planes(exposure, image, new_mask, variance)
    out.attrs["n_cosmic_ray_pixels"] = int(cr.sum())
    return out


def repair_cosmic_rays(
    exposure: xr.Dataset,
    fwhm: float,
    config: CosmicRayConfig | None = None,
    *,
    stars: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
) -> Any:
    """Find pixels too sharp for the PSF, mask them ``CR`` + ``INTRP`` and interpolate.

    Parameters
    ----------
    exposure
        Background-subtracted exposure.
    fwhm
        PSF FWHM in pixels: the sharpness limit of a Gaussian PSF, used when ``stars``
        gives fewer than three usable stars.
    config
        Thresholds (see :func:`lsstlite.stages.characterize._kernels.find_cosmic_rays`).
    stars
        Parent-frame ``(x, y)`` of bright stars: the sharpness limit is measured on them
        (neighbour/peak ratios), which makes the test independent of the PSF's profile.

    Returns
    -------
    xarray.Dataset or a ``Delayed`` of it
        ``attrs["n_cosmic_ray_pixels"]`` counts the masked pixels.

    Notes
    -----
    Lazy on dask input (one block). The test is local (3 × 3, growth 5 × 5), so a
    blocked version would need a 3-pixel halo per growth pass.
    """
    return _dispatch(_repair_cosmic_rays, exposure, fwhm, config or CosmicRayConfig(), stars)


# -- measurement --------------------------------------------------------------------------
def _psf_stamps(
    psf: PsfModel, xs: NDArray[np.float64], ys: NDArray[np.float64], m: int
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Unit-flux PSF stamps ``(N, m, m)`` at each position, with their lower-left pixels."""
    ix = np.floor(xs + 0.5).astype(np.int64)
    iy = np.floor(ys + 0.5).astype(np.int64)
    half = m // 2
    cx, cy = xs - ix + half, ys - iy + half
    if isinstance(psf, PixelPsf):
        arr = np.asarray(psf.basis, dtype=np.float64)
        terms = _kernels.polynomial_terms(
            xs, ys, psf.degree, psf.x0, psf.y0, psf.x_scale, psf.y_scale
        )
        stamps = np.empty((len(xs), m, m))
        for k in range(0, len(xs), 2000):
            sl = slice(k, k + 2000)
            stamps[sl] = _kernels.render_stars(
                arr, cx[sl], cy[sl], terms[:, sl], m=m, step=psf.step
            )
    else:
        stamps = (
            np.stack(
                [
                    psf.image(float(x), float(y), size=m, center=(float(a), float(b)))
                    for x, y, a, b in zip(xs, ys, cx, cy, strict=True)
                ]
            )
            if len(xs)
            else np.zeros((0, m, m))
        )
    return stamps, ix - half, iy - half


def _cut(
    array: NDArray[Any], x0: int, y0: int, m: int, fill: float = 0.0
) -> tuple[NDArray[Any], bool]:
    """An ``m × m`` cut-out at lower-left ``(x0, y0)``, padded; flag if it left the image."""
    ny, nx = array.shape
    out = np.full((m, m), fill, dtype=array.dtype)
    xa, xb, ya, yb = max(x0, 0), min(x0 + m, nx), max(y0, 0), min(y0 + m, ny)
    if xa < xb and ya < yb:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = array[ya:yb, xa:xb]
    return out, not (xa == x0 and ya == y0 and xb == x0 + m and yb == y0 + m)


def _psf_fit(
    image: NDArray[np.floating[Any]],
    variance: NDArray[np.floating[Any]],
    psf: PsfModel,
    xs: NDArray[np.float64],
    ys: NDArray[np.float64],
    xy0: tuple[int, int],
    m: int,
) -> tuple[
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.bool_],
    NDArray[np.bool_],
    NDArray[np.float64],
    NDArray[np.int64],
    NDArray[np.int64],
]:
    """PSF fluxes at fixed positions ``(xs, ys)`` (array indices of ``image``; ``xy0``
    its parent-frame origin): a linear fit of the ``m × m`` model stamp with uniform
    weights (unbiased for bright stars) over the pixels inside the image with a finite
    variance; errors from the variance plane. Returns flux, error (NaN where no pixel
    counts), ``ok``, ``off`` (the stamp leaves the image), and the stamps with their
    lower-left pixels (array indices)."""
    ny, nx = image.shape
    stamps, lx, ly = _psf_stamps(psf, xs + xy0[0], ys + xy0[1], m)
    lx -= xy0[0]
    ly -= xy0[1]
    pp, pi, ppv = _kernels.psf_fit_sums(image, variance, stamps, lx, ly)
    off = (lx < 0) | (ly < 0) | (lx + m > nx) | (ly + m > ny)
    ok = pp > 0
    safe = np.where(ok, pp, 1.0)
    flux = np.where(ok, pi / safe, np.nan)
    err = np.where(ok, np.sqrt(ppv) / safe, np.nan)
    return flux, err, ok, off, stamps, lx, ly


def psf_photometry(
    exposure: xr.Dataset, x: ArrayLike, y: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Forced PSF fluxes of a characterised (or calibrated) exposure at parent-frame
    positions ``(x, y)``, on the scale of its ``src`` table's ``psf_flux``: the same fit
    as :func:`measure_sources`, times the exposure's aperture correction
    (:func:`aperture_correction`). Returns flux, error (image units) and whether the
    model stamp leaves the image (NaN fluxes where no pixel counts)."""
    from lsstlite.stages.detect.ops import exposure_psf

    psf = exposure_psf(exposure)
    meta = exposure.attrs.get("characterize") or {}
    x0, y0 = exposure.lsst.xy0
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    image = np.asarray(exposure["image"].values, dtype=np.float32)
    variance = np.asarray(exposure["variance"].values, dtype=np.float32)
    fwhm = float(
        meta.get("fwhm_initial_px") or psf.fwhm_at(*_ap_corr_frame(image.shape, (x0, y0))[0])
    )
    flux, err, _, off, _, _, _ = _psf_fit(
        image, variance, psf, x - x0, y - y0, (x0, y0), _psf_size(psf, fwhm)
    )
    factor = aperture_correction(meta, x, y, image.shape, (x0, y0))
    return flux * factor, err * factor, off


def _ap_corr_frame(
    shape: tuple[int, int], xy0: tuple[int, int]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centre and half-size (parent frame) that the aperture-correction map's polynomial
    variables are scaled by."""
    ny, nx = shape
    center = (xy0[0] + (nx - 1) / 2.0, xy0[1] + (ny - 1) / 2.0)
    return center, (max(nx / 2.0, 1.0), max(ny / 2.0, 1.0))


def aperture_correction(
    meta: dict[str, Any],
    x: ArrayLike,
    y: ArrayLike,
    shape: tuple[int, int],
    xy0: tuple[int, int] = (0, 0),
) -> NDArray[np.float64]:
    """The factor that takes a PSF flux at parent-frame ``(x, y)`` to a total flux: the
    polynomial map of ``ap_flux / psf_flux`` of ``meta`` (an exposure's
    ``attrs["characterize"]``) times its wing correction; 1 without them."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    coeffs = meta.get("ap_corr_coeffs")
    if not coeffs:
        return np.ones(np.shape(x))
    center, scale = _ap_corr_frame(shape, xy0)
    u, v = (x - center[0]) / scale[0], (y - center[1]) / scale[1]
    terms = poly_terms(u, v, int(meta["ap_corr_degree"]))
    return np.asarray(
        np.tensordot(np.asarray(coeffs, dtype=np.float64), terms, axes=1)
        * float(meta.get("wing_correction", 1.0))
    )


def _psf_size(psf: PsfModel, fwhm: float) -> int:
    if isinstance(psf, PixelPsf):
        return int(2 * math.ceil(0.5 * psf.size * psf.step) + 1)
    return int(2 * math.ceil(3.0 * fwhm) + 1)


def _half_light_radius(
    image: NDArray[np.float32],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    rmax: NDArray[np.float64],
    norm: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Radius enclosing half of ``norm`` (sep's ``flux_radius``, 5×5 sub-pixels, computed
    by :func:`._kernels.flux_radius`), searched within ``rmax / 2`` first and within
    ``rmax`` only where it was not found there.

    The half-light radius is well inside the 6a search radius for nearly every source;
    sep integrates its 64 rings over the whole radius, so the smaller search is about
    4× cheaper. Its rings are twice as fine, which moves r_half by ~0.2% (median).
    """
    norm = np.asarray(norm, dtype=np.float64)
    r_half, flag = _kernels.flux_radius(image, x, y, 0.5 * rmax, 0.5, norm)
    again = ~(r_half < 0.45 * rmax) | (flag != 0)
    if again.any():
        r_half[again], _ = _kernels.flux_radius(
            image, x[again], y[again], rmax[again], 0.5, norm[again]
        )
    return r_half


def _measure(
    exposure: xr.Dataset,
    detections: pd.DataFrame,
    segmentation: NDArray[np.int32],
    psf: PsfModel | None,
    fwhm: float,
    config: MeasurementConfig,
    aperture_radii: tuple[float, ...],
    for_selection: bool = False,
    min_snr: float = 0.0,
) -> pd.DataFrame:
    """See :func:`measure_sources`. ``for_selection``: only what star selection reads
    (flags, windowed centroids in the PSF's window, the given apertures, moments), no
    Kron quantities (NaN), as a star's light radius gives the PSF's window anyway; and
    centroids and moments only of sources whose S/N in the first aperture, at their
    detected position, is above half of ``min_snr`` (the others keep their detected
    position and isophotal moments, flagged MOMENTS_FAILED)."""
    image, mask, variance = _arrays(exposure)
    planes = _mask_planes(exposure)
    x0, y0 = int(exposure["x"].values[0]), int(exposure["y"].values[0])
    n = len(detections)
    ny, nx = image.shape
    xs_a = detections["x"].to_numpy(np.float64, copy=True)
    ys_a = detections["y"].to_numpy(np.float64, copy=True)
    a = np.clip(detections["a"].to_numpy(np.float64, copy=True), 0.3, None)
    b = np.clip(detections["b"].to_numpy(np.float64, copy=True), 0.3, None)
    theta = detections["theta"].to_numpy(np.float64, copy=True)
    ids = detections["id"].to_numpy(np.int64, copy=True)
    # Segment owning each source (its own, or its parent's for peaks added in a footprint).
    iy = np.clip(np.floor(ys_a + 0.5).astype(np.int64), 0, image.shape[0] - 1)
    ix = np.clip(np.floor(xs_a + 0.5).astype(np.int64), 0, image.shape[1] - 1)
    seg_ids = np.where(segmentation[iy, ix] > 0, segmentation[iy, ix], ids).astype(np.int64)
    out: dict[str, Any] = {"id": ids}
    flags = np.zeros(n, dtype=np.int64)

    # Footprint mask flags (one pass over the segmentation map).
    seg_flat = segmentation.ravel()
    on = seg_flat > 0
    seg_on, mask_on = seg_flat[on], mask.ravel()[on]
    for plane, flag in (
        ("SAT", "SATURATED"),
        ("CR", "CR"),
        ("INTRP", "INTERPOLATED"),
        ("BAD", "BAD"),
        ("NO_DATA", "BAD"),
        ("STREAK", "STREAK"),
    ):
        if plane not in planes:
            continue
        touched = np.unique(seg_on[(mask_on & (1 << planes[plane])) != 0])
        flags[np.isin(seg_ids, touched)] |= 1 << SRC_FLAGS[flag]
    if n:
        bbox_edge = (
            (detections["xmin"].to_numpy() <= 0)
            | (detections["ymin"].to_numpy() <= 0)
            | (detections["xmax"].to_numpy() >= nx - 1)
            | (detections["ymax"].to_numpy() >= ny - 1)
        )
        flags[bbox_edge] |= 1 << SRC_FLAGS["EDGE"]
        flags[(detections["flag"].to_numpy() & sep.OBJ_MERGED) != 0] |= 1 << SRC_FLAGS["BLENDED"]

    # Kron (at the isophotal barycentre).
    if for_selection:
        kr, kflux, kerr = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    elif n:
        kr, kflag = sep.kron_radius(image, xs_a, ys_a, a, b, theta, 6.0)
        bad_kron = ~np.isfinite(kr) | (kr <= 0) | (kflag != 0)
        kr = np.where(bad_kron, config.kron_min_radius / np.sqrt(a * b), kr)
        flags[bad_kron] |= 1 << SRC_FLAGS["KRON_FAILED"]
        r_ell = np.maximum(config.kron_factor * kr, config.kron_min_radius / np.sqrt(a * b))
        kflux, kerr, _ = sep.sum_ellipse(
            image,
            xs_a,
            ys_a,
            a,
            b,
            theta,
            r_ell,
            var=variance,
            subpix=1,
        )
    else:
        kr, kflux, kerr = np.zeros(0), np.zeros(0), np.zeros(0)
    # Windowed centroids (SExtractor XWIN: Gaussian of σ = 2 r_half / 2.35, r_half of
    # the Kron flux), measured after Kron at the isophotal barycentre, as SExtractor does.
    if n and for_selection:
        sig = np.full(n, max(fwhm, 1.0) / FWHM_PER_SIGMA)
    elif n:
        # A deblended source's light radius includes its neighbours': by default it
        # gets the PSF's window (SExtractor keeps the contaminated one: "light"), and
        # its light radius is not measured.
        sig = np.full(n, max(fwhm, 1.0) / FWHM_PER_SIGMA)
        own = np.ones(n, dtype=bool)
        if config.blended_window == "psf":
            own = (flags & (1 << SRC_FLAGS["BLENDED"])) == 0
        if own.any():
            norm = np.where(np.asarray(kflux) > 0, kflux, detections["flux"].to_numpy(np.float64))
            r_half = _half_light_radius(image, xs_a[own], ys_a[own], 6.0 * a[own], norm[own])
            sig[own] = 2.0 / 2.35 * np.clip(np.nan_to_num(r_half, nan=1.0), 0.3, None)
    # Which sources get centroids and moments (all, except for a selection).
    use = np.ones(n, dtype=bool)
    if n and for_selection and min_snr > 0:
        f0, e0, _ = _kernels.circular_apertures(
            image, variance, xs_a, ys_a, np.array([float(aperture_radii[0])])
        )
        use = f0[:, 0] > 0.5 * min_snr * e0[:, 0]
    if use.any():
        # Exact pixel/circle overlap (sep's subpix=0): within 2e-4 px of SExtractor's 11×11
        # sub-sampling (99%; 7e-4 px at most) on a 16-Mpix image; sep.winpos's result
        # (to ~1e-13 px) in 40% of its time.
        xw, yw, wflag = _kernels.windowed_positions(image, xs_a[use], ys_a[use], sig[use])
        good = (
            (wflag == 0)
            & np.isfinite(xw)
            & (np.hypot(xw - xs_a[use], yw - ys_a[use]) < 2.0 * sig[use] + 1.0)
        )
        xs_a[use] = np.where(good, xw, xs_a[use])
        ys_a[use] = np.where(good, yw, ys_a[use])
    out["x"] = xs_a + x0
    out["y"] = ys_a + y0
    out["x_err"] = np.sqrt(np.clip(detections["errx2"].to_numpy(np.float64, copy=True), 0, None))
    out["y_err"] = np.sqrt(np.clip(detections["erry2"].to_numpy(np.float64, copy=True), 0, None))
    out["ra"] = np.full(n, np.nan)
    out["dec"] = np.full(n, np.nan)

    # Apertures.
    ap: dict[float, tuple[NDArray[np.float64], NDArray[np.float64]]] = {}
    ap_flux, ap_err, ap_flag = _kernels.circular_apertures(
        image, variance, xs_a, ys_a, np.asarray(aperture_radii, dtype=np.float64)
    )
    flags[(ap_flag & _kernels.APER_TRUNC).any(axis=1)] |= 1 << SRC_FLAGS["EDGE"]
    for q, r in enumerate(aperture_radii):
        ap[r] = (ap_flux[:, q], ap_err[:, q])

    out["kron_flux"] = np.asarray(kflux, float)
    out["kron_flux_err"] = np.asarray(kerr, float)
    out["kron_radius"] = np.asarray(kr, float)

    # Adaptive moments.
    sigma0 = max(fwhm / FWHM_PER_SIGMA, 0.7)
    ixx, iyy, ixy = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    ok = np.zeros(n, dtype=bool)
    if use.any():
        ixx[use], iyy[use], ixy[use], ok[use] = _kernels.adaptive_moments(
            image, xs_a[use], ys_a[use], sigma0
        )
    iso = ~ok
    ixx = np.where(iso, detections["x2"].to_numpy(np.float64, copy=True), ixx)
    iyy = np.where(iso, detections["y2"].to_numpy(np.float64, copy=True), iyy)
    ixy = np.where(iso, detections["xy"].to_numpy(np.float64, copy=True), ixy)
    flags[iso] |= 1 << SRC_FLAGS["MOMENTS_FAILED"]
    out["ixx"], out["iyy"], out["ixy"] = ixx, iyy, ixy

    # PSF flux and PSF moments.
    psf_flux = np.full(n, np.nan)
    psf_err = np.full(n, np.nan)
    pxx = np.full(n, np.nan)
    pyy = np.full(n, np.nan)
    pxy = np.full(n, np.nan)
    if psf is not None and n:
        m = _psf_size(psf, fwhm)
        psf_flux, psf_err, ok, off, stamps, lx, ly = _psf_fit(
            image, variance, psf, xs_a, ys_a, (x0, y0), m
        )
        flags[~ok] |= 1 << SRC_FLAGS["PSF_FLUX_FAILED"]
        flags[off] |= 1 << SRC_FLAGS["EDGE"]
        # PSF moments: the same model stamps stacked in one column, one numba call, the
        # window centred on each source's position in its stamp (the adaptive window,
        # < 5σ, never reaches the next stamp). Drawn at the source's sub-pixel phase
        # rather than re-drawn centred on a pixel: the moments differ by ~1e-3.
        column = np.ascontiguousarray(stamps.reshape(n * m, m), dtype=np.float32)
        pxx, pyy, pxy, _ = _kernels.adaptive_moments(
            column, xs_a - lx, np.arange(n) * m + (ys_a - ly), sigma0
        )
    out["psf_flux"], out["psf_flux_err"] = psf_flux, psf_err
    for r in aperture_radii:
        out[ap_flux_column(r)] = ap[r][0]
        out[ap_flux_column(r) + "_err"] = ap[r][1]
    out["psf_ixx"], out["psf_iyy"], out["psf_ixy"] = pxx, pyy, pxy
    out["footprint_npix"] = detections["npix"].to_numpy(np.int32)
    out["is_psf_star"] = np.zeros(n, dtype=bool)
    out["is_psf_reserved"] = np.zeros(n, dtype=bool)
    out["flags"] = flags
    table = pd.DataFrame(out)
    order = [c for c in SRC_COLUMNS if c in table.columns]
    extra = [c for c in table.columns if c not in SRC_COLUMNS]
    return table[order + extra]


def measure_sources(
    exposure: xr.Dataset,
    detections: pd.DataFrame,
    segmentation: NDArray[np.int32],
    *,
    psf: PsfModel | None = None,
    fwhm: float = 3.0,
    config: MeasurementConfig | None = None,
    aperture_radii: tuple[float, ...] = AP_RADII,
) -> Any:
    """Measure detected sources: centroids, apertures, Kron, moments and PSF fluxes.

    Parameters
    ----------
    exposure
        Background-subtracted exposure.
    detections, segmentation
        Output of :func:`detect_sources`.
    psf
        PSF model for ``psf_flux`` and ``psf_i**`` (NaN without one).
    fwhm
        PSF FWHM (pixels): starting size of the adaptive moments.
    config
        Kron parameters.
    aperture_radii
        Radii (pixels) of the ``ap_flux_<r>`` columns.

    Returns
    -------
    pandas.DataFrame or a ``Delayed`` of it
        Source table (image units, raw PSF fluxes, no aperture correction).

    Notes
    -----
    Lazy on dask input (one block). PSF fluxes are linear fits of the PSF at the
    centroid with uniform weights (unbiased), errors from the variance plane.
    """
    return _dispatch(
        _measure,
        exposure,
        detections,
        segmentation,
        psf,
        fwhm,
        config or MeasurementConfig(),
        tuple(aperture_radii),
    )


# -- star selection -----------------------------------------------------------------------
def _select_stars(
    exposure: xr.Dataset,
    sources: pd.DataFrame,
    segmentation: NDArray[np.int32],
    stamp_size: int,
    config: StarSelectionConfig,
) -> pd.DataFrame:
    image = np.asarray(exposure["image"].values, dtype=np.float32)
    x0, y0 = int(exposure["x"].values[0]), int(exposure["y"].values[0])
    col = ap_flux_column(12)
    snr = sources[col] / sources[col + "_err"]
    reject = (
        (1 << SRC_FLAGS["EDGE"])
        | (1 << SRC_FLAGS["SATURATED"])
        | (1 << SRC_FLAGS["CR"])
        | (1 << SRC_FLAGS["BAD"])
        | (1 << SRC_FLAGS["MOMENTS_FAILED"])
        | (1 << SRC_FLAGS["STREAK"])
    )
    cand = sources[(snr > config.min_snr) & ((sources["flags"] & reject) == 0)].copy()
    size = (cand["ixx"] + cand["iyy"]).to_numpy()
    locus = _kernels.stellar_locus(size)
    out = sources.assign(is_candidate=False)
    if not np.isfinite(locus):
        return out
    sel = np.abs(size / locus - 1.0) < 2.0 * config.size_tolerance
    # Follow the spatial variation of the size: linear fit over the detector, twice.
    for _ in range(2):
        if sel.sum() < 6:
            break
        xy = np.stack([np.ones(sel.sum()), cand["x"].to_numpy()[sel], cand["y"].to_numpy()[sel]], 1)
        coef, *_ = np.linalg.lstsq(xy, size[sel], rcond=None)
        pred = coef[0] + coef[1] * cand["x"].to_numpy() + coef[2] * cand["y"].to_numpy()
        sel = np.abs(size / pred - 1.0) < config.size_tolerance
    cand = cand[sel]
    # Isolation: flux of other footprints inside the stamp.
    half = stamp_size // 2
    keep = []
    row: Any
    for row in cand.itertuples():
        ix, iy = math.floor(row.x - x0 + 0.5), math.floor(row.y - y0 + 0.5)
        seg, _ = _cut(segmentation, ix - half, iy - half, stamp_size)
        img, _ = _cut(image, ix - half, iy - half, stamp_size)
        other = (seg > 0) & (seg != row.id)
        ratio = float(np.clip(img[other], 0, None).sum()) / max(getattr(row, col), 1e-30)
        keep.append(ratio < config.max_neighbour_fraction)
    cand = cand[np.asarray(keep, dtype=bool)]
    cand = cand.sort_values(col, ascending=False).head(config.max_stars)
    out.loc[cand.index, "is_candidate"] = True
    return out


def select_psf_stars(
    exposure: xr.Dataset,
    sources: pd.DataFrame,
    segmentation: NDArray[np.int32],
    *,
    stamp_size: int = 25,
    config: StarSelectionConfig | None = None,
) -> Any:
    """Mark PSF-star candidates (column ``is_candidate``): bright, clean, isolated, and on
    the stellar locus of adaptive size ``ixx + iyy`` (which may vary linearly in x, y).

    Returns
    -------
    pandas.DataFrame or a ``Delayed`` of it

    Notes
    -----
    Lazy on dask input (one block).
    """
    return _dispatch(
        _select_stars, exposure, sources, segmentation, stamp_size, config or StarSelectionConfig()
    )


# -- PSF ----------------------------------------------------------------------------------
def _stamps_of(
    image: NDArray[np.float32],
    variance: NDArray[np.float32],
    xs: NDArray[np.float64],
    ys: NDArray[np.float64],
    m: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    half = m // 2
    stamps = np.empty((len(xs), m, m))
    var = np.empty((len(xs), m, m))
    ix = np.floor(xs + 0.5).astype(int)
    iy = np.floor(ys + 0.5).astype(int)
    for k in range(len(xs)):
        stamps[k], _ = _cut(image, ix[k] - half, iy[k] - half, m)
        var[k], _ = _cut(variance, ix[k] - half, iy[k] - half, m, fill=np.inf)
    return stamps, var, xs - ix + half, ys - iy + half


def _fit_psf(
    exposure: xr.Dataset, stars: pd.DataFrame, fwhm: float, config: PsfConfig
) -> tuple[PsfModel, dict[str, Any], NDArray[np.bool_]]:
    """Fit the PSF to star rows (parent-frame x, y); return model, metadata, used mask."""
    image, _, variance = _arrays(exposure)
    x0, y0 = int(exposure["x"].values[0]), int(exposure["y"].values[0])
    ny, nx = image.shape
    n_stars = len(stars)
    meta: dict[str, Any] = {"n_psf_candidates": n_stars}
    if n_stars == 0:
        raise PsfFitError(
            f"{_label(exposure)}: no PSF-star candidates (is the image empty, or is "
            f"star_selection.min_snr={StarSelectionConfig().min_snr} too high?)"
        )
    half = int(
        np.clip(math.ceil(config.size_fwhm * fwhm), config.min_size // 2, config.max_size // 2)
    )
    step = config.step if config.step is not None else 1.0
    n = 2 * round(half / step) + 1
    m = 2 * half + 1
    xs = stars["x"].to_numpy(np.float64, copy=True) - x0
    ys = stars["y"].to_numpy(np.float64, copy=True) - y0
    stamps, var, cx, cy = _stamps_of(image, variance, xs, ys, m)
    weights = 1.0 / np.maximum(
        np.nanmean(np.where(np.isfinite(var), var, np.nan), axis=(1, 2)), 1e-12
    )
    use: NDArray[np.bool_] = np.asarray(np.isfinite(var).all(axis=(1, 2)))
    geometry = {
        "x0": x0 + (nx - 1) / 2.0,
        "y0": y0 + (ny - 1) / 2.0,
        "x_scale": max(nx / 2.0, 1.0),
        "y_scale": max(ny / 2.0, 1.0),
    }

    want_pixel = config.model == "pixel"
    if want_pixel and use.sum() < config.min_pixel_stars:
        meta["psf_fallback_reason"] = (
            f"{int(use.sum())} usable PSF stars < psf.min_pixel_stars={config.min_pixel_stars}"
        )
        want_pixel = False
    if want_pixel:
        psf: PsfModel | None = None
        chi2 = np.full(n_stars, np.nan)
        fcx, fcy = cx.copy(), cy.copy()
        basis: NDArray[np.float64] | None = None
        for it in range(config.n_reject_iter + 1):
            n_use = int(use.sum())
            degree = config.spatial_degree
            while degree > 0 and n_use < config.stars_per_term * (degree + 1) * (degree + 2) // 2:
                degree -= 1
            terms = _kernels.polynomial_terms(xs + x0, ys + y0, degree, **geometry)
            # After a rejection, the fit restarts from the last basis and centres.
            basis, _, ucx, ucy = _kernels.fit_pixel_basis(
                stamps[use],
                fcx[use],
                fcy[use],
                terms[:, use],
                weights[use],
                n=n,
                step=step,
                basis0=basis,
            )
            fcx[use], fcy[use] = ucx, ucy
            models = _kernels.render_stars(basis, fcx, fcy, terms, m=m, step=step)
            fl = (models * stamps).sum(axis=(1, 2)) / (models * models).sum(axis=(1, 2))
            resid = stamps - fl[:, None, None] * models
            with np.errstate(invalid="ignore", divide="ignore"):
                chi2 = np.nansum(
                    np.where(np.isfinite(var), resid**2 / var, np.nan), axis=(1, 2)
                ) / (m * m - 1)
            psf = PixelPsf.from_array(basis, degree=degree, step=step, **geometry)
            if it == config.n_reject_iter:
                break
            med = float(np.nanmedian(chi2[use]))
            new_use = use & (chi2 < config.reject_chi2 * med)
            if new_use.sum() < config.min_pixel_stars or new_use.sum() == use.sum():
                break
            use = new_use
        assert psf is not None
        meta.update(
            {
                "psf_model": "pixel",
                "psf_spatial_degree": degree,
                "n_psf_stars": int(use.sum()),
                "psf_chi2_dof_median": float(np.nanmedian(chi2[use])),
            }
        )
        return psf, meta, use

    # Analytic fallback: a Moffat per star, FWHM/ellipticity as polynomials of x, y.
    fits = []
    for k in range(n_stars):
        if not use[k]:
            continue
        s = stamps[k] / max(float(stamps[k].sum()), 1e-30)
        try:
            fits.append((xs[k] + x0, ys[k] + y0, fit_moffat_image(s, cx[k], cy[k])))
        except ValueError:
            continue
    if not fits:
        meta.update({"psf_model": "gaussian", "n_psf_stars": 0})
        meta.setdefault("psf_fallback_reason", "no usable star: Gaussian of the locus size")
        return GaussianPsf(fwhm=fwhm), meta, np.zeros(n_stars, dtype=bool)
    px = np.array([f[0] for f in fits])
    py = np.array([f[1] for f in fits])
    vals = {k: np.array([getattr(f[2], k) for f in fits]) for k in ("fwhm", "e1", "e2", "beta")}
    degree = 1 if len(fits) >= 10 else 0
    u = (px - geometry["x0"]) / 1000.0
    v = (py - geometry["y0"]) / 1000.0
    design = np.stack([np.ones_like(u), u, v][: 1 + 2 * degree], axis=1)

    def fit(values: NDArray[np.float64]) -> list[float]:
        coef, *_ = np.linalg.lstsq(design, values, rcond=None)
        return [float(c) for c in coef]

    model = VaryingMoffatPsf(
        fwhm_coeffs=fit(vals["fwhm"]),
        e1_coeffs=fit(vals["e1"]),
        e2_coeffs=fit(vals["e2"]),
        beta=float(np.median(vals["beta"])),
        x0=geometry["x0"],
        y0=geometry["y0"],
        scale=1000.0,
    )
    meta.update(
        {"psf_model": "varying_moffat", "n_psf_stars": len(fits), "psf_spatial_degree": degree}
    )
    return model, meta, use


def fit_psf(
    exposure: xr.Dataset, stars: pd.DataFrame, *, fwhm: float, config: PsfConfig | None = None
) -> Any:
    """Fit a PSF model to star stamps.

    A PSFEx-like pixel basis (:class:`lsstlite.data.psf_pixel.PixelPsf`) whose samples
    vary as a polynomial of degree ≤ ``spatial_degree`` (lowered until there are
    ``stars_per_term`` stars per term), with χ² outlier rejection; with fewer than
    ``min_pixel_stars`` stars (or ``model="moffat"``), per-star Moffat fits combined into
    a :class:`lsstlite.data.VaryingMoffatPsf`. ``metadata["psf_model"]`` says which, and
    ``metadata["psf_fallback_reason"]`` why.

    Parameters
    ----------
    exposure
        Background-subtracted exposure.
    stars
        Rows with parent-frame ``x``, ``y`` (e.g. ``is_candidate`` rows).
    fwhm
        Initial FWHM estimate (pixels): sets the model size.

    Returns
    -------
    (psf, metadata, used) or a ``Delayed`` of it
        ``used`` marks the stars kept in the fit.

    Raises
    ------
    PsfFitError
        If ``stars`` is empty.
    """
    return _dispatch(_fit_psf, exposure, stars, fwhm, config or PsfConfig())


# -- aperture corrections -----------------------------------------------------------------
def _wing_fraction(moffat: MoffatPsf, radius: float) -> float:
    """Fraction of a pixel-integrated Moffat's flux inside a circular aperture."""
    size = int(2 * math.ceil(max(radius * 3.0, 10 * moffat.fwhm)) + 1)
    img = moffat.image(0.0, 0.0, size=size, center=(size // 2, size // 2), oversample=3)
    flux, _, _ = sep.sum_circle(
        np.ascontiguousarray(img, dtype=np.float64),
        np.array([size // 2], float),
        np.array([size // 2], float),
        radius,
        subpix=5,
    )
    return float(flux[0])


def _aperture_correct(
    sources: pd.DataFrame,
    psf: PsfModel,
    shape: tuple[int, int],
    xy0: tuple[int, int],
    config: MeasurementConfig,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Scale PSF fluxes to the ``ap_corr_radius`` aperture with a polynomial map of the
    ratio over the detector (absorbs local PSF-model size errors), then to total flux
    with the Moffat wings beyond the aperture."""
    col = ap_flux_column(config.ap_corr_radius)
    center, scale = _ap_corr_frame(shape, xy0)
    # Every clean, bright, PSF-sized source (not only the PSF stars: more of the detector).
    dirty = sum(
        1 << SRC_FLAGS[f]
        for f in (
            "EDGE",
            "SATURATED",
            "CR",
            "INTERPOLATED",
            "BAD",
            "BLENDED",
            "PSF_FLUX_FAILED",
            "MOMENTS_FAILED",
            "STREAK",
        )
    )
    size = (sources["ixx"] + sources["iyy"]) / (sources["psf_ixx"] + sources["psf_iyy"])
    stars = sources[
        ((sources["flags"] & dirty) == 0) & (np.abs(size - 1.0) < 0.1)
        | sources["is_psf_star"]
        | sources["is_psf_reserved"]
    ]
    snr = stars[col] / stars[col + "_err"]
    bright = stars[(snr > config.ap_corr_min_snr) & (stars["psf_flux"] > 0)]
    if len(bright) < 3:
        bright = stars[stars["psf_flux"] > 0]
    ratio = (bright[col] / bright["psf_flux"]).to_numpy()
    u = (bright["x"].to_numpy() - center[0]) / scale[0]
    v = (bright["y"].to_numpy() - center[1]) / scale[1]
    degree = config.ap_corr_degree
    while degree > 0 and len(ratio) < 5 * (degree + 1) * (degree + 2) // 2:
        degree -= 1
    coeffs = np.array([float(np.median(ratio))]) if len(ratio) else np.array([1.0])
    use = np.ones(len(ratio), dtype=bool)
    for _ in range(3):
        if use.sum() == 0:
            break
        design = poly_terms(u[use], v[use], degree).T
        coeffs, *_ = np.linalg.lstsq(design, ratio[use], rcond=None)
        resid = ratio - poly_terms(u, v, degree).T @ coeffs
        mad = 1.4826 * float(np.median(np.abs(resid[use])))
        new = np.abs(resid) < 3.0 * max(mad, 1e-4)
        if new.sum() == use.sum():
            break
        use = new
    rms = float(np.std(resid[use])) if len(ratio) and use.any() else 0.0
    if config.do_wing_correction:
        moffat = psf.moffat_at(*center) if isinstance(psf, PixelPsf) else psf.params_at(*center)
        if not isinstance(moffat, MoffatPsf):
            moffat = MoffatPsf(fwhm=psf.fwhm_at(*center), beta=20.0)
        wing = 1.0 / _wing_fraction(moffat, float(config.ap_corr_radius))
    else:
        wing = 1.0
    meta = {
        "ap_corr": float(poly_terms(np.zeros(1), np.zeros(1), degree).T[0] @ coeffs),
        "ap_corr_coeffs": [float(c) for c in coeffs],
        "ap_corr_degree": degree,
        "ap_corr_rms": rms,
        "ap_corr_radius": config.ap_corr_radius,
        "ap_corr_n_stars": int(use.sum()),
        "wing_correction": wing,
    }
    factor = aperture_correction(meta, sources["x"].to_numpy(), sources["y"].to_numpy(), shape, xy0)
    out = sources.copy()
    out["psf_flux"] = sources["psf_flux"] * factor
    out["psf_flux_err"] = sources["psf_flux_err"] * factor
    return out, meta


# -- everything ---------------------------------------------------------------------------
def _characterize(exposure: xr.Dataset, config: CharacterizeConfig) -> CharacterizeResult:
    label = _label(exposure)
    ny, nx = exposure.sizes["y"], exposure.sizes["x"]
    x0, y0 = int(exposure["x"].values[0]), int(exposure["y"].values[0])
    # 1. first background and bright detections: the PSF size.
    sub, background0 = _subtract_background(exposure, config.background, None)
    bright_cfg = config.detection.model_copy(
        update={"threshold": config.bright_threshold, "filter_type": "none", "find_peaks": False}
    )
    bright, _ = _detect(sub, bright_cfg, 3.0, None)
    img = np.asarray(sub["image"].values, dtype=np.float32)
    bxx, byy, _, bok = _kernels.adaptive_moments(
        img,
        bright["x"].to_numpy(np.float64, copy=True),
        bright["y"].to_numpy(np.float64, copy=True),
        1.5,
    )
    locus = _kernels.stellar_locus((bxx + byy)[bok])
    if not np.isfinite(locus):
        raise PsfFitError(
            f"{label}: no star-like source above {config.bright_threshold}σ; "
            "cannot estimate the PSF size"
        )
    fwhm0 = FWHM_PER_SIGMA * math.sqrt(max(locus / 2.0 - 1.0 / 12.0, 0.1))
    on_locus = bok & (np.abs((bxx + byy) / locus - 1.0) < 0.1)
    stars_xy = (bright["x"].to_numpy()[on_locus] + x0, bright["y"].to_numpy()[on_locus] + y0)
    # 2. cosmic rays (on the first background-subtracted image), then repair.
    repaired = _repair_cosmic_rays(sub, fwhm0, config.cosmic_rays, stars_xy)
    n_cr = int(repaired.attrs.pop("n_cosmic_ray_pixels"))
    # 3. detection with the PSF-matched filter.
    det, seg = _detect(repaired, config.detection, fwhm0, None)
    # 4. second background with detections masked, on the repaired (not subtracted) image.
    detected = seg > 0
    grown = (
        dilate_diamond(detected, config.background.mask_grow_px)  # binary_dilation's
        if (config.background.mask_grow_px)
        else detected
    )
    restored = repaired.copy()
    restored["image"] = (
        ("y", "x"),
        np.add(repaired["image"].values, background0["image"].values, dtype=np.float32),
        repaired["image"].attrs,
    )
    final, background = _subtract_background(restored, config.background, grown)
    planes = _mask_planes(final)
    fmask = np.array(final["mask"].values, copy=True)
    np.bitwise_or(fmask, np.int32(1 << planes["DETECTED"]), out=fmask, where=detected)
    final["mask"] = (("y", "x"), fmask, final["mask"].attrs)
    # 5. measure without PSF, select stars, fit the PSF.
    pre = _measure(
        final,
        det,
        seg,
        None,
        fwhm0,
        config.measurement,
        (12.0,),
        for_selection=True,
        min_snr=config.star_selection.min_snr,
    )
    m_guess = int(
        2
        * np.clip(
            math.ceil(config.psf.size_fwhm * fwhm0),
            config.psf.min_size // 2,
            config.psf.max_size // 2,
        )
        + 1
    )
    cand = _select_stars(final, pre, seg, m_guess, config.star_selection)
    cands = cand[cand["is_candidate"]]
    n_res = round(config.star_selection.reserve_fraction * len(cands))
    reserved_idx = cands.index[:: max(len(cands) // n_res, 1)][:n_res] if n_res else cands.index[:0]
    fit_stars = cands.drop(index=reserved_idx)
    psf, meta, used = _fit_psf(final, fit_stars, fwhm0, config.psf)
    # 6. measure with the PSF, flag stars, aperture corrections.
    sources = _measure(final, det, seg, psf, fwhm0, config.measurement, AP_RADII)
    sources.loc[fit_stars.index[used], "is_psf_star"] = True
    sources.loc[reserved_idx, "is_psf_reserved"] = True
    sources, apmeta = _aperture_correct(sources, psf, (ny, nx), (x0, y0), config.measurement)
    center, _ = _ap_corr_frame((ny, nx), (x0, y0))
    moffat = psf.moffat_at(*center) if isinstance(psf, PixelPsf) else None
    e1, e2 = psf.ellipticity_at(*center)
    meta.update(apmeta)
    meta.update(
        {
            "fwhm_initial_px": fwhm0,
            "psf_fwhm_px": float(psf.fwhm_at(*center)),
            "psf_e1": float(e1),
            "psf_e2": float(e2),
            "psf_beta": float(moffat.beta if moffat is not None else getattr(psf, "beta", np.nan)),
            "n_cosmic_ray_pixels": n_cr,
            "n_sources": len(sources),
            "n_psf_reserved": len(reserved_idx),
            "sky_mean": float(background.attrs["background"]["global_mean"]),
            "sky_rms": float(background.attrs["background"]["global_rms"]),
        }
    )
    final.attrs["psf"] = psf.to_dict()
    final.attrs["characterize"] = meta
    log.info(
        "%s: %d sources, PSF %s from %d stars, FWHM %.2f px, %d CR pixels",
        label,
        len(sources),
        meta["psf_model"],
        meta["n_psf_stars"],
        meta["psf_fwhm_px"],
        n_cr,
    )
    return CharacterizeResult(final, background, sources, psf, meta)


def characterize_exposure(exposure: xr.Dataset, config: CharacterizeConfig | None = None) -> Any:
    """Background, cosmic rays, detection, star selection, PSF, measurement, aperture
    corrections: what LSST's ``characterizeImage`` does, on one detector.

    Steps: (1) background and bright detections give the PSF size from the stellar locus;
    (2) cosmic rays are found with that size, masked and interpolated; (3) detection with
    a PSF-matched filter; (4) the background is re-estimated with footprints masked;
    (5) PSF stars are selected (10% reserved) and the PSF fitted; (6) all sources are
    measured and PSF fluxes aperture-corrected to total flux.

    Parameters
    ----------
    exposure
        Post-ISR exposure (electrons), with a variance plane.
    config
        See :class:`CharacterizeConfig`.

    Returns
    -------
    CharacterizeResult or a ``Delayed`` of it

    Raises
    ------
    PsfFitError
        When no star-like source exists (the message names the data ID).

    Notes
    -----
    Lazy on dask input: the whole detector is one delayed block (detection and the PSF
    fit are global over the image).
    """
    return _dispatch(_characterize, exposure, config or CharacterizeConfig())
