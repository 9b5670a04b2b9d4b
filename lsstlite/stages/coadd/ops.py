"""Coaddition: warp and combine calexps onto a patch in one lazy graph, chunk by chunk.

The warps are never materialised: each output chunk is one task that reads, from every
calexp overlapping it, only the input region its pixels map to (plus the kernel and
artifact-rejection halos), warps those regions, combines them and returns the chunk.
Memory is therefore bounded by ``n_inputs × chunk`` whatever the patch size, and the
chunks of one patch spread over every worker of a cluster.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import dask
import numpy as np
from numpy.typing import NDArray

from lsstlite.data.exposure import PhotoCalib
from lsstlite.data.masks import DEFAULT_MASK_PLANES, mask_bits, mask_planes
from lsstlite.data.psf import psf_from_dict
from lsstlite.data.skymap import PatchGeometry
from lsstlite.data.wcs import cached_wcs
from lsstlite.stages.coadd._kernels import (
    block_mask,
    combine_clipped,
    combine_mean,
    combine_median,
    positive_outliers,
    usable_pixels,
)
from lsstlite.stages.coadd.psf import CoaddPsf
from lsstlite.stages.skymap.ops import exposure_corners
from lsstlite.stages.warp._kernels import KERNEL_RADIUS
from lsstlite.stages.warp.ops import (
    COVARIANCE_NOTE,
    BlockMapping,
    WarpError,
    block_mapping,
    count_stored_reads,
    data_id_of,
    detector_box,
    exposure_planes,
    input_wcs,
    mapping_grid,
    matching_kernel,
    model_psf_image,
    plane_region,
    region_dependencies,
    region_task,
    tasks_to_planes,
    warp_arrays,
)
from lsstlite.stages.warp.psf import WarpedPsf

if TYPE_CHECKING:
    import dask.array as da
    import xarray as xr

    from lsstlite.data.exposure import ExposureLike

__all__ = [
    "DEFAULT_MASK_PROPAGATION_THRESHOLDS",
    "ArtifactConfig",
    "CoaddPlan",
    "coadd_exposures",
    "input_weights",
    "plan_coadd",
    "select_inputs",
    "write_coadd",
]

log = logging.getLogger(__name__)

Method = Literal["mean", "clipped", "median", "compare_warp"]
METHODS = ("mean", "clipped", "median", "compare_warp")

#: Input mask planes that keep a pixel out of the coadd.
DEFAULT_BAD_MASK_PLANES = ("NO_DATA", "BAD", "SAT", "SUSPECT", "CR")

#: Input mask planes set on coadd pixels (that have data) where the inputs having them
#: carry more than this fraction of the covering weight (LSST's
#: ``maskPropagationThresholds``): SAT where a star saturated in some of the visits.
DEFAULT_MASK_PROPAGATION_THRESHOLDS: dict[str, float] = {"SAT": 0.1}


@dataclass(frozen=True)
class ArtifactConfig:
    """CompareWarp artifact rejection parameters.

    Attributes
    ----------
    model_psf_fwhm_px
        FWHM (coadd pixels) of the Gaussian model PSF the warps are matched to before
        comparison; None: 1.3 × the largest input PSF FWHM.
    detect_n_sigma
        Threshold of ``(psf-matched warp − template) / σ`` for an outlier pixel.
    template_frac
        Fractional error allowed on the template (PSF-matching residuals of bright stars):
        ``σ² = var_warp + var_template + (template_frac × local max of template)²``.
    sharp_detect_n_sigma, sharp_template_frac
        The same at native resolution (unmatched warps against their own clipped
        template), for sharp artifacts (cosmic rays) that PSF matching smooths away.
    max_fraction_epochs, max_num_epochs
        A pixel is *transient* if it is an outlier in at most
        ``max(max_num_epochs, floor(max_fraction_epochs × n_inputs))`` epochs.
    spatial_threshold
        An outlier footprint is an artifact if more than this fraction of its pixels is
        transient.
    grow_px
        Artifact footprints are grown by this many pixels before being masked REJECTED.
    halo_px
        Extra border around each chunk over which footprints are found.
    matching_kernel_size
        Side of the PSF-matching kernel (odd).
    """

    model_psf_fwhm_px: float | None = None
    detect_n_sigma: float = 5.0
    template_frac: float = 0.03
    sharp_detect_n_sigma: float = 5.0
    sharp_template_frac: float = 0.3
    max_fraction_epochs: float = 0.4
    max_num_epochs: int = 1
    spatial_threshold: float = 0.5
    grow_px: int = 2
    halo_px: int = 24
    matching_kernel_size: int = 25


def select_inputs(
    calexps: Sequence[ExposureLike], patch: PatchGeometry
) -> tuple[list[int], list[dict[str, Any]]]:
    """Which calexps can go into a coadd of ``patch``.

    Returns the indices of the usable calexps and one record ``{"data_id", "reason"}`` per
    calexp left out: a broken WCS (also logged at WARNING), or no overlap with the patch.
    Metadata only.
    """
    usable, skipped = [], []
    wout = patch.wcs()
    px0, py0, px1, py1 = patch.bbox
    for k, ds in enumerate(calexps):
        did = data_id_of(ds)
        try:
            input_wcs(ds)
            ra, dec = exposure_corners(ds, n_per_side=5)
        except (WarpError, ValueError) as exc:
            log.warning("coadd: leaving out calexp %s: %s", did, exc)
            skipped.append({"data_id": did, "reason": f"broken WCS: {exc}"})
            continue
        x, y = wout.all_world2pix(ra, dec, 0, quiet=True)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or not (
            x.min() < px1 and x.max() > px0 - 1 and y.min() < py1 and y.max() > py0 - 1
        ):
            log.info("coadd: calexp %s does not overlap the patch", did)
            skipped.append({"data_id": did, "reason": "no overlap with the patch"})
            continue
        usable.append(k)
    return usable, skipped


def input_weights(
    calexps: Sequence[ExposureLike],
    *,
    bad_mask_planes: Sequence[str] = DEFAULT_BAD_MASK_PLANES,
    sample_px: int = 1024,
) -> list[float]:
    """Coadd weight of each calexp: ``1 / mean variance`` of its good pixels.

    The mean is taken over the central ``sample_px × sample_px`` region (the whole
    exposure if smaller) cut to the storage chunk that holds the centre: a calexp's
    variance is smooth, and reading one chunk instead of every one made this step 5×
    cheaper for 2k × 4k detectors (and one chunk instead of the four that meet at the
    centre of a detector stored in 2 × 2 chunks another 4×).

    Notes
    -----
    The one eager step of coaddition: a reduction over that region of each calexp's
    variance and mask, computed with the current scheduler. The weights must be numbers
    before the coadd graph is built, because the coadd PSF (an attr, written with the
    pixels) is the sum of the input PSFs with these same weights. Pass ``weights=`` to
    :func:`coadd_exposures` to skip it (e.g. from a visit summary).
    """
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    name = f"coadd-weights-{uuid.uuid4().hex}"
    dsk: dict[Any, Any] = {}
    deps: dict[str, da.Array] = {}
    for k, ds in enumerate(calexps):
        var, msk = exposure_planes(ds)[1:]
        sy, sx = (
            _central_sample(n, sample_px, var.chunks[axis])
            for axis, n in enumerate((ds.sizes["y"], ds.sizes["x"]))
        )
        box = (sx.start, sy.start, sx.stop, sy.stop)
        regions = [(p, plane_region(p, (0, 0), box)) for p in (var, msk)]
        deps.update((d.name, d) for d in region_dependencies(regions))
        planes = mask_planes(ds)
        bits = mask_bits(planes, [p for p in bad_mask_planes if p in planes])
        dsk[(name, k)] = region_task(_weight_terms, regions, bits)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=list(deps.values()))  # type: ignore[arg-type]
    values = dask.compute(*[Delayed((name, k), graph, layer=name) for k in range(len(calexps))])
    out = []
    for ds, (s, n) in zip(calexps, values, strict=True):
        if n == 0 or not s > 0:
            raise ValueError(
                f"calexp {data_id_of(ds)}: no good pixel with positive variance in its central "
                f"{sample_px}² region"
            )
        out.append(float(n / s))
    return out


def _weight_terms(planes: Sequence[NDArray[Any]], bits: int) -> tuple[float, int]:
    """Sum of the good variance values (in float32, as stored) and their count."""
    var, msk = planes[0], planes[1]
    good = ((msk & bits) == 0) & np.isfinite(var)
    return float(np.where(good, var, np.float32(0.0)).sum()), int(good.sum())


def _central_sample(n: int, size: int, chunks: tuple[int, ...] | None) -> slice:
    """Along one axis of length ``n``: the central ``size`` pixels, within the chunk that
    holds the centre."""
    lo, hi = max(0, (n - size) // 2), min(n, max(0, (n - size) // 2) + size)
    if chunks:
        edges = np.cumsum((0, *chunks))
        k = int(np.searchsorted(edges, n // 2, side="right")) - 1
        lo, hi = max(lo, int(edges[k])), min(hi, int(edges[k + 1]))
    return slice(lo, hi)


def _outline_box(
    ds: ExposureLike, wcs_out: Any, margin: float
) -> tuple[float, float, float, float] | None:
    """Bounding box, on the output grid (parent frame), of a calexp's outline (6 points
    per side) grown by ``margin`` output pixels; None (no limit) if the outline does not
    map to finite positions."""
    ra, dec = exposure_corners(ds, n_per_side=6)
    x, y = wcs_out.all_world2pix(ra, dec, 0, quiet=True)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    return (
        float(x.min()) - margin,
        float(y.min()) - margin,
        float(x.max()) + margin,
        float(y.max()) + margin,
    )


def _pixel_scale(cards: dict[str, Any], x: float, y: float) -> float:
    w = cached_wcs(cards)  # read-only here
    ra, dec = w.all_pix2world([x, x + 1.0, x], [y, y, y + 1.0], 0)
    c = math.cos(math.radians(dec[0]))
    jac = np.array([[(ra[1] - ra[0]) * c, (ra[2] - ra[0]) * c], [dec[1] - dec[0], dec[2] - dec[0]]])
    return math.sqrt(abs(np.linalg.det(jac))) * 3600.0


def _input_fwhm_out(ds: ExposureLike, patch: PatchGeometry) -> float:
    """FWHM of an input's PSF at its centre, in coadd pixels."""
    x = float(ds["x"].values.mean())
    y = float(ds["y"].values.mean())
    psf = psf_from_dict(ds.attrs["psf"])
    try:
        fwhm = psf.fwhm_at(x, y)
    except NotImplementedError:
        fwhm = WarpedPsf(
            dict(ds.attrs["psf"]), dict(ds.attrs["wcs"]), dict(ds.attrs["wcs"])
        ).fwhm_at(x, y)
    cx, cy = (patch.xy0[0] + patch.shape[1] / 2.0, patch.xy0[1] + patch.shape[0] / 2.0)
    return fwhm * _pixel_scale(ds.attrs["wcs"], x, y) / _pixel_scale(patch.wcs_cards, cx, cy)


