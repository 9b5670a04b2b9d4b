"""Deblending, measurement, reference-band selection, forced photometry and object tables.

The multi-band measurement of DMTN-023 on one patch:

1. :func:`deblend_measure` — in one band, split every blended footprint of
   ``merged_det`` between its peaks (symmetric, monotonic templates; flux conserving)
   and measure every object (parents of blends too) with the same footprints in every
   band → ``coadd_meas``.
2. :func:`choose_reference` — per object, the first band in priority order with
   S/N above a threshold and no flag → ``coadd_ref``.
3. :func:`forced_photometry` — in each band, the same measurements at the reference
   position and with the reference shapes → ``coadd_forced``.
4. :func:`make_object_table` — one row per primary object of a tract, reference columns
   plus forced fluxes per band → ``object``.

Rows of ``coadd_meas``, ``coadd_ref`` and ``coadd_forced`` of a patch share ids and order
(footprints in ``merged_det`` order; for a blend the parent, then its children).
Column names: :mod:`lsstlite.data.objects`.

Neighbours are replaced by noise while an object is measured (as LSST's
``NoiseReplacer``): every footprint is replaced by Gaussian noise of the variance plane,
drawn from a generator seeded by ``noise_seed`` and the band, and only the measured
object's own (deblended) pixels are put back.

These ops hold a whole patch in memory and are eager (they read the pixels): footprints
cross any chunking, and a patch fits. See ``docs/design/multiband.md``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sep
import xarray as xr
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from lsstlite.data.masks import coadd_holes, mask_bits, mask_planes
from lsstlite.data.objects import (
    APERTURE_RADII_PX,
    FLAG_COLUMNS,
    OBJECT_REFERENCE_COLUMNS,
    PARENT_ID_BIT,
    aperture_column,
    band_flux_columns,
    measurement_columns,
    object_columns,
)
from lsstlite.data.psf import PsfModel
from lsstlite.data.wcs import wcs_from_cards
from lsstlite.stages.detect.ops import (
    BAD_PLANES,
    exposure_band,
    exposure_psf,
    footprints_from_merged,
    psf_position,
    psf_sigma_px,
)
from lsstlite.stages.measure import _kernels

__all__ = [
    "DEFAULT_REFERENCE_FLAGS",
    "choose_reference",
    "deblend_measure",
    "deblend_measure_children",
    "deblend_patch",
    "deblend_table",
    "forced_photometry",
    "make_object_table",
]

#: Flags that disqualify a band as an object's reference band (as LSST's
#: ``MergeMeasurementsTask.flags``).
DEFAULT_REFERENCE_FLAGS: tuple[str, ...] = ("flag_centroid", "flag_psf_flux", "flag_masked")

#: Kron aperture: 2.5 Kron radii, at least 3.5 pixels (SExtractor ``PHOT_AUTOPARAMS``).
KRON_FACTOR, KRON_MIN_RADIUS = 2.5, 3.5
#: sep aperture flags that make a Kron radius unusable.
APER_ALLMASKED, APER_NONPOSITIVE = 0x0040, 0x0080
#: Galaxy-model radius grid, in units of the moments' deconvolved half-light radius.
CMODEL_RADIUS_GRID = (0.35, 0.6, 1.0, 1.6, 2.6)


@dataclass
class _Patch:
    """One band of one patch, ready to measure (all arrays in the coadd's pixel grid)."""

    band: str
    image: NDArray[np.float64]
    variance: NDArray[np.float64]
    bad: NDArray[np.bool_]
    saturated: NDArray[np.bool_]
    inexact_psf: NDArray[np.bool_]
    holes: NDArray[np.bool_]  # coadd_holes: covered by inputs, usable in none
    edge_mask: NDArray[np.bool_]
    noise: NDArray[np.float64]
    x0: int
    y0: int
    psf: PsfModel
    psf_sigma: float
    psf_size: int
    wcs_cards: dict[str, Any]
    psf_ref: tuple[float, float]  # where the PSF is typical (parent frame)

    def psf_image(self, x: float, y: float) -> NDArray[np.float64]:
        """The PSF at ``(x, y)`` (parent frame); where no input covers that position in
        this band (an object detected only in another band's coverage) the typical PSF
        of the patch, since there are no pixels to measure anyway (flag_edge,
        flag_masked say so)."""
        try:
            return np.asarray(self.psf.image(x, y, size=self.psf_size), dtype=float)
        except ValueError:
            return np.asarray(self.psf.image(*self.psf_ref, size=self.psf_size), dtype=float)


@dataclass
class _Record:
    """An object to measure: its pixels (heavy footprint) and where it starts."""

    id: int
    parent_id: int
    n_child: int
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 in array indices
    heavy: NDArray[np.float64]  # object pixels in box (zero outside the footprint)
    inside: NDArray[np.bool_]
    x: float  # start position, array indices
    y: float
    skipped: bool


def _prepare(coadd: xr.Dataset, noise_seed: int) -> _Patch:
    band = exposure_band(coadd)
    image = np.asarray(coadd["image"].values, dtype=np.float64)
    variance = np.asarray(coadd["variance"].values, dtype=np.float64)
    planes = mask_planes(coadd)
    mask = np.asarray(coadd["mask"].values)
    bad = (mask & mask_bits(planes, BAD_PLANES)) != 0
    bad |= ~np.isfinite(image) | ~np.isfinite(variance) | (variance <= 0)
    saturated, inexact_psf = (
        (mask & mask_bits(planes, p)) != 0 if p in planes else np.zeros(mask.shape, bool)
        for p in ("SAT", "INEXACT_PSF")
    )
    holes = coadd_holes(mask, planes)
    edge_mask = (mask & mask_bits(planes, ("NO_DATA", "EDGE"))) != 0
    image = np.where(bad, 0.0, image)
    variance = np.where(bad, 0.0, variance)
    x0, y0 = int(coadd["x"].values[0]), int(coadd["y"].values[0])
    psf = exposure_psf(coadd)
    psf_ref = psf_position(coadd)
    sigma = psf_sigma_px(psf, *psf_ref)
    size = 2 * math.ceil(6.0 * sigma) + 1
    rng = np.random.default_rng([int(noise_seed), zlib.crc32(band.encode())])
    noise = rng.standard_normal(image.shape) * np.sqrt(variance)
    return _Patch(
        band, image, variance, bad, saturated, inexact_psf, holes, edge_mask, noise, x0, y0,
        psf, sigma,
        size, dict(coadd.attrs["wcs"]), psf_ref,
    )  # fmt: skip


def deblend_patch(
    coadd: xr.Dataset,
    merged: pd.DataFrame,
    *,
    max_peaks: int = 50,
    point_chi2: float = 3.0,
    noise_seed: int = 1,
    deblended: pd.DataFrame | None = None,
) -> tuple[list[_Record], _Patch]:
    """Deblend every footprint of ``merged_det`` in one band (internal building block).

    ``point_chi2`` > 0 enables PSF templates: each child of a first (symmetric-template)
    deblend is centroided, PSF models at all peaks are fitted jointly, and a peak whose
    reduced χ² within one FWHM is below ``point_chi2`` gets its PSF model as template.

    ``deblended`` (the ``coadd_deblend`` table of this band, :func:`deblend_table`) gives
    the children's pixels of an earlier run instead of deblending again.

    Returns the objects to measure, in table order (per footprint: parent of a blend,
    then children; isolated objects alone), and the prepared patch (whose ``noise``
    image has every footprint replaced by noise).
    """
    patch = _prepare(coadd, noise_seed)
    stored = None if deblended is None else _stored_children(deblended, patch.band)
    ny, nx = patch.image.shape
    footprints = footprints_from_merged(merged)
    records: list[_Record] = []
    in_any = np.zeros((ny, nx), dtype=bool)
    for _, group in merged.groupby("footprint_id", sort=False):
        (ya, yb, xa, xb), inside = footprints[int(group["footprint_id"].iloc[0])]
        ya, yb, xa, xb = ya - patch.y0, yb - patch.y0, xa - patch.x0, xb - patch.x0
        # clip to the coadd (spans come from the same grid, but be safe)
        ca, cb, da, db = max(ya, 0), min(yb, ny), max(xa, 0), min(xb, nx)
        inside = inside[ca - ya : cb - ya, da - xa : db - xa]
        box = (ca, cb, da, db)
        in_any[ca:cb, da:db] |= inside
        parent_pixels = np.where(inside, patch.image[ca:cb, da:db], 0.0)
        px = group["x"].to_numpy(float) - patch.x0
        py = group["y"].to_numpy(float) - patch.y0
        ids = group["id"].to_numpy(np.int64)
        if len(group) == 1:
            records.append(
                _Record(int(ids[0]), 0, 0, box, parent_pixels, inside, px[0], py[0], False)
            )
            continue
        skip = len(group) > max_peaks
        parent_id = int(ids[0]) | PARENT_ID_BIT
        records.append(
            _Record(parent_id, 0, len(group), box, parent_pixels, inside, px[0], py[0], skip)
        )
        peaks = np.stack([py - ca, px - da], axis=1)
        if stored is not None:
            children = _children_from_table(stored, ids, inside, patch.band)
        else:
            children = _kernels.deblend(parent_pixels, inside, peaks, skip=skip)
        if stored is None and not skip and point_chi2 > 0:
            models = _point_models(patch, box, inside, parent_pixels, children, point_chi2)
            children = _kernels.deblend(parent_pixels, inside, peaks, point_models=models)
        for k in range(len(group)):
            records.append(
                _Record(int(ids[k]), parent_id, 0, box, children[k], inside, px[k], py[k], skip)
            )
    patch.noise = np.where(in_any, patch.noise, patch.image)
    return records, patch


def deblend_table(records: Sequence[_Record]) -> pd.DataFrame:
    """The children of every blend as a table (``coadd_deblend``): ``id`` and ``pixels``,
    the child's values on its parent footprint's pixels in row-major order (LSST keeps
    them as the HeavyFootprints of ``deepCoadd_meas``). Isolated objects and parents are
    not stored: their pixels are the coadd's."""
    children = [r for r in records if r.parent_id != 0]
    frame = pd.DataFrame(
        {
            "id": np.array([r.id for r in children], dtype=np.int64),
            "pixels": [np.ascontiguousarray(r.heavy[r.inside]) for r in children],
        }
    )
    return frame


def _stored_children(table: pd.DataFrame, band: str) -> dict[int, NDArray[np.float64]]:
    if "id" not in table or "pixels" not in table:
        raise ValueError(f"coadd_deblend of band {band!r} has no 'id' and 'pixels' columns")
    return {
        int(i): np.asarray(p, dtype=np.float64)
        for i, p in zip(table["id"].to_numpy(), table["pixels"], strict=True)
    }


def _children_from_table(
    stored: dict[int, NDArray[np.float64]],
    ids: NDArray[np.int64],
    inside: NDArray[np.bool_],
    band: str,
) -> NDArray[np.float64]:
    n_pix = int(inside.sum())
    children = np.zeros((len(ids), *inside.shape))
    for k, i in enumerate(ids):
        pixels = stored.get(int(i))
        if pixels is None or pixels.size != n_pix:
            raise ValueError(
                f"coadd_deblend of band {band!r} does not match merged_det at object {int(i)} "
                f"({'missing' if pixels is None else f'{pixels.size} pixels, footprint {n_pix}'}): "
                "were they made from the same merged_det?"
            )
        children[k][inside] = pixels
    return children


def _point_models(
    patch: _Patch,
    box: tuple[int, int, int, int],
    inside: NDArray[np.bool_],
    pixels: NDArray[np.float64],
    children: NDArray[np.float64],
    max_chi2: float,
) -> NDArray[np.float64]:
    """Fitted PSF models of the point-like peaks of a blend (NaN for the others)."""
    ya, yb, xa, xb = box
    h, w = pixels.shape
    var = patch.variance[ya:yb, xa:xb]
    ok = inside & (var > 0)
    n = children.shape[0]
    centres = np.zeros((n, 2))
    for i in range(n):
        centres[i] = np.unravel_index(int(np.argmax(children[i])), children[i].shape)
    half = patch.psf_size // 2
    safe_var = np.where(ok, var, 1.0)
    for _ in range(3):
        models = np.zeros((n, h, w))
        for i in range(n):
            cx, cy, _, _, _failed = _kernels.windowed_centroid(
                children[i], safe_var, ok, centres[i, 1], centres[i, 0], patch.psf_sigma, 2.0
            )
            centres[i] = (cy, cx)
            img = patch.psf_image(cx + xa + patch.x0, cy + ya + patch.y0)
            jx, jy = math.floor(cx + 0.5), math.floor(cy + 0.5)
            ma, mb = max(jy - half, 0), min(jy + half + 1, h)
            na, nb = max(jx - half, 0), min(jx + half + 1, w)
            if ma < mb and na < nb:
                models[i, ma:mb, na:nb] = img[
                    ma - jy + half : mb - jy + half, na - jx + half : nb - jx + half
                ]
        amps = _kernels.fit_amplitudes(pixels, safe_var, ok, models)
        models *= amps[:, None, None]
        total = models.sum(axis=0)
        share = np.where(total > 0, models / np.where(total > 0, total, 1.0), 1.0 / n)
        children = models + share * (pixels - total)
    resid2 = np.where(ok, (pixels - models.sum(axis=0)) ** 2 / np.where(ok, var, 1.0), 0.0)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.full((n, h, w), np.nan)
    r2 = (2.355 * patch.psf_sigma) ** 2
    for i in range(n):
        near = ok & ((yy - centres[i, 0]) ** 2 + (xx - centres[i, 1]) ** 2 <= r2)
        if amps[i] > 0 and near.sum() > 3 and resid2[near].mean() < max_chi2:
            out[i] = models[i]
    return out


@dataclass(frozen=True)
class _Reference:
    """What forced photometry takes from the reference measurement of one object."""

    x: float
    y: float
    x_err: float
    y_err: float
    ixx: float
    iyy: float
    ixy: float
    ixx_psf: float
    iyy_psf: float
    ixy_psf: float
    kron_radius: float
    frac_dev: float
    exp_radius: float
    dev_radius: float


def _intrinsic(
    ixx: float, iyy: float, ixy: float, pxx: float, pyy: float, pxy: float
) -> tuple[float, float, float]:
    """Deconvolved Gaussian-equivalent half-light radius and distortion of moments."""
    gxx, gyy, gxy = ixx - pxx, iyy - pyy, ixy - pxy
    det = gxx * gyy - gxy * gxy
    if not (gxx > 0 and gyy > 0 and det > 0.01):
        return 0.3, 0.0, 0.0
    trace = gxx + gyy
    return max(1.1774 * det**0.25, 0.3), (gxx - gyy) / trace, 2.0 * gxy / trace


def _measure(
    patch: _Patch,
    rec: _Record,
    radii: Sequence[int],
    do_cmodel: bool,
    ref: _Reference | None,
) -> dict[str, Any]:
    ny, nx = patch.image.shape
    sx, sy = (rec.x, rec.y) if ref is None else (ref.x, ref.y)
    half = max(math.ceil(max(radii)) + 3, patch.psf_size // 2 + 1)
    if ref is not None and math.isfinite(ref.kron_radius):
        a_ref = math.sqrt(max(ref.ixx, ref.iyy, 1.0))
        half = max(half, math.ceil(KRON_FACTOR * ref.kron_radius * a_ref) + 2)
    ya = max(min(math.floor(sy) - half, rec.box[0]), 0)
    yb = min(max(math.floor(sy) + half + 1, rec.box[1]), ny)
    xa = max(min(math.floor(sx) - half, rec.box[2]), 0)
    xb = min(max(math.floor(sx) + half + 1, rec.box[3]), nx)
    stamp = patch.noise[ya:yb, xa:xb].copy()
    by0, by1, bx0, bx1 = rec.box
    sub = stamp[by0 - ya : by1 - ya, bx0 - xa : bx1 - xa]
    sub[rec.inside] = rec.heavy[rec.inside]
    var = np.ascontiguousarray(patch.variance[ya:yb, xa:xb])
    ok = ~patch.bad[ya:yb, xa:xb]
    lx, ly = sx - xa, sy - ya
    out: dict[str, Any] = {name: False for name in FLAG_COLUMNS}
    out["flag_deblend_skipped"] = rec.skipped
    sigma = patch.psf_sigma
    if ref is None:
        # Around a hole (a core saturated in every visit) the brightest pixels are its
        # ring, on which a window as narrow as the PSF converges. A window wider than
        # the hole converges on the ring's centre (for a ring of radius R, a mean shift
        # with σ moves an offset δ to δ R² / 2σ²): σ = 2 R, by steps of one moment.
        window, step = sigma, 2.0
        hole = patch.holes[ya:yb, xa:xb]
        if hole.any():
            r = math.ceil(3.0 * sigma)
            iy0, ix0 = math.floor(ly + 0.5), math.floor(lx + 0.5)
            n = int(hole[max(iy0 - r, 0) : iy0 + r + 1, max(ix0 - r, 0) : ix0 + r + 1].sum())
            if n:
                window, step = max(sigma, 2.0 * math.sqrt(n / math.pi)), 1.0
        cx, cy, ex, ey, failed = _kernels.windowed_centroid(
            stamp, var, ok, lx, ly, window, max(2.0, window), step
        )
        out["flag_centroid"] = bool(failed)
    else:
        cx, cy, ex, ey = lx, ly, ref.x_err, ref.y_err
    px, py = cx + xa + patch.x0, cy + ya + patch.y0
    out.update(x=px, y=py, x_err=ex, y_err=ey)
    # PSF model at the centroid, placed so its middle pixel is the nearest pixel.
    psf_img = patch.psf_image(px, py)
    ph = patch.psf_size // 2
    ix, iy = math.floor(cx + 0.5), math.floor(cy + 0.5)
    model = np.zeros_like(stamp)
    ma, mb = max(iy - ph, 0), min(iy + ph + 1, stamp.shape[0])
    na, nb = max(ix - ph, 0), min(ix + ph + 1, stamp.shape[1])
    model[ma:mb, na:nb] = psf_img[ma - (iy - ph) : mb - (iy - ph), na - (ix - ph) : nb - (ix - ph)]
    flux, err = _kernels.psf_flux(stamp, var, ok, model)
    out["psf_flux"], out["psf_flux_err"] = flux, err
    out["flag_psf_flux"] = not math.isfinite(flux)
    s2 = sigma * sigma
    pxx, pyy, pxy, _ = _kernels.adaptive_moments(
        psf_img, np.ones(psf_img.shape, dtype=bool), ph + (cx - ix), ph + (cy - iy), s2, s2, 0.0
    )
    out.update(ixx_psf=pxx, iyy_psf=pyy, ixy_psf=pxy)
    if ref is None:
        ixx, iyy, ixy, failed = _kernels.adaptive_moments(stamp, ok, cx, cy, pxx, pyy, pxy)
        out["flag_shape"] = bool(failed)
    else:
        ixx, iyy, ixy = ref.ixx, ref.iyy, ref.ixy
    out.update(ixx=ixx, iyy=iyy, ixy=ixy)
    # bad pixels near the centre; footprint on the boundary or on NO_DATA
    r_bad = math.ceil(2.0 * 2.355 * sigma)
    near = (slice(max(iy - r_bad, 0), iy + r_bad + 1), slice(max(ix - r_bad, 0), ix + r_bad + 1))
    out["flag_masked"] = bool((~ok[near]).any())
    out["flag_saturated"] = bool(patch.saturated[ya:yb, xa:xb][near].any())
    centre = (slice(max(iy - 1, 0), iy + 2), slice(max(ix - 1, 0), ix + 2))
    out["flag_inexact_psf"] = bool(patch.inexact_psf[ya:yb, xa:xb][centre].any())
    out["flag_edge"] = bool(
        by0 == 0
        or bx0 == 0
        or by1 == ny
        or bx1 == nx
        or (patch.edge_mask[by0:by1, bx0:bx1] & rec.inside).any()
    )
    out["edge_distance"] = float(min(px - patch.x0, py - patch.y0,
                                     patch.x0 + nx - 1 - px, patch.y0 + ny - 1 - py))  # fmt: skip
    out["footprint_flux"] = float(rec.heavy[rec.inside].sum())
    data = np.ascontiguousarray(stamp)
    smask = np.ascontiguousarray(~ok)
    for r in radii:
        s, e, _ = sep.sum_circle(data, [cx], [cy], float(r), var=var, mask=smask, subpix=0)
        out[aperture_column(r)], out[f"{aperture_column(r)}_err"] = float(s[0]), float(e[0])
    # Kron photometry on the moments' ellipse
    lam = 0.5 * (ixx + iyy) + math.sqrt(0.25 * (ixx - iyy) ** 2 + ixy * ixy)
    lam2 = max(0.5 * (ixx + iyy) - math.sqrt(0.25 * (ixx - iyy) ** 2 + ixy * ixy), 1e-3)
    a, b, theta = math.sqrt(lam), math.sqrt(lam2), 0.5 * math.atan2(2 * ixy, ixx - iyy)
    if ref is None:
        kr, kflag = sep.kron_radius(data, [cx], [cy], [a], [b], [theta], 6.0, mask=smask)
        # a truncated ellipse (APER_TRUNC) still gives a usable radius
        usable = (int(kflag[0]) & (APER_NONPOSITIVE | APER_ALLMASKED)) == 0
        kron_radius = float(kr[0]) if usable and kr[0] > 0 else math.nan
    else:
        kron_radius = ref.kron_radius
    out["kron_radius"] = kron_radius
    if math.isfinite(kron_radius):
        rk = KRON_FACTOR * kron_radius
        if rk * math.sqrt(a * b) < KRON_MIN_RADIUS:
            s, e, _ = sep.sum_circle(
                data, [cx], [cy], KRON_MIN_RADIUS, var=var, mask=smask, subpix=1
            )
        else:
            s, e, _ = sep.sum_ellipse(
                data, [cx], [cy], [a], [b], [theta], rk, var=var, mask=smask, subpix=1
            )
        out["kron_flux"], out["kron_flux_err"] = float(s[0]), float(e[0])
    else:
        out["kron_flux"] = out["kron_flux_err"] = math.nan
        out["flag_kron"] = True
    out.update(
        cmodel_flux=math.nan,
        cmodel_flux_err=math.nan,
        cmodel_frac_dev=math.nan,
        cmodel_exp_radius=math.nan,
        cmodel_dev_radius=math.nan,
    )
    if do_cmodel:
        out.update(_cmodel(patch, stamp, var, ok, cx, cy, psf_img, ixx, iyy, ixy,
                           (pxx, pyy, pxy), ref))  # fmt: skip
    else:
        out["flag_cmodel"] = True
    return out


def _cmodel(
    patch: _Patch,
    stamp: NDArray[np.float64],
    var: NDArray[np.float64],
    ok: NDArray[np.bool_],
    cx: float,
    cy: float,
    psf_img: NDArray[np.float64],
    ixx: float,
    iyy: float,
    ixy: float,
    psf_moments: tuple[float, float, float],
    ref: _Reference | None,
) -> dict[str, Any]:
    """Exponential + de Vaucouleurs fit (PSF-convolved), CModel-like.

    Measurement: for each profile the half-light radius is chosen on a grid around the
    deconvolved moments' size (amplitude linear), then both amplitudes are fitted
    together (non-negative); ``cmodel_flux`` is their sum. Forced: radii and
    ``frac_dev`` from the reference, one amplitude.

    The profiles are drawn centred on the stamp's middle pixel and convolved with
    ``psf_img``, the PSF at the centroid that the PSF flux uses (its middle pixel shifted
    by the centroid's sub-pixel offset): the offset is interpolated once, in the PSF.
    Drawn at the offset, a profile smaller than a pixel lands in one pixel and the
    template was off-centre by up to half a pixel (stars then preferred a wider
    profile and came out 1-4% bright). The PSF is not renormalised, so a star's CModel
    flux is its PSF flux.
    """
    if ref is None:
        r0, e1, e2 = _intrinsic(ixx, iyy, ixy, *psf_moments)
    else:
        r0, e1, e2 = _intrinsic(ref.ixx, ref.iyy, ref.ixy, ref.ixx_psf, ref.iyy_psf, ref.ixy_psf)
    radius = max(patch.psf_size // 2, math.ceil(4.0 * r0 * 2.6) + 2)
    ix, iy = math.floor(cx + 0.5), math.floor(cy + 0.5)
    h, w = stamp.shape
    ya, yb, xa, xb = iy - radius, iy + radius + 1, ix - radius, ix + radius + 1
    if ya < 0 or xa < 0 or yb > h or xb > w:
        # pad with unusable pixels so that the model stamp stays square
        pad = max(-ya, -xa, yb - h, xb - w, 0)
        stamp = np.pad(stamp, pad)
        var = np.pad(var, pad)
        ok = np.pad(ok, pad)
        ya, yb, xa, xb = ya + pad, yb + pad, xa + pad, xb + pad
    img = stamp[ya:yb, xa:xb]
    v = var[ya:yb, xa:xb]
    use = ok[ya:yb, xa:xb] & (v > 0)
    if use.sum() < 5:
        return {"flag_cmodel": True}
    wgt = 1.0 / v[use]
    data = img[use]
    size = 2 * radius + 1
    kernel = psf_img
    lx = ly = float(radius)

    def templates(profiles: list[tuple[float, float]]) -> NDArray[np.float64]:
        models = _kernels.model_templates(profiles, e1, e2, lx, ly, size, kernel)
        return models[:, use]

    if ref is not None:
        if not (math.isfinite(ref.exp_radius) and math.isfinite(ref.frac_dev)):
            return {"flag_cmodel": True}
        exp, dev = templates([(1.0, ref.exp_radius), (4.0, ref.dev_radius)])
        t = (1.0 - ref.frac_dev) * exp + ref.frac_dev * dev
        norm = float(np.dot(t * wgt, t))
        if norm <= 0:
            return {"flag_cmodel": True}
        return {
            "cmodel_flux": float(np.dot(t * wgt, data) / norm),
            "cmodel_flux_err": math.sqrt(1.0 / norm),
            "cmodel_frac_dev": ref.frac_dev,
            "cmodel_exp_radius": ref.exp_radius,
            "cmodel_dev_radius": ref.dev_radius,
        }
    best: dict[float, tuple[float, float, NDArray[np.float64]]] = {}
    profiles = [(n, r0 * f) for n in (1.0, 4.0) for f in CMODEL_RADIUS_GRID]
    for (n, r_e), t in zip(profiles, templates(profiles), strict=True):
        norm = float(np.dot(t * wgt, t))
        if norm <= 0:
            continue
        amp = float(np.dot(t * wgt, data) / norm)
        chi2 = float(np.dot((data - amp * t) ** 2, wgt))
        if n not in best or chi2 < best[n][0]:
            best[n] = (chi2, r_e, t)
    if len(best) < 2:
        return {"flag_cmodel": True}
    a = np.stack([best[1.0][2], best[4.0][2]], axis=1)
    ata = a.T @ (a * wgt[:, None])
    atb = a.T @ (data * wgt)
    fit = _joint_amplitudes(a, data, wgt)
    if fit is None:
        return {"flag_cmodel": True}
    amps, cov = fit
    if amps[0] < 0 or amps[1] < 0:
        # non-negative solution: the better single profile
        k = 0 if best[1.0][0] <= best[4.0][0] else 1
        amp = atb[k] / ata[k, k]
        amps = np.array([amp, 0.0]) if k == 0 else np.array([0.0, amp])
        var_tot = 1.0 / ata[k, k]
    else:
        var_tot = float(cov.sum())
    total = float(amps.sum())
    return {
        "cmodel_flux": total,
        "cmodel_flux_err": math.sqrt(max(var_tot, 0.0)),
        "cmodel_frac_dev": float(amps[1] / total) if total > 0 else math.nan,
        "cmodel_exp_radius": best[1.0][1],
        "cmodel_dev_radius": best[4.0][1],
    }


def _joint_amplitudes(
    templates: NDArray[np.float64], data: NDArray[np.float64], wgt: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """Weighted least-squares amplitudes of the columns of ``templates`` and their
    covariance, through the SVD of the weighted design with singular values below 1e-8
    of the largest dropped (``None`` if there is nothing to fit).

    When both CModel radii sit at the bottom of the grid the exponential and de
    Vaucouleurs templates are the PSF to round-off; inverting the 2×2 normal matrix then
    gave arbitrary amplitudes (bright stars' totals 1.07–1.65× their flux on a `ci`
    patch). The truncated, minimum-norm solution splits such a star evenly between the
    two, and its total and the total's variance are those of the one-template fit.
    """
    sw = np.sqrt(wgt)
    try:
        u, sv, vt = np.linalg.svd(templates * sw[:, None], full_matrices=False)
    except np.linalg.LinAlgError:
        return None
    if not sv[0] > 0:
        return None
    inv_sv = np.where(sv > 1e-8 * sv[0], 1.0 / np.where(sv > 0, sv, 1.0), 0.0)
    amps = vt.T @ (inv_sv * (u.T @ (data * sw)))
    return amps, (vt.T * inv_sv**2) @ vt


def _table(
    patch: _Patch,
    records: list[_Record],
    rows: list[dict[str, Any]],
    radii: Sequence[int],
) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["id"] = np.array([r.id for r in records], dtype=np.int64)
    frame["parent_id"] = np.array([r.parent_id for r in records], dtype=np.int64)
    frame["deblend_n_child"] = np.array([r.n_child for r in records], dtype=np.int64)
    frame["band"] = patch.band
    if len(frame):
        ra, dec = wcs_from_cards(patch.wcs_cards).all_pix2world(
            frame["x"].to_numpy(float), frame["y"].to_numpy(float), 0
        )
    else:
        ra = dec = np.zeros(0)
    frame["ra"], frame["dec"] = np.asarray(ra, float), np.asarray(dec, float)
    columns = measurement_columns(radii)
    for name, kind in columns.items():
        if name not in frame:
            frame[name] = pd.Series(dtype={"bool": bool, "str": object}.get(kind, kind))
    frame = frame[list(columns)]
    return frame.astype({n: k for n, k in columns.items() if k in ("float64", "int64", "bool")})


def deblend_measure(
    coadd: xr.Dataset,
    merged: pd.DataFrame,
    *,
    aperture_radii_px: Sequence[int] = APERTURE_RADII_PX,
    do_cmodel: bool = True,
    max_peaks: int = 50,
    point_chi2: float = 3.0,
    noise_seed: int = 1,
) -> pd.DataFrame:
    """Deblend and measure every merged object on one band's coadd (``coadd_meas``).

    Same as :func:`deblend_measure_children` without the children's pixels.
    """
    return deblend_measure_children(
        coadd,
        merged,
        aperture_radii_px=aperture_radii_px,
        do_cmodel=do_cmodel,
        max_peaks=max_peaks,
        point_chi2=point_chi2,
        noise_seed=noise_seed,
    )[0]


def deblend_measure_children(
    coadd: xr.Dataset,
    merged: pd.DataFrame,
    *,
    aperture_radii_px: Sequence[int] = APERTURE_RADII_PX,
    do_cmodel: bool = True,
    max_peaks: int = 50,
    point_chi2: float = 3.0,
    noise_seed: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deblend and measure every merged object on one band's coadd.

    Parameters
    ----------
    coadd
        Background-subtracted coadd (nJy) with ``attrs['psf']``, ``attrs['wcs']`` and its
        band in ``attrs['band']`` or ``attrs['visit_info']['band']``.
    merged
        ``merged_det`` of the patch (:func:`lsstlite.stages.detect.ops.merge_detections`).
    aperture_radii_px
        Radii of the circular apertures (pixels).
    do_cmodel
        Fit the exponential + de Vaucouleurs galaxy models (the slowest measurement).
    max_peaks
        Footprints with more peaks are not deblended with templates: their flux is split
        by inverse squared distance and ``flag_deblend_skipped`` is set.
    point_chi2
        Peaks whose joint PSF fit has a reduced χ² below this get a PSF template
        (0 disables; see :func:`deblend_patch`).
    noise_seed
        Seed of the noise that replaces neighbours (combined with the band).

    Returns
    -------
    tuple of pandas.DataFrame
        ``coadd_meas`` (:func:`lsstlite.data.objects.measurement_columns`) and
        ``coadd_deblend`` (:func:`deblend_table`: the children's pixels, which
        :func:`forced_photometry` takes instead of deblending this band again).

    Notes
    -----
    Eager; whole patch in memory. Children of a blend sum to the parent exactly
    (``footprint_flux``).
    """
    records, patch = deblend_patch(
        coadd, merged, max_peaks=max_peaks, point_chi2=point_chi2, noise_seed=noise_seed
    )
    rows = [_measure(patch, r, aperture_radii_px, do_cmodel, None) for r in records]
    return _table(patch, records, rows, aperture_radii_px), deblend_table(records)


def forced_photometry(
    coadd: xr.Dataset,
    merged: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    aperture_radii_px: Sequence[int] = APERTURE_RADII_PX,
    do_cmodel: bool = True,
    max_peaks: int = 50,
    point_chi2: float = 3.0,
    noise_seed: int = 1,
    deblended: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Measure one band at the reference positions with the reference shapes.

    The deblending is that of :func:`deblend_measure` in this band (same footprints,
    peaks and noise): the stored children (``deblended``) when given, else this band is
    deblended again with the same parameters. PSF and aperture fluxes are measured at the reference centroid
    (mapped through this coadd's WCS), Kron fluxes in the reference ellipse and radius,
    the galaxy model with the reference radii and ``frac_dev`` (amplitude only).

    Parameters
    ----------
    coadd, merged, aperture_radii_px, do_cmodel, max_peaks, point_chi2, noise_seed
        As for :func:`deblend_measure` (use the same values).
    reference
        ``coadd_ref`` of the patch: same ids in the same order as this band's
        deblended objects.
    deblended
        ``coadd_deblend`` of this band (:func:`deblend_measure_children`).

    Returns
    -------
    pandas.DataFrame
        ``coadd_forced``: the columns of ``coadd_meas``, rows aligned with ``reference``.

    Raises
    ------
    ValueError
        If the reference ids, or the children of ``deblended``, differ from the objects
        of ``merged``.
    """
    records, patch = deblend_patch(
        coadd,
        merged,
        max_peaks=max_peaks,
        point_chi2=point_chi2,
        noise_seed=noise_seed,
        deblended=deblended,
    )
    ids = np.array([r.id for r in records], dtype=np.int64)
    if len(ids) != len(reference) or not np.array_equal(ids, reference["id"].to_numpy()):
        raise ValueError(
            f"coadd_ref ({len(reference)} rows) does not match merged_det ({len(ids)} objects "
            f"in band {patch.band!r}): were they made from the same merged_det?"
        )
    x, y = wcs_from_cards(patch.wcs_cards).all_world2pix(
        reference["ra"].to_numpy(float), reference["dec"].to_numpy(float), 0
    )
    rows = []
    # plain column arrays: a pandas row per object (iloc) cost ~7% of the quantum
    cols = {c: reference[c].to_numpy() for c in reference.columns}
    for k, rec in enumerate(records):
        row = {c: v[k] for c, v in cols.items()}
        ref = _Reference(
            x=float(x[k]) - patch.x0,
            y=float(y[k]) - patch.y0,
            x_err=float(row["x_err"]),
            y_err=float(row["y_err"]),
            ixx=float(row["ixx"]),
            iyy=float(row["iyy"]),
            ixy=float(row["ixy"]),
            ixx_psf=float(row["ixx_psf"]),
            iyy_psf=float(row["iyy_psf"]),
            ixy_psf=float(row["ixy_psf"]),
            kron_radius=float(row["kron_radius"]),
            frac_dev=float(row["cmodel_frac_dev"]),
            exp_radius=float(row["cmodel_exp_radius"]),
            dev_radius=float(row["cmodel_dev_radius"]),
        )
        out = _measure(patch, rec, aperture_radii_px, do_cmodel, ref)
        out["flag_centroid"] = bool(row["flag_centroid"])
        out["flag_shape"] = bool(row["flag_shape"])
        rows.append(out)
    return _table(patch, records, rows, aperture_radii_px)


def choose_reference(
    measurements: Sequence[pd.DataFrame],
    *,
    priority: Sequence[str] = ("i", "r", "z", "y", "g", "u"),
    min_snr: float = 10.0,
    flags: Sequence[str] = DEFAULT_REFERENCE_FLAGS,
) -> pd.DataFrame:
    """Choose each object's reference band and return its measurement (``coadd_ref``).

    As LSST's ``MergeMeasurementsTask``: the first band in ``priority`` (bands not listed
    follow alphabetically) whose PSF-flux S/N is at least ``min_snr`` and which has none of
    ``flags``; failing that the first band without those flags; failing that the first
    band.

    Parameters
    ----------
    measurements
        ``coadd_meas`` of every band of one patch (same ids in the same order).

    Returns
    -------
    pandas.DataFrame
        The chosen rows, in the common order, plus ``ref_band``.

    Raises
    ------
    ValueError
        If the tables do not share ids and order, or a flag column is unknown.
    """
    if not measurements:
        raise ValueError("choose_reference needs the coadd_meas of at least one band")
    by_band = {str(m["band"].iloc[0]) if len(m) else f"#{i}": m for i, m in
               enumerate(measurements)}  # fmt: skip
    bands = [b for b in priority if b in by_band] + sorted(b for b in by_band if b not in priority)
    ids = by_band[bands[0]]["id"].to_numpy()
    for b in bands:
        if not np.array_equal(by_band[b]["id"].to_numpy(), ids):
            raise ValueError(
                f"coadd_meas of band {b!r} does not have the same ids in the same order as "
                f"band {bands[0]!r}; were they measured from the same merged_det?"
            )
    unknown = [f for f in flags if f not in by_band[bands[0]].columns]
    if unknown:
        raise ValueError(f"reference flags {unknown} are not coadd_meas columns")
    n = len(ids)
    choice = np.full(n, -1)
    for tier in ("snr", "clean", "any"):
        for k, b in enumerate(bands):
            m = by_band[b]
            good = np.ones(n, dtype=bool)
            if tier in ("snr", "clean"):
                for f in flags:
                    good &= ~m[f].to_numpy(bool)
            if tier == "snr":
                with np.errstate(invalid="ignore", divide="ignore"):
                    snr = m["psf_flux"].to_numpy(float) / m["psf_flux_err"].to_numpy(float)
                good &= snr >= min_snr
            choice = np.where((choice < 0) & good, k, choice)
    parts = []
    for k, b in enumerate(bands):
        parts.append(by_band[b].assign(ref_band=b, _row=np.arange(n))[choice == k])
    out = pd.concat(parts).sort_values("_row").drop(columns="_row").reset_index(drop=True)
    return out


def make_object_table(
    references: Sequence[pd.DataFrame],
    forced: Sequence[pd.DataFrame],
    *,
    bands: Sequence[str] | None = None,
    aperture_radii_px: Sequence[int] = APERTURE_RADII_PX,
    duplicate_radius_arcsec: float = 0.5,
) -> pd.DataFrame:
    """The object table of a tract: one row per primary object, columns per band.

    Parameters
    ----------
    references
        ``coadd_ref`` of every patch of the tract.
    forced
        ``coadd_forced`` of every (patch, band); each is matched to its patch by its ids
        (the rows of a patch's forced tables equal its reference ids).
    bands
        Bands in the table (default: all bands present, sorted ``ugrizy``).
    aperture_radii_px
        Radii of the aperture columns.
    duplicate_radius_arcsec
        Objects of different patches closer than this are one object seen in the
        overlap of the patches: the copy farthest from its patch's boundary is kept
        (the one in that patch's inner region).

    Returns
    -------
    pandas.DataFrame
        Columns :func:`lsstlite.data.objects.object_columns`; parents of deblended
        blends are left out (their children are in), as ``detect_isPrimary`` does.

    Raises
    ------
    ValueError
        If a forced table matches no reference table.
    """
    keyed = {}
    for i, ref in enumerate(references):
        keyed[_ids_key(ref["id"].to_numpy())] = i
    per_patch: list[dict[str, pd.DataFrame]] = [{} for _ in references]
    for table in forced:
        key = _ids_key(table["id"].to_numpy())
        if key not in keyed:
            band = table["band"].iloc[0] if len(table) else "?"
            raise ValueError(
                f"a coadd_forced table (band {band!r}, {len(table)} rows) matches no "
                "coadd_ref table of the tract"
            )
        if len(table):
            per_patch[keyed[key]][str(table["band"].iloc[0])] = table
    present = sorted({b for p in per_patch for b in p}, key=lambda b: ("ugrizy" + b).index(b))
    bands = list(bands) if bands is not None else present
    frames: list[pd.DataFrame] = []
    for ref, by_band in zip(references, per_patch, strict=True):
        frame = ref[[c for c in OBJECT_REFERENCE_COLUMNS]].copy()
        frame["_edge"] = ref["edge_distance"].to_numpy(float)
        frame["_parent"] = ref["deblend_n_child"].to_numpy() > 0
        frame["_patch"] = len(frames)
        for b in bands:
            src = by_band.get(b)
            for c in band_flux_columns(aperture_radii_px):
                frame[f"{b}_{c}"] = src[c].to_numpy(float) if src is not None else np.nan
            frame[f"{b}_flag"] = (
                src[list(FLAG_COLUMNS)].any(axis=1).to_numpy() if src is not None else True
            )
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not len(table):
        return pd.DataFrame({c: [] for c in object_columns(bands, aperture_radii_px)})
    table = table[~table["_parent"].to_numpy()].reset_index(drop=True)
    keep = _primary(table, table["_patch"].to_numpy(), duplicate_radius_arcsec)
    table = table[keep].reset_index(drop=True)
    return table[object_columns(bands, aperture_radii_px)]


def _ids_key(ids: NDArray[np.int64]) -> bytes:
    return np.ascontiguousarray(ids, dtype=np.int64).tobytes()


def _primary(
    table: pd.DataFrame, patch_of: NDArray[np.int64], radius_arcsec: float
) -> NDArray[np.bool_]:
    """Drop the copies of objects in patch overlaps: keep the one deepest in its patch."""
    keep = np.ones(len(table), dtype=bool)
    if len(np.unique(patch_of)) < 2:
        return keep
    r, d = np.radians(table["ra"].to_numpy(float)), np.radians(table["dec"].to_numpy(float))
    vec = np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    edge = table["_edge"].to_numpy(float)
    for i, j in cKDTree(vec).query_pairs(chord):
        if patch_of[i] == patch_of[j]:
            continue
        if edge[i] >= edge[j]:
            keep[j] = False
        else:
            keep[i] = False
    return keep
