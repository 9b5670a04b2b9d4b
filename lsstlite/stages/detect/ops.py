"""Detection on coadds and the merge of detections across bands.

- :func:`detect_sources`: background-subtracted, PSF-matched threshold detection on one
  coadd: footprints as a segmentation map plus a ``coadd_det`` table of peaks.
- :func:`merge_detections`: one peak list per patch from the detections of every band
  (``merged_det``), with the union of the bands' footprints carried as spans.

Both work on a whole patch in memory: footprints and peaks cross any chunking, and a
patch (4k × 4k float32 ≈ 64 MB per plane) fits comfortably. They read the pixels of
their input (``np.asarray``); they are not lazy (see ``docs/design/multiband.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from lsstlite.data.masks import coadd_holes, fill_holes, mask_bits, mask_planes
from lsstlite.data.objects import DETECTION_COLUMNS, PARENT_ID_BIT, object_id
from lsstlite.data.psf import PsfModel, psf_from_dict
from lsstlite.data.wcs import wcs_from_cards
from lsstlite.stages.characterize._background import mesh_background
from lsstlite.stages.characterize._kernels import correlate_separable, gaussian_taps, label_sums
from lsstlite.stages.detect import _kernels

__all__ = [
    "BAD_PLANES",
    "detect_sources",
    "exposure_band",
    "exposure_psf",
    "footprints_from_merged",
    "mark_detected",
    "merge_detections",
    "merged_footprint_labels",
    "psf_position",
    "psf_sigma_px",
]

#: Mask planes of a coadd whose pixels are never used for detection or measurement: no
#: input gave them a value (the coadd adds SAT or BAD where every input was saturated or
#: bad there). SAT alone marks a pixel where some inputs saturated and the others give
#: the value: it is used, and flagged (``flag_saturated``).
BAD_PLANES: tuple[str, ...] = ("BAD", "NO_DATA")


def _describe(ds: xr.Dataset) -> str:
    vi = ds.attrs.get("visit_info") or {}
    parts = {k: ds.attrs.get(k, vi.get(k)) for k in ("tract", "patch", "band")}
    text = ", ".join(f"{k}={v!r}" for k, v in parts.items() if v is not None)
    return f"coadd {{{text}}}" if text else "coadd"


def exposure_band(ds: xr.Dataset) -> str:
    """The band of a coadd: ``attrs['band']`` or ``attrs['visit_info']['band']``.

    Raises
    ------
    ValueError
        If neither is set (tasks receive datasets without their data IDs, so the band
        must travel with the data).
    """
    band = ds.attrs.get("band") or (ds.attrs.get("visit_info") or {}).get("band")
    if not band:
        raise ValueError(
            f"{_describe(ds)} does not say its band: set attrs['band'] (or "
            "visit_info={'band': ...}) when making the coadd"
        )
    return str(band)


def exposure_psf(ds: xr.Dataset) -> PsfModel:
    """The PSF model in ``attrs['psf']``; ``ValueError`` naming the coadd if missing."""
    data = ds.attrs.get("psf")
    if not data:
        raise ValueError(f"{_describe(ds)} has no PSF model (attrs['psf'])")
    return psf_from_dict(dict(data))


def psf_position(ds: xr.Dataset) -> tuple[float, float]:
    """Where to evaluate a coadd's PSF as its typical one: the centre of its pixels, or,
    when no input covers that, the centroid of the pixels that have data (a coadd PSF
    exists only where inputs do)."""
    x0, y0 = float(ds["x"].values[0]), float(ds["y"].values[0])
    ny, nx = ds["image"].shape
    mask = np.asarray(ds["mask"].values)
    no_data = mask_bits(mask_planes(ds), "NO_DATA")
    iy, ix = ny // 2, nx // 2
    if (mask[iy, ix] & no_data) == 0:
        return x0 + nx / 2.0, y0 + ny / 2.0
    covered = (mask & no_data) == 0
    if not covered.any():
        return x0 + nx / 2.0, y0 + ny / 2.0
    ys, xs = np.nonzero(covered)
    # the covered pixel nearest the centroid (the centroid itself may fall in a gap)
    k = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    return x0 + float(xs[k]), y0 + float(ys[k])


def psf_sigma_px(psf: PsfModel, x: float, y: float, *, size: int = 41) -> float:
    """Gaussian-equivalent σ (pixels) of the PSF at ``(x, y)`` from its image's moments.

    Uses only :meth:`PsfModel.image`, so any registered model works. Moments are
    Gaussian-weighted (one adaptive iteration from a 2 px guess, then a second), which
    keeps Moffat wings from inflating σ.
    """
    img = np.asarray(psf.image(float(x), float(y), size=size), dtype=float)
    half = size // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    r2 = xx * xx + yy * yy
    s2 = 4.0
    for _ in range(20):
        w = img * np.exp(-0.5 * r2 / s2)
        m = float((w * r2).sum() / (2.0 * w.sum()))
        # For a Gaussian of variance t weighted by one of variance s2: m = t s2 / (t + s2).
        new = 1.0 / max(1.0 / m - 1.0 / s2, 1e-6)
        if abs(new - s2) < 1e-6 * s2:
            break
        s2 = new
    return math.sqrt(s2)


def _in_memory(ds: xr.Dataset, names: Sequence[str]) -> xr.Dataset:
    """``ds`` with the variables ``names`` read into memory (in one dask computation), so
    that later ``.values`` do not read them again; ``ds`` itself is left as it is."""
    loaded = ds[list(names)].compute()
    return ds.assign({name: loaded[name] for name in names})


def _pixels(
    ds: xr.Dataset,
) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]], NDArray[np.bool_]]:
    """Image and variance (their own float precision, at least float32) with bad pixels
    (``BAD_PLANES``, non-finite values, variance ``<= 0``) set to 0, and the bad pixels."""
    return _kernels.clean_pixels(
        np.asarray(ds["image"].values),
        np.asarray(ds["variance"].values),
        np.asarray(ds["mask"].values),
        mask_bits(mask_planes(ds), BAD_PLANES),
    )


def detect_sources(
    exposure: xr.Dataset,
    *,
    n_sigma: float = 5.0,
    min_area: int = 5,
    grow_px: int = 2,
    peak_smoothing_px: float = 0.5,
    min_dip_sigma: float = 4.0,
    subtract_background: bool = True,
    background_box_px: int = 128,
) -> tuple[pd.DataFrame, xr.DataArray]:
    """Detect sources on a (coadd) exposure.

    Parameters
    ----------
    exposure
        Exposure with ``attrs['psf']``; pixels outside ``BAD_PLANES`` are used.
    n_sigma
        Threshold on the PSF-matched significance image (footprints and peaks).
    min_area
        Minimum footprint area (pixels) before growing.
    grow_px
        Footprints are grown by a disc of this radius (pixels).
    peak_smoothing_px
        σ (pixels) of the light Gaussian smoothing on which peaks are found (the
        PSF-matched image would merge close pairs).
    min_dip_sigma
        A fainter peak is a separate object only if the image dips by this many σ
        between it and every brighter peak of its footprint.
    subtract_background
        Subtract SExtractor's mesh background (cells of ``background_box_px``) first.

    Returns
    -------
    table : pandas.DataFrame
        ``coadd_det`` rows (columns :data:`lsstlite.data.objects.DETECTION_COLUMNS`),
        one per peak, sorted by footprint then decreasing peak value.
    segmentation : xarray.DataArray
        int32 footprint labels on the exposure's ``(y, x)`` grid (0 = none).

    Notes
    -----
    Eager: reads the whole exposure. The matched filter's halo is ``4 σ_PSF``. A coadd's
    pixels that inputs covered but none could be used
    (:func:`~lsstlite.data.masks.coadd_holes`: a star's core saturated in every visit) are
    filled in from around them (:func:`~lsstlite.data.masks.fill_holes`) for finding
    footprints and peaks (they keep their mask), and the peaks of a footprint within
    ``2 σ_PSF + 1`` px of a saturated one become one peak, at its centre. Peaks are the
    maxima of the lightly smoothed image whose significance passes ``n_sigma``.
    """
    band = exposure_band(exposure)
    exposure = _in_memory(exposure, ("image", "variance", "mask"))
    pixels, variance, bad = _pixels(exposure)
    # A coadd's holes (a star's core saturated in every visit) filled in from around them:
    # left empty, their ring of pixels made several peaks with deep dips between them
    planes = mask_planes(exposure)
    holes = coadd_holes(np.asarray(exposure["mask"].values), planes)
    if holes.any():  # (in place: _pixels' arrays are its own)
        filled = fill_holes(pixels, holes, ~bad)
        fill_holes(variance, holes, ~bad)
        bad = bad & ~filled
    image = pixels.astype(np.float64)
    if subtract_background:
        box = int(background_box_px)
        # SExtractor's mesh (sep.Background's, equal to it), on the float32 pixels
        image -= mesh_background(pixels, bad, bw=box, bh=box, fw=3, fh=3).back()
        np.copyto(image, 0.0, where=bad)
    x0, y0 = int(exposure["x"].values[0]), int(exposure["y"].values[0])
    psf = exposure_psf(exposure)
    sigma = psf_sigma_px(psf, *psf_position(exposure))
    image32 = image.astype(np.float32)  # what gaussian_snr filters, converted once for both
    snr = _kernels.gaussian_snr(image32, variance, sigma, bad)
    labels, n_fp = _kernels.footprint_labels(snr >= n_sigma, min_area=min_area, grow_px=grow_px)
    light = _kernels.gaussian_snr(image32, variance, peak_smoothing_px, bad)
    # peaks: maxima of the lightly smoothed image (bad pixels 0, as in its significance
    # `light`), dips in units of its own noise (smooth / light). Maxima of `light`
    # itself were also where the variance drops: around a coadd's core where visits
    # were left out, a ring of them
    taps = gaussian_taps(peak_smoothing_px)
    smooth = correlate_separable(image32, taps, taps)
    peaks = _kernels.find_peaks(
        light, labels, min_snr=n_sigma, min_dip_sigma=min_dip_sigma, flux=smooth
    )
    lab, iy, ix = peaks[:, 0], peaks[:, 1], peaks[:, 2]
    xs, ys = _refine(smooth.astype(np.float64), iy, ix)
    if holes.any() and "SAT" in planes:
        saturated = holes & ((np.asarray(exposure["mask"].values) & mask_bits(planes, "SAT")) != 0)
        lab, iy, ix, xs, ys = _one_peak_per_core(lab, iy, ix, xs, ys, saturated, labels, sigma)
        order = np.lexsort((-smooth[iy, ix], lab))
        lab, iy, ix, xs, ys = lab[order], iy[order], ix[order], xs[order], ys[order]
    fp_flux = label_sums(labels, image, n_fp)
    wcs = wcs_from_cards(exposure.attrs["wcs"])
    ra, dec = wcs.all_pix2world(xs + x0, ys + y0, 0)
    table = pd.DataFrame(
        {
            "x": xs + x0,
            "y": ys + y0,
            "ra": np.asarray(ra, float),
            "dec": np.asarray(dec, float),
            "flux": fp_flux[lab],
            "peak": image[iy, ix],
            "footprint_id": lab.astype(np.int64),
            "band": band,
        },
        columns=list(DETECTION_COLUMNS),
    )
    seg = xr.DataArray(labels, dims=("y", "x"), coords={"y": exposure["y"], "x": exposure["x"]})
    return table, seg


def _one_peak_per_core(
    lab: NDArray[np.int64],
    iy: NDArray[np.int64],
    ix: NDArray[np.int64],
    xs: NDArray[np.float64],
    ys: NDArray[np.float64],
    saturated: NDArray[np.bool_],
    labels: NDArray[np.int32],
    sigma: float,
) -> tuple[NDArray[Any], ...]:
    """The peaks with those of a footprint within ``2 σ + 1`` px of a saturated coadd hole
    (a star's core saturated in every visit, bleed trails included) replaced by one, at
    the hole's centre: the ring of bright pixels around a core, uneven where visits were
    saturated or rejected in turn, made peaks with deep dips between them."""
    from scipy import ndimage

    cores, n = ndimage.label(saturated, structure=np.ones((3, 3)))
    if n == 0:
        return lab, iy, ix, xs, ys
    reach = 2.0 * sigma + 1.0
    pad = math.ceil(reach) + 1
    ny, nx = saturated.shape
    keep = np.ones(lab.size, bool)
    new: list[tuple[int, int, int, float, float]] = []
    for k, box in enumerate(ndimage.find_objects(cores), 1):
        if box is None:
            continue
        mine = cores[box] == k
        cy, cx = ndimage.center_of_mass(mine)
        cy, cx = cy + box[0].start, cx + box[1].start
        jy, jx = math.floor(cy + 0.5), math.floor(cx + 0.5)
        footprint = int(labels[jy, jx])
        if footprint == 0:
            continue
        y0, y1 = max(box[0].start - pad, 0), min(box[0].stop + pad, ny)
        x0, x1 = max(box[1].start - pad, 0), min(box[1].stop + pad, nx)
        distance = ndimage.distance_transform_edt(cores[y0:y1, x0:x1] != k)
        inside = (lab == footprint) & (iy >= y0) & (iy < y1) & (ix >= x0) & (ix < x1)
        near = np.zeros(lab.size, bool)
        near[inside] = distance[iy[inside] - y0, ix[inside] - x0] <= reach
        keep &= ~near
        new.append((footprint, jy, jx, cx, cy))
    if not new:
        return lab, iy, ix, xs, ys
    add = np.array([r[:3] for r in new], np.int64)
    pos = np.array([r[3:] for r in new], np.float64)
    return (
        np.concatenate([lab[keep], add[:, 0]]),
        np.concatenate([iy[keep], add[:, 1]]),
        np.concatenate([ix[keep], add[:, 2]]),
        np.concatenate([xs[keep], pos[:, 0]]),
        np.concatenate([ys[keep], pos[:, 1]]),
    )


def _refine(
    img: NDArray[np.float64], iy: NDArray[np.int64], ix: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Sub-pixel peak positions: vertex of a parabola through the 3 pixels on each axis."""
    ny, nx = img.shape
    yc, xc = np.clip(iy, 1, ny - 2), np.clip(ix, 1, nx - 2)
    c = img[yc, xc]

    def offset(minus: NDArray[np.float64], plus: NDArray[np.float64]) -> NDArray[np.float64]:
        den = minus - 2.0 * c + plus
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.where(den < 0, 0.5 * (minus - plus) / den, 0.0)
        return np.clip(d, -0.5, 0.5)

    dx = offset(img[yc, xc - 1], img[yc, xc + 1])
    dy = offset(img[yc - 1, xc], img[yc + 1, xc])
    return xc + dx, yc + dy


def mark_detected(exposure: xr.Dataset, segmentation: xr.DataArray) -> xr.Dataset:
    """The exposure with the ``DETECTED`` mask plane set inside the footprints (lazy-safe)."""
    bit = np.int32(mask_bits(mask_planes(exposure), "DETECTED"))
    out = exposure.copy()
    out["mask"] = xr.where(segmentation > 0, exposure["mask"] | bit, exposure["mask"]).astype(
        exposure["mask"].dtype
    )
    out["mask"].attrs = dict(exposure["mask"].attrs)
    return out


def _unit_vectors(ra: NDArray[np.float64], dec: NDArray[np.float64]) -> NDArray[np.float64]:
    r, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)


def _merge_peaks(
    tables: Sequence[pd.DataFrame], priority: Sequence[str], match_radius_arcsec: float
) -> pd.DataFrame:
    """Merge peaks band by band in priority order (the first band's position is kept)."""
    by_band: dict[str, pd.DataFrame] = {}
    for i, table in enumerate(tables):
        missing = [c for c in DETECTION_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(
                f"coadd_det table #{i} lacks columns {missing}; a coadd_det table needs "
                f"{list(DETECTION_COLUMNS)} (the band is a column because tasks receive "
                "tables without their data IDs)"
            )
        for band, part in table.groupby("band", sort=False):
            by_band[str(band)] = part
    order = [b for b in priority if b in by_band] + sorted(b for b in by_band if b not in priority)
    chord = 2.0 * math.sin(math.radians(match_radius_arcsec / 3600.0) / 2.0)
    rows: list[dict[str, Any]] = []
    vectors = np.zeros((0, 3))
    for band in order:
        part = by_band[band].sort_values("peak", ascending=False)
        vec = _unit_vectors(part["ra"].to_numpy(float), part["dec"].to_numpy(float))
        dist, nearest = (
            cKDTree(vectors).query(vec, distance_upper_bound=chord)
            if len(vectors)
            else (np.full(len(vec), np.inf), np.zeros(len(vec), int))
        )
        matched = np.isfinite(dist)
        for j in nearest[matched]:
            rows[int(j)]["bands"].append(band)
        # Unmatched peaks of this band closer than the radius to a brighter one are dropped.
        new = np.flatnonzero(~matched)
        drop: set[int] = set()
        for a, b in sorted(cKDTree(vec[new]).query_pairs(chord)):
            if a not in drop:
                drop.add(b)
        keep = new[[k for k in range(len(new)) if k not in drop]]
        kept = part.iloc[keep]
        for x, y, ra, dec, peak in zip(
            kept["x"].to_numpy(float),
            kept["y"].to_numpy(float),
            kept["ra"].to_numpy(float),
            kept["dec"].to_numpy(float),
            kept["peak"].to_numpy(float),
            strict=True,
        ):
            rows.append({"x": x, "y": y, "ra": ra, "dec": dec, "peak": peak, "bands": [band]})
        vectors = np.concatenate([vectors, vec[keep]])
    frame = pd.DataFrame(rows, columns=["x", "y", "ra", "dec", "peak", "bands"])
    frame["first_band"] = [b[0] for b in frame["bands"]]
    frame["detected_bands"] = [",".join(dict.fromkeys(b)) for b in frame["bands"]]
    return frame.drop(columns="bands")


def merged_footprint_labels(
    coadds: Sequence[xr.Dataset],
    peaks_x: NDArray[np.float64],
    peaks_y: NDArray[np.float64],
    *,
    n_sigma: float,
    min_radius_px: int,
    grow_px: int,
) -> NDArray[np.int32]:
    """Label image of the union of every band's footprints plus a disc at every peak.

    A band's footprints are its ``DETECTED`` mask plane when any pixel has it set (the
    coadd detection step marks it), else pixels whose PSF-matched significance reaches
    ``n_sigma``. Discs of ``min_radius_px`` around the merged peaks make sure every peak
    has a footprint. Coordinates are array indices of the (common) patch grid.
    """
    shape = coadds[0]["image"].shape
    union = np.zeros(shape, dtype=bool)
    for ds in coadds:
        if ds["image"].shape != shape:
            raise ValueError(
                f"{_describe(ds)} has shape {ds['image'].shape}, the other coadds of the "
                f"patch {shape}: coadds of one patch must share a pixel grid"
            )
        mem = _in_memory(ds, ("mask",))  # the mask is read once, used up to 3 times
        detected = (np.asarray(mem["mask"].values) & mask_bits(mask_planes(ds), "DETECTED")) != 0
        if not detected.any():
            mem = _in_memory(mem, ("image", "variance"))
            image, variance, bad = _pixels(mem)
            sigma = psf_sigma_px(exposure_psf(mem), *psf_position(mem))
            detected = _kernels.gaussian_snr(image, variance, sigma, bad) >= n_sigma
        union |= detected
    r = int(min_radius_px)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (xx * xx + yy * yy) <= r * r
    for px, py in zip(np.floor(peaks_x + 0.5), np.floor(peaks_y + 0.5), strict=True):
        ya, yb = int(py) - r, int(py) + r + 1
        xa, xb = int(px) - r, int(px) + r + 1
        ca, cb = max(ya, 0), min(yb, shape[0])
        da, db = max(xa, 0), min(xb, shape[1])
        if ca < cb and da < db:
            union[ca:cb, da:db] |= disc[ca - ya : cb - ya, da - xa : db - xa]
    labels, _ = _kernels.footprint_labels(union, min_area=1, grow_px=grow_px)
    return labels


def merge_detections(
    detections: Sequence[pd.DataFrame],
    coadds: Sequence[xr.Dataset],
    *,
    priority: Sequence[str] = ("i", "r", "z", "y", "g", "u"),
    match_radius_arcsec: float = 0.5,
    n_sigma: float = 5.0,
    min_radius_px: int = 3,
    grow_px: int = 0,
) -> pd.DataFrame:
    """Merge the detections of every band of a patch into one peak list with footprints.

    Parameters
    ----------
    detections
        ``coadd_det`` tables (any bands, with a ``band`` column).
    coadds
        The patch's coadds (any bands; same pixel grid): their footprints are merged.
    priority
        Band order: peaks are taken from the first band, then peaks of the next band
        farther than ``match_radius_arcsec`` from every merged peak are added, and so on.
        Bands not listed come last, alphabetically.
    match_radius_arcsec
        Peaks closer than this are one object (must exceed √2 pixels so that ids,
        derived from positions, stay unique).
    n_sigma, min_radius_px, grow_px
        See :func:`merged_footprint_labels`.

    Returns
    -------
    pandas.DataFrame
        ``merged_det`` (columns :data:`lsstlite.data.objects.MERGED_DETECTION_COLUMNS`),
        sorted by footprint, then decreasing peak value.

    Notes
    -----
    Eager (whole patch). The union footprint of a blend is the same in every band, so
    every band measures the same pixels.
    """
    if not coadds:
        raise ValueError("merge_detections needs at least one coadd of the patch")
    ref = coadds[0]
    wcs = wcs_from_cards(ref.attrs["wcs"])
    x0, y0 = int(ref["x"].values[0]), int(ref["y"].values[0])
    cx, cy = x0 + ref.sizes["x"] / 2.0, y0 + ref.sizes["y"] / 2.0
    ra_c, dec_c = wcs.all_pix2world([cx, cx + 1.0], [cy, cy], 0)
    scale = float(
        np.degrees(
            np.arccos(np.clip(np.dot(*_unit_vectors(np.asarray(ra_c), np.asarray(dec_c))), -1, 1))
        )
        * 3600.0
    )
    if match_radius_arcsec <= math.sqrt(2.0) * scale:
        raise ValueError(
            f"match_radius_arcsec={match_radius_arcsec} must exceed √2 pixels "
            f"({math.sqrt(2.0) * scale:.3f} arcsec at this coadd's scale)"
        )
    peaks = _merge_peaks(detections, priority, match_radius_arcsec)
    px = peaks["x"].to_numpy(float) - x0
    py = peaks["y"].to_numpy(float) - y0
    labels = merged_footprint_labels(
        coadds, px, py, n_sigma=n_sigma, min_radius_px=min_radius_px, grow_px=grow_px
    )
    ny, nx = labels.shape
    iy = np.clip(np.floor(py + 0.5).astype(int), 0, ny - 1)
    ix = np.clip(np.floor(px + 0.5).astype(int), 0, nx - 1)
    peaks["footprint_id"] = labels[iy, ix].astype(np.int64)
    inside = (peaks["footprint_id"] > 0).to_numpy()
    peaks = peaks[inside].sort_values(["footprint_id", "peak"], ascending=[True, False])
    peaks = peaks.reset_index(drop=True)
    peaks["id"] = object_id(peaks["ra"].to_numpy(), peaks["dec"].to_numpy())
    n_peaks = peaks.groupby("footprint_id")["id"].transform("size").to_numpy()
    first_id = peaks.groupby("footprint_id")["id"].transform("first").to_numpy()
    peaks["n_peaks"] = n_peaks.astype(np.int64)
    peaks["parent_id"] = np.where(n_peaks > 1, first_id | PARENT_ID_BIT, 0).astype(np.int64)
    spans = _kernels.encode_spans(labels)
    by_label: dict[int, NDArray[np.int64]] = {}
    if len(spans):
        order = np.argsort(spans[:, 0], kind="stable")
        spans = spans[order]
        cut = np.flatnonzero(np.diff(spans[:, 0])) + 1
        for chunk in np.split(spans, cut):
            by_label[int(chunk[0, 0])] = chunk
    fp = [by_label[int(f)] for f in peaks["footprint_id"]]
    peaks["fp_y"] = pd.Series(
        [(s[:, 1] + y0).astype(np.int32) for s in fp], index=peaks.index, dtype=object
    )
    peaks["fp_x0"] = pd.Series(
        [(s[:, 2] + x0).astype(np.int32) for s in fp], index=peaks.index, dtype=object
    )
    peaks["fp_x1"] = pd.Series(
        [(s[:, 3] + x0).astype(np.int32) for s in fp], index=peaks.index, dtype=object
    )
    columns = [
        "id",
        "parent_id",
        "footprint_id",
        "n_peaks",
        "x",
        "y",
        "ra",
        "dec",
        "peak",
        "first_band",
        "detected_bands",
        "fp_y",
        "fp_x0",
        "fp_x1",
    ]
    return peaks[columns]


def footprints_from_merged(
    merged: pd.DataFrame,
) -> Mapping[int, tuple[tuple[int, int, int, int], NDArray[np.bool_]]]:
    """Footprint id → (parent-frame bbox ``(y0, y1, x0, x1)``, mask) from ``merged_det``."""
    out: dict[int, tuple[tuple[int, int, int, int], NDArray[np.bool_]]] = {}
    first = merged.drop_duplicates("footprint_id")
    for fid, ys, xa, xb in zip(
        first["footprint_id"], first["fp_y"], first["fp_x0"], first["fp_x1"], strict=True
    ):
        out[int(fid)] = _kernels.decode_spans(
            np.asarray(ys, np.int64), np.asarray(xa, np.int64), np.asarray(xb, np.int64)
        )
    return out