# -- the block task ------------------------------------------------------------------


@dataclass(frozen=True)
class _Params:
    method: str
    kernel: str
    bad_bits: int
    no_data: int
    sensor_edge: int
    planes: dict[str, int]
    n_sigma: float
    amp_frac: float
    n_iter: int
    artifacts: ArtifactConfig
    model_fwhm: float
    n_inputs_total: int
    wcs_out: dict[str, Any]
    propagate: tuple[tuple[int, float], ...] = ()  # (plane bit, weight fraction)


def _kernel_coverage(kern: NDArray[np.float64], h: int, w: int) -> NDArray[np.float32]:
    """``conv(ones((h, w)), kern)`` ("same", zero outside): the kernel's sum over its taps
    inside the block, from its summed-area table; only the borders differ from the
    total."""
    (kh, kw), ky, kx = kern.shape, (kern.shape[0] - 1) // 2, (kern.shape[1] - 1) // 2
    sat = np.zeros((kh + 1, kw + 1))
    sat[1:, 1:] = kern.cumsum(axis=0).cumsum(axis=1)

    def rect(yy: NDArray[np.int64], xx: NDArray[np.int64]) -> NDArray[np.float64]:
        # output (y, x) sees kernel rows max(0, y + ky - h + 1) … min(kh - 1, y + ky)
        r0 = np.maximum(yy + ky - h + 1, 0)[:, None]
        r1 = np.minimum(yy + ky, kh - 1)[:, None] + 1
        c0 = np.maximum(xx + kx - w + 1, 0)[None, :]
        c1 = np.minimum(xx + kx, kw - 1)[None, :] + 1
        return sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]  # type: ignore[no-any-return]

    ys, xs = np.arange(h), np.arange(w)
    if h <= 2 * kh or w <= 2 * kw:
        return rect(ys, xs).astype(np.float32)
    norm = np.full((h, w), sat[-1, -1], np.float32)
    edge_y = np.r_[0:kh, h - kh : h]
    edge_x = np.r_[0:kw, w - kw : w]
    norm[edge_y, :] = rect(edge_y, xs)
    norm[:, edge_x] = rect(ys, edge_x)
    return norm


def _psf_match(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    valid: NDArray[np.bool_],
    kern: NDArray[np.float64],
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
    """Convolve a warp block with a matching kernel, normalised over the valid pixels.

    Normalised convolution (divide by the kernel's weight on valid pixels) keeps pixels
    near a detector edge usable for artifact detection: an eroded mask would lose a
    kernel radius along every edge, where trails and cosmic rays are just as common.

    The three convolutions (valid pixels, image, variance with the squared kernel) share
    one batched float32 FFT of the zero-padded block and one of each kernel ("same"
    output, as ``scipy.signal.fftconvolve``); an all-valid block takes the first from
    the kernel's summed-area table instead. float32 is ample for a detection
    threshold of several σ: the round-off is < 1e-5 of the block's brightest pixel.
    """
    from scipy import fft as sfft

    from lsstlite.stages.characterize._kernels import rfft2_padded

    (h, w), (kh, kw) = valid.shape, kern.shape
    ky, kx = (kh - 1) // 2, (kw - 1) // 2
    # A circular convolution of period N ≥ h + ky equals the linear one on the "same"
    # window [ky, ky + h): the wrapped tail lands beyond it (as in the CModel templates).
    fshape = (sfft.next_fast_len(h + ky, True), sfft.next_fast_len(w + kx, True))
    # Where every pixel is valid (most blocks) the weight is the kernel's sum over the
    # taps inside the block, from its summed-area table: one FFT pair fewer.
    full = bool(valid.all())
    planes = np.zeros((2 if full else 3, h, w), np.float32)
    np.copyto(planes[-2], img, where=valid)
    np.copyto(planes[-1], var, where=valid)
    if not full:
        planes[0] = valid
    spectra = sfft.rfft2(planes, fshape)
    kernels = rfft2_padded(np.stack([kern, kern * kern]).astype(np.float32), fshape)
    spectra[:-1] *= kernels[0]
    spectra[-1] *= kernels[1]
    conv = sfft.irfft2(spectra, fshape)[:, ky : ky + h, kx : kx + w]
    if full:
        norm = _kernel_coverage(kern, h, w)
    else:
        norm = conv[0]
    ok = valid & (norm > 0.8)
    safe = np.where(ok, norm, np.float32(1.0))
    return conv[-2] / safe, conv[-1] / (safe * safe), ok


# Plain classes, not dataclasses, lists or dicts, on purpose: dask passes them to a task
# as one literal instead of traversing (and tokenizing) every WCS card of every input for
# every chunk, which took most of the graph-building time.
class _Plan:
    """Where each input of one chunk task comes from."""

    def __init__(
        self,
        mappings: list[BlockMapping],
        det_boxes: list[tuple[int, int, int, int]],
        indices: list[int],
    ) -> None:
        self.mappings = mappings
        self.det_boxes = det_boxes
        self.indices = indices


class _Static:
    """What every chunk task of one coadd shares."""

    def __init__(
        self,
        weights: NDArray[np.float64],
        psf_dicts: list[dict[str, Any]],
        wcs_in: list[dict[str, Any]],
        params: _Params,
    ) -> None:
        self.weights = weights
        self.psf_dicts = psf_dicts
        self.wcs_in = wcs_in
        self.params = params


def _outliers(
    img: NDArray[np.floating[Any]],
    var: NDArray[np.floating[Any]],
    valid: NDArray[np.bool_],
    template: NDArray[np.float32],
    tvar: NDArray[np.float32],
    n_sigma: float,
    frac: float,
    fwhm: float | None,
) -> NDArray[np.bool_]:
    """Positive outliers of each warp against a template.

    With ``fwhm``, the fractional term uses the template's local maximum (over a PSF
    FWHM), not its value: PSF-matching residuals of a bright star peak in a ring around
    its core, where the template itself is already much fainter than the core.
    """
    from scipy import ndimage

    peak = np.nan_to_num(np.abs(template))
    if fwhm is not None:
        peak = ndimage.maximum_filter(peak, size=2 * math.ceil(fwhm) + 1)
    return positive_outliers(
        np.ascontiguousarray(img, dtype=np.float32),
        np.ascontiguousarray(var, dtype=np.float32),
        np.ascontiguousarray(valid),
        np.ascontiguousarray(template, dtype=np.float32),
        np.ascontiguousarray(tvar, dtype=np.float32),
        np.ascontiguousarray(peak, dtype=np.float32),
        n_sigma,
        frac,
    )


def _reject_artifacts(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    use: NDArray[np.bool_],
    psfs: list[WarpedPsf],
    center: tuple[float, float],
    weights: NDArray[np.float64],
    p: _Params,
) -> NDArray[np.bool_]:
    """CompareWarp: flags ``(n, ny, nx)`` of artifact pixels (grown footprints) per warp."""
    from scipy import ndimage

    cfg = p.artifacts
    n = img.shape[0]
    size = cfg.matching_kernel_size
    model = model_psf_image(p.model_fwhm, size)
    pm = np.empty(img.shape, np.float32)
    pv = np.empty(img.shape, np.float32)
    ok = np.empty(img.shape, bool)
    for k in range(n):
        stamp = psfs[k].image(*center, size=size, center=(size // 2, size // 2))
        kern = matching_kernel(stamp, model)
        pm[k], pv[k], ok[k] = _psf_match(img[k], var[k], use[k], kern)
    # Template: clipped mean of the PSF-matched warps (robust to the artifacts themselves).
    template, tvar, _ = combine_clipped(pm, pv, ok, weights, 3.0, 0.1, 2)
    outlier = _outliers(
        pm, pv, ok, template, tvar, cfg.detect_n_sigma, cfg.template_frac, p.model_fwhm
    )
    # Sharp artifacts (cosmic rays) are smoothed below threshold by PSF matching: look for
    # them at native resolution too, against a clipped template with a generous
    # fractional term (epoch-to-epoch PSF differences make star cores differ by ~20%).
    ntemplate, ntvar, _ = combine_clipped(img, var, use, weights, 3.0, cfg.sharp_template_frac, 2)
    outlier |= _outliers(
        img, var, use, ntemplate, ntvar, cfg.sharp_detect_n_sigma, cfg.sharp_template_frac, None
    )
    count = outlier.sum(axis=0)
    max_epochs = max(cfg.max_num_epochs, math.floor(cfg.max_fraction_epochs * p.n_inputs_total))
    transient = count <= max_epochs
    rejected = np.zeros(img.shape, bool)
    structure = np.ones((3, 3), bool)
    for k in range(n):
        if not outlier[k].any():
            continue
        labels, n_fp = ndimage.label(outlier[k], structure=structure)
        size_fp = np.bincount(labels.ravel(), minlength=n_fp + 1)
        n_trans = np.bincount(labels.ravel(), weights=transient.ravel(), minlength=n_fp + 1)
        is_artifact = n_trans > cfg.spatial_threshold * np.maximum(size_fp, 1)
        is_artifact[0] = False
        flagged = is_artifact[labels]
        if cfg.grow_px > 0 and flagged.any():
            flagged = _grow_footprints(flagged, labels, np.flatnonzero(is_artifact), cfg.grow_px)
        rejected[k] = flagged & use[k]
    return rejected


def _grow_footprints(
    flagged: NDArray[np.bool_], labels: NDArray[np.int32], which: NDArray[np.intp], grow: int
) -> NDArray[np.bool_]:
    """``binary_dilation(flagged, 3×3, iterations=grow)`` where ``flagged`` is the union of
    the footprints ``which`` of ``labels``: dilated within each footprint's bounding box
    grown by ``grow`` (the dilation is local), not over the whole block."""
    from scipy import ndimage

    out = flagged.copy()
    boxes = ndimage.find_objects(labels)
    structure = np.ones((3, 3), bool)
    ny, nx = flagged.shape
    for lab in which:
        sy, sx = boxes[lab - 1]
        box = (
            slice(max(sy.start - grow, 0), min(sy.stop + grow, ny)),
            slice(max(sx.start - grow, 0), min(sx.stop + grow, nx)),
        )
        out[box] |= ndimage.binary_dilation(flagged[box], structure, iterations=grow)
    return out


def _coadd_block(
    planes: Sequence[NDArray[Any]],
    plan: _Plan,
    ext_box: tuple[int, int, int, int],
    out_box: tuple[int, int, int, int],
    static: _Static,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int32]]:
    """One output chunk: ``planes`` holds the input regions, image, variance and mask of
    each input in turn."""
    p = static.params
    ex0, ey0, ex1, ey1 = ext_box
    shape = (ey1 - ey0, ex1 - ex0)
    n = len(planes) // 3
    img = np.empty((n, *shape), np.float32)
    var = np.empty((n, *shape), np.float32)
    msk = np.empty((n, *shape), np.int32)
    for k in range(n):  # one input's regions at a time (cut out when indexed)
        warp_arrays(
            planes[3 * k],
            planes[3 * k + 1],
            planes[3 * k + 2],
            plan.mappings[k],
            plan.det_boxes[k],
            ext_box,
            kernel=p.kernel,
            no_data=p.no_data,
            sensor_edge=p.sensor_edge,
            out=(img[k], var[k], msk[k]),
        )
    weights = np.asarray(static.weights, dtype=np.float64)[plan.indices]
    covered, use = usable_pixels(img, var, msk, p.no_data, p.bad_bits)
    flag_clipped = flag_rejected = np.zeros((0, 1, 1), bool)  # none
    if p.method == "compare_warp":
        psfs = [WarpedPsf(static.psf_dicts[i], static.wcs_in[i], p.wcs_out) for i in plan.indices]
        center = ((out_box[0] + out_box[2] - 1) / 2.0, (out_box[1] + out_box[3] - 1) / 2.0)
        flag_rejected = _reject_artifacts(img, var, use, psfs, center, weights, p)
        use &= ~flag_rejected
    if p.method == "clipped":
        out, ovar, flag_clipped = combine_clipped(
            img, var, use, weights, p.n_sigma, p.amp_frac, p.n_iter
        )
    elif p.method == "median":
        out, ovar = combine_median(img, var, use)
    else:
        out, ovar, _ = combine_mean(img, var, use, weights)
    # Back to the output box (drop the halo).
    y0, x0 = out_box[1] - ey0, out_box[0] - ex0
    ny, nx = out_box[3] - out_box[1], out_box[2] - out_box[0]
    bit = p.planes
    mask = block_mask(
        use,
        covered,
        msk,
        flag_clipped,
        flag_rejected,
        y0,
        x0,
        ny,
        nx,
        p.no_data,
        p.sensor_edge,
        1 << bit["INEXACT_PSF"],
        1 << bit["CLIPPED"],
        1 << bit["REJECTED"],
        p.bad_bits & ~p.no_data,
        weights,
        np.array([b for b, _ in p.propagate], dtype=np.int64),
        np.array([t for _, t in p.propagate], dtype=np.float64),
    )
    sy, sx = slice(y0, y0 + ny), slice(x0, x0 + nx)
    return (
        np.ascontiguousarray(out[sy, sx], dtype=np.float32),
        np.ascontiguousarray(ovar[sy, sx], dtype=np.float32),
        mask,
    )


@dataclass
class CoaddPlan:
    """A coadd as chunk tasks (see :func:`plan_coadd`).

    ``tasks[(i, j)]``: the :func:`~lsstlite.stages.warp.ops.region_task` of output chunk
    ``(i, j)`` (shape ``shapes[i][j]``), returning its image, variance and mask; a chunk
    without a task is ``fills`` (``(dtype, value)`` per plane: no input covers it).
    ``dependencies``: Dask arrays the tasks read by key (calexps not read from zarr
    directly); ``extra``: graph entries the tasks share by key. ``exposure``: the keyword
    arguments of :func:`~lsstlite.data.exposure.make_exposure` (and
    :func:`~lsstlite.data.exposure.exposure_metadata`) for the coadd's metadata.
    """

    name: str
    tasks: dict[tuple[int, int], tuple[Any, ...]]
    shapes: list[list[tuple[int, int]]]
    fills: tuple[tuple[np.dtype[Any], Any], ...]
    dependencies: list[Any]
    extra: dict[str, Any]
    shape: tuple[int, int]
    exposure: dict[str, Any] = field(default_factory=dict)
    chunk_cache_bytes: int | None = None


def _propagation(
    planes: Mapping[str, int], thresholds: Mapping[str, float] | None
) -> dict[str, float]:
    """``thresholds`` (default :data:`DEFAULT_MASK_PROPAGATION_THRESHOLDS`) checked
    against the inputs' mask ``planes``: a ValueError names an unknown plane or a
    threshold outside [0, 1]."""
    out = dict(DEFAULT_MASK_PROPAGATION_THRESHOLDS if thresholds is None else thresholds)
    for name, t in out.items():
        if name not in planes:
            raise ValueError(
                f"coadd mask_propagation_thresholds: no mask plane {name!r} in the inputs "
                f"(planes: {sorted(planes)})"
            )
        if not 0.0 <= float(t) <= 1.0:
            raise ValueError(
                f"coadd mask_propagation_thresholds[{name!r}]: a fraction of the weight in "
                f"[0, 1], got {t!r}"
            )
        out[name] = float(t)
    return out


def plan_coadd(
    calexps: Sequence[ExposureLike],
    patch: PatchGeometry,
    *,
    method: Method = "compare_warp",
    weights: Sequence[float] | None = None,
    kernel: str = "lanczos3",
    chunks: tuple[int, int] = (512, 512),
    bad_mask_planes: Sequence[str] = DEFAULT_BAD_MASK_PLANES,
    mask_propagation_thresholds: Mapping[str, float] | None = None,
    clip_n_sigma: float = 4.0,
    clip_amp_frac: float = 0.3,
    clip_n_iter: int = 2,
    artifacts: ArtifactConfig | None = None,
    grid_step_px: int = 16,
    chunk_cache_bytes: int | None = None,
) -> CoaddPlan:
    """The chunk tasks of a coadd and its metadata, before any Dask array or Dataset is
    made (:func:`coadd_exposures` makes them; :func:`write_coadd` computes the tasks
    straight into zarr). Parameters as :func:`coadd_exposures`; ``calexps`` may also be
    :class:`~lsstlite.data._zarr_chunks.StoredGroup` (calexps in zarr, opened without
    xarray)."""
    if method not in METHODS:
        raise ValueError(f"coadd method: expected one of {METHODS}, got {method!r}")
    if kernel not in KERNEL_RADIUS:
        raise ValueError(f"coadd kernel: expected one of {sorted(KERNEL_RADIUS)}, got {kernel!r}")
    usable, skipped = select_inputs(calexps, patch)
    if not usable:
        raise ValueError(
            f"coadd: none of the {len(calexps)} calexps overlaps the patch with a usable WCS: "
            + "; ".join(f"{s['data_id']}: {s['reason']}" for s in skipped)
        )
    if weights is not None and len(weights) != len(calexps):
        raise ValueError(f"coadd weights: {len(weights)} given for {len(calexps)} calexps")
    inputs = [calexps[k] for k in usable]
    w = (
        [float(weights[k]) for k in usable]
        if weights is not None
        else input_weights(inputs, bad_mask_planes=bad_mask_planes)
    )
    planes = dict(DEFAULT_MASK_PLANES)
    for ds in inputs:
        for name, bit in mask_planes(ds).items():
            if planes.get(name, bit) != bit:
                raise ValueError(
                    f"calexp {data_id_of(ds)}: mask plane {name!r} has bit {bit}, other inputs "
                    f"use {planes[name]}"
                )
            planes[name] = bit
    propagate = _propagation(planes, mask_propagation_thresholds)
    art = artifacts or ArtifactConfig()
    missing_psf = [data_id_of(ds) for ds in inputs if not ds.attrs.get("psf")]
    if missing_psf:
        raise ValueError(f"coadd: calexps without a PSF model: {missing_psf}")
    # The model PSF of the artifact rejection: measuring the inputs' PSFs (a Moffat fit
    # to a pixel PSF: ~0.2 s each) is skipped by the methods without one.
    model_fwhm = math.nan
    if method == "compare_warp":
        model_fwhm = art.model_psf_fwhm_px or 1.3 * max(_input_fwhm_out(ds, patch) for ds in inputs)
    params = _Params(
        method=method,
        kernel=kernel,
        bad_bits=mask_bits(planes, [p for p in bad_mask_planes if p in planes]),
        no_data=mask_bits(planes, "NO_DATA"),
        sensor_edge=mask_bits(planes, "SENSOR_EDGE"),
        planes=planes,
        n_sigma=clip_n_sigma,
        amp_frac=clip_amp_frac,
        n_iter=clip_n_iter,
        artifacts=art,
        model_fwhm=float(model_fwhm),
        n_inputs_total=len(inputs),
        wcs_out=dict(patch.wcs_cards),
        propagate=tuple((mask_bits(planes, name), t) for name, t in propagate.items()),
    )
    halo = art.halo_px if method == "compare_warp" else 0
    wcs_out = patch.wcs()
    wcs_ins = [cached_wcs(ds.attrs["wcs"]) for ds in inputs]  # checked by select_inputs
    boxes = [detector_box(ds) for ds in inputs]
    psf_dicts = [dict(ds.attrs["psf"]) for ds in inputs]
    wcs_cards = [dict(ds.attrs["wcs"]) for ds in inputs]
    weights_arr = np.asarray(w, dtype=np.float64)
    radius = KERNEL_RADIUS[kernel]
    px0, py0, px1, py1 = patch.bbox
    ny, nx = patch.shape
    name = f"coadd-{uuid.uuid4().hex}"
    static_key = f"{name}-static"
    # Bytes each chunk task holds: its input regions plus the warped stack (image,
    # variance, mask, flags); recorded so that memory can be planned before computing.
    max_task_bytes = 0
    grids = [
        mapping_grid(
            wcs_out,
            w_in,
            (px0 - halo, py0 - halo, px1 + halo, py1 + halo),
            step=grid_step_px,
            within=_outline_box(ds, wcs_out, radius + 2 * grid_step_px),
        )
        for ds, w_in in zip(inputs, wcs_ins, strict=True)
    ]
    stored = [exposure_planes(ds) for ds in inputs]
    tasks: dict[tuple[int, int], tuple[Any, ...]] = {}
    shapes: list[list[tuple[int, int]]] = []
    deps: dict[str, da.Array] = {}
    for i, y in enumerate(range(0, ny, chunks[0])):
        shapes.append([])
        for j, x in enumerate(range(0, nx, chunks[1])):
            out_box = (px0 + x, py0 + y, px0 + min(x + chunks[1], nx), py0 + min(y + chunks[0], ny))
            ext_box = (out_box[0] - halo, out_box[1] - halo, out_box[2] + halo, out_box[3] + halo)
            shapes[-1].append((out_box[3] - out_box[1], out_box[2] - out_box[0]))
            regions, mappings, det_boxes, indices = [], [], [], []
            task_bytes = 0
            ext_area = (ext_box[2] - ext_box[0]) * (ext_box[3] - ext_box[1])
            for k in range(len(inputs)):
                mapping = block_mapping(grids[k], ext_box, boxes[k], radius=radius)
                if mapping.region is None:
                    continue
                origin = (boxes[k][0], boxes[k][1])
                here = [(p, plane_region(p, origin, mapping.region)) for p in stored[k]]
                deps.update((d.name, d) for d in region_dependencies(here))
                regions += here
                mappings.append(mapping)
                det_boxes.append(boxes[k])
                indices.append(k)
                rx0, ry0, rx1, ry1 = mapping.region
                task_bytes += 12 * (rx1 - rx0) * (ry1 - ry0) + 14 * ext_area
            max_task_bytes = max(max_task_bytes, task_bytes)
            if indices:  # else: no input, the chunk is NaN and NO_DATA
                tasks[(i, j)] = region_task(
                    _coadd_block,
                    regions,
                    _Plan(mappings, det_boxes, indices),
                    ext_box,
                    out_box,
                    static_key,  # one object in the graph, shared by key
                )
    components = []
    table = []
    for k, ds in enumerate(inputs):
        did = data_id_of(ds)
        components.append(
            {
                "psf": psf_dicts[k],
                "wcs_in": wcs_cards[k],
                "det_box": list(boxes[k]),
                "weight": w[k],
                "visit": did.get("visit"),
                "detector": did.get("detector"),
            }
        )
        table.append({"visit": did.get("visit"), "detector": did.get("detector"), "weight": w[k]})
    bands = {(ds.attrs.get("visit_info") or {}).get("band") for ds in inputs}
    exposure = dict(
        wcs=patch.wcs_cards,
        psf=CoaddPsf(components, dict(patch.wcs_cards)),
        photo_calib=PhotoCalib(njy_per_count=1.0),
        units="nJy",
        xy0=patch.xy0,
        mask_planes=planes,
        attrs={
            "band": bands.pop() if len(bands) == 1 else None,
            "coadd_inputs": table,
            "coadd_skipped": skipped,
            "coadd": {
                "method": method,
                "kernel": kernel,
                "bad_mask_planes": list(bad_mask_planes),
                "mask_propagation_thresholds": propagate,
                "model_psf_fwhm_px": params.model_fwhm if method == "compare_warp" else None,
                "covariance": COVARIANCE_NOTE,
                "max_task_bytes": int(max_task_bytes),
            },
        },
    )
    return CoaddPlan(
        name=name,
        tasks=tasks,
        shapes=shapes,
        fills=(
            (np.dtype(np.float32), np.nan),
            (np.dtype(np.float32), np.nan),
            (np.dtype(np.int32), params.no_data),
        ),
        dependencies=list(deps.values()),
        extra={static_key: _Static(weights_arr, psf_dicts, wcs_cards, params)},
        shape=(ny, nx),
        exposure=exposure,
        chunk_cache_bytes=chunk_cache_bytes,
    )


def coadd_exposures(
    calexps: Sequence[xr.Dataset],
    patch: PatchGeometry,
    *,
    method: Method = "compare_warp",
    weights: Sequence[float] | None = None,
    kernel: str = "lanczos3",
    chunks: tuple[int, int] = (512, 512),
    bad_mask_planes: Sequence[str] = DEFAULT_BAD_MASK_PLANES,
    mask_propagation_thresholds: Mapping[str, float] | None = None,
    clip_n_sigma: float = 4.0,
    clip_amp_frac: float = 0.3,
    clip_n_iter: int = 2,
    artifacts: ArtifactConfig | None = None,
    grid_step_px: int = 16,
    chunk_cache_bytes: int | None = None,
) -> xr.Dataset:
    """Warp and combine calexps onto a patch (a lazy coadd exposure).

    Parameters
    ----------
    calexps
        Calexps (lazy xarray Datasets, e.g. opened from zarr) of one band, in nJy, with
        WCS and PSF. Those that do not overlap the patch are skipped; those with a broken
        WCS are logged and left out (both listed in ``attrs["coadd_skipped"]``).
    patch
        The output grid (``tract.patch(p).geometry``).
    method
        ``"compare_warp"`` (default: artifact rejection on PSF-matched warps, then the
        weighted mean), ``"mean"`` (inverse-variance weighted), ``"clipped"`` (weighted
        mean after SWarp-style sigma clipping) or ``"median"``.
    weights
        One weight per calexp; default :func:`input_weights` (computed eagerly).
    kernel
        Warping kernel (``"lanczos3"``, ``"bilinear"``, ...).
    chunks
        Output chunk shape.
    bad_mask_planes
        Input mask planes excluded from the combination.
    mask_propagation_thresholds
        Input mask plane → fraction of the weight: the plane is set on a coadd pixel that
        has data when the covering inputs having it carry more than that fraction of
        their total weight; default :data:`DEFAULT_MASK_PROPAGATION_THRESHOLDS` (SAT at
        0.1, as LSST's coadds), ``{}``: none.
    clip_n_sigma, clip_amp_frac, clip_n_iter
        Clipping rule of ``"clipped"`` (see :func:`~lsstlite.stages.coadd._kernels.combine_clipped`).
    artifacts
        :class:`ArtifactConfig` of ``"compare_warp"``.
    grid_step_px
        Spacing of the exact WCS evaluations the warp interpolates.
    chunk_cache_bytes
        For calexps stored in zarr (read by the chunk tasks themselves): bytes of decoded
        input chunks a worker process keeps for the next chunk tasks that need them; a
        chunk leaves as soon as its last reader in this graph has read it. 0 (the
        default, unless the Dask config ``lsstlite.chunk-cache-bytes`` is set): each
        task decodes the chunks it overlaps, least memory. Worth a row of input chunks
        when calexp chunks are larger than the output chunks (1024² into 512²: each
        decoded 4–5 times otherwise).

    Returns
    -------
    xarray.Dataset
        The coadd on the patch grid (nJy), dask-backed. Mask: NO_DATA where no input
        contributes, with the ``bad_mask_planes`` of the inputs that cover the pixel (SAT
        where a star's core saturated in every visit, BAD under a defect in every one),
        the ``mask_propagation_thresholds`` planes where inputs are used (SAT where a
        star saturated in some visits), INEXACT_PSF where an input covers a pixel but does
        not contribute
        (masked, rejected, clipped, or at its sensor edge), REJECTED / CLIPPED where an
        input was rejected / clipped. Attrs: ``psf`` (:class:`CoaddPsf`),
        ``coadd_inputs`` (visit, detector, weight), ``coadd_skipped``, ``coadd``
        (method and parameters), ``band``.

    Raises
    ------
    ValueError
        If ``method`` is unknown, no calexp is usable, or ``weights`` has the wrong length.

    Notes
    -----
    Lazy: one task per output chunk; it depends only on the chunks of each calexp that
    overlap the region the output chunk maps to, grown by the halo: the kernel radius
    (3 px for Lanczos3) plus, for ``compare_warp``, ``artifacts.halo_px`` around the
    chunk (footprints are found on the grown chunk, and the matching kernel is spatially
    constant per chunk, computed at its centre). Peak memory per task is about
    ``n_overlapping_inputs × (chunk + halo)² × 26 bytes`` (× ~2 more for compare_warp);
    the figure for this graph is ``attrs["coadd"]["max_task_bytes"]``. Calexps stored in
    zarr are read by the chunk tasks themselves, one input at a time, through the chunk
    cache (``chunk_cache_bytes``); chunks of any other calexp are computed once and held
    until their last output task has run (see
    :func:`~lsstlite.stages.warp.ops.region_task`).
    ``"mean"``, ``"clipped"`` and ``"median"`` do not depend on the chunking (bit for
    bit); ``"compare_warp"`` may differ only where an outlier footprint is cut by a halo
    edge. Only ``weights=None`` computes anything while building (see
    :func:`input_weights`).
    """
    plan = plan_coadd(
        calexps,
        patch,
        method=method,
        weights=weights,
        kernel=kernel,
        chunks=chunks,
        bad_mask_planes=bad_mask_planes,
        mask_propagation_thresholds=mask_propagation_thresholds,
        clip_n_sigma=clip_n_sigma,
        clip_amp_frac=clip_amp_frac,
        clip_n_iter=clip_n_iter,
        artifacts=artifacts,
        grid_step_px=grid_step_px,
        chunk_cache_bytes=chunk_cache_bytes,
    )
    from lsstlite.data.exposure import make_exposure

    image, variance, mask = tasks_to_planes(
        plan.name,
        plan.tasks,
        plan.shapes,
        plan.fills,
        plan.dependencies,
        extra=plan.extra,
        chunk_cache_bytes=plan.chunk_cache_bytes,
    )
    return make_exposure(image, mask=mask, variance=variance, **plan.exposure)


def write_coadd(
    plan: CoaddPlan,
    path: str | os.PathLike[str],
    *,
    chunks: tuple[int, int] | None = None,
    num_workers: int | None = None,
) -> None:
    """Compute a :func:`plan_coadd` into a new zarr exposure at ``path`` (a local
    directory that must not exist), chunk by chunk, with Dask's threaded scheduler.

    The store is the one :func:`~lsstlite.data.write_exposure_zarr` writes of
    :func:`coadd_exposures` (same metadata, stored chunks ``chunks``, default
    :data:`~lsstlite.data.DEFAULT_CHUNKS`; tested): each stored chunk is written by one
    task as soon as the output chunks it holds are computed, which are then released.
    No Dask array, Dataset or xarray writer is involved: a process that only coadds
    never imports xarray, pandas or ``dask.array`` (~90 MB and ~1 s here), which is
    what ``lsstlite coadd`` does.
    """
    from pathlib import Path

    import dask.threaded

    from lsstlite.data._zarr_chunks import (
        chunk_boxes,
        create_stored_group,
        write_chunk_from_blocks,
    )
    from lsstlite.data.exposure import exposure_metadata
    from lsstlite.data.io import DEFAULT_CHUNKS

    ny, nx = plan.shape
    cy, cx = (min(c, n) for c, n in zip(chunks or DEFAULT_CHUNKS, plan.shape, strict=True))
    attrs, plane_attrs, coords = exposure_metadata(plan.shape, **plan.exposure)
    arrays: dict[str, Any] = {
        p: (("y", "x"), (plan.shape, dtype, plane_attrs[p]))
        for p, (dtype, _) in zip(("image", "variance", "mask"), plan.fills, strict=True)
    }
    arrays = {p: arrays[p] for p in plane_attrs}  # image, mask, variance: as make_exposure
    arrays.update((c, ((c,), v)) for c, v in coords.items())
    stores = create_stored_group(Path(path), attrs, arrays, (cy, cx))
    dsk: dict[Any, Any] = dict(plan.extra)
    for dep in plan.dependencies:
        dsk.update(dep.__dask_graph__())
    for ij, task in plan.tasks.items():
        dsk[(plan.name, *ij)] = task
    count_stored_reads(plan.tasks.values(), plan.chunk_cache_bytes)
    # Output chunk edges (the plan's) and, for each stored chunk, the blocks it holds.
    ey = np.cumsum([0] + [row[0][0] for row in plan.shapes])
    ex = np.cumsum([0] + [s[1] for s in plan.shapes[0]])
    write = f"{plan.name}-write"
    keys = []
    for (si, sj), (box, blocks) in chunk_boxes((ny, nx), (cy, cx), (ey, ex)).items():
        key = (write, si, sj)
        dsk[key] = (
            write_chunk_from_blocks,
            [stores[p] for p in ("image", "variance", "mask")],
            [v for _, v in plan.fills],
            (si, sj),
            box,
            [(int(ey[i]), int(ex[j]), int(ey[i + 1]), int(ex[j + 1])) for i, j in blocks],
            [(plan.name, i, j) if (i, j) in plan.tasks else None for i, j in blocks],
        )
        keys.append(key)
    dask.threaded.get(dsk, keys, num_workers=num_workers)
