"""Master-calibration ops: clipped stacks, flat levels, defect finding, fringe frames.

Inputs are exposures from :func:`lsstlite.stages.isr.ops.isr_chain` (electrons, with a
variance plane). Every op is lazy except the ones that return small tables
(:func:`find_defects`), which say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import NDArray
from scipy import ndimage

from lsstlite.data.exposure import exposure_label, make_exposure
from lsstlite.data.masks import mask_bits, mask_planes
from lsstlite.stages.calibs import _kernels as _ck
from lsstlite.stages.characterize._kernels import correlate_separable, gaussian_taps
from lsstlite.stages.isr import _kernels

__all__ = [
    "combine_exposures",
    "find_defects",
    "fringe_from_exposures",
    "robust_mean_level",
]

F32 = np.float32


def _arr(ds: xr.Dataset, name: str) -> da.Array:
    data = ds[name].data
    return data if isinstance(data, da.Array) else da.from_array(data, chunks=data.shape)


def combine_exposures(
    exposures: Sequence[xr.Dataset],
    *,
    scales: Sequence[float] | None = None,
    n_sigma: float = 5.0,
    units: str = "electron",
) -> xr.Dataset:
    """Sigma-clipped mean of exposures, each divided by its ``scales`` entry (default 1,
    finite and positive); all of one shape.

    Values more than ``n_sigma`` σ (each pixel's own noise from its variance plane) from
    the median (three or more inputs) or the minimum (two) are rejected: cosmic rays
    vanish even from a pair of darks.

    Notes
    -----
    Lazy ``map_blocks`` over the stacked inputs (chunks of the first input; all inputs
    are rechunked to match). No halo.
    """
    if not exposures:
        raise ValueError("combine_exposures needs at least one exposure")
    scales = [1.0] * len(exposures) if scales is None else list(scales)
    if len(scales) != len(exposures):
        raise ValueError(f"{len(scales)} scales for {len(exposures)} exposures")
    shape = exposures[0]["image"].shape
    for k, e in enumerate(exposures):
        if e["image"].shape != shape:
            raise ValueError(
                f"combine_exposures: input {k} ({exposure_label(e)}) has shape {e['image'].shape}, "
                f"input 0 ({exposure_label(exposures[0])}) {shape}: frames of different detectors?"
            )
        if not np.isfinite(scales[k]) or scales[k] <= 0:
            raise ValueError(
                f"combine_exposures: input {k} ({exposure_label(e)}) has scale {scales[k]!r}; "
                "scales (dark times, flat lamp levels) must be finite and positive"
            )
    chunks = _arr(exposures[0], "image").chunks
    imgs = da.stack(
        [_arr(e, "image").rechunk(chunks) / F32(s) for e, s in zip(exposures, scales, strict=True)]
    )
    vars_ = da.stack(
        [
            _arr(e, "variance").rechunk(chunks) / F32(s * s)
            for e, s in zip(exposures, scales, strict=True)
        ]
    )
    n = len(exposures)
    imgs, vars_ = imgs.rechunk({0: n}), vars_.rechunk({0: n})
    comb = da.map_blocks(
        _kernels.clipped_combine,
        imgs,
        vars_,
        n_sigma,
        drop_axis=0,
        dtype=F32,
        meta=np.empty((0, 0), F32),
    )
    var = (vars_.sum(axis=0) / F32(n * n)).astype(F32)
    first = exposures[0]
    return make_exposure(
        comb,
        variance=var,
        wcs=None,
        units=units,
        xy0=(int(first["x"][0]), int(first["y"][0])),
        attrs={"n_inputs": n, "scales": [float(s) for s in scales]},
    )


def robust_mean_level(
    exp: xr.Dataset, *, n_sigma: float = 4.0, bad_planes: Sequence[str] = ("BAD", "SAT")
) -> da.Array:
    """Mean of the unmasked pixels after clipping at ``n_sigma`` MADs (0-d dask array).

    Notes
    -----
    Lazy: one delayed task on the whole image: an exact median and MAD
    (:func:`~lsstlite.stages.calibs._kernels.nanmedian_all`, float32 as ``np.nanmedian``),
    then the masked float32 sum block by block in the order ``da.sum`` adds them (the
    image's row chunks, then its tree of partial sums).
    """
    img = _arr(exp, "image")
    msk = _arr(exp, "mask")
    bits = mask_bits(mask_planes(exp), list(bad_planes))
    sizes = tuple(int(c) for c in img.ravel().chunks[0])
    level = dask.delayed(_robust_mean, pure=True)(img, msk, bits, float(n_sigma), sizes)
    return da.from_delayed(level, shape=(), dtype=np.float64)


def _robust_mean(
    img: NDArray[np.float32],
    msk: NDArray[np.integer],
    bits: int,
    n_sigma: float,
    sizes: tuple[int, ...],
) -> np.float64:
    vals = np.where((msk & bits) != 0, np.float32(np.nan), img).ravel()
    med = _ck.nanmedian_all(vals)
    dev = np.fabs(vals - med)
    mad = 1.4826 * _ck.nanmedian_all(dev)
    keep = dev <= n_sigma * mad
    kept = np.where(keep, vals, np.float32(0.0))
    edges = np.cumsum((0, *sizes))
    parts = [kept[a:b].sum() for a, b in pairwise(edges)]
    split = dask.config.get("split_every", 4)
    split = split if isinstance(split, int) and split > 1 else 4
    while len(parts) > split:  # da.sum's tree: consecutive groups of split_every partials
        parts = [np.array(parts[i : i + split]).sum() for i in range(0, len(parts), split)]
    total = np.array(parts, dtype=kept.dtype).sum()
    return np.float64(total) / np.int64(keep.sum())


def _middle_mean(m: int, lo: np.float32, hi: np.float32) -> np.float64:
    """``np.median`` of ``m`` float32 values taken as float64, from its middle two."""
    return np.float64(lo) if m % 2 else (np.float64(lo) + np.float64(hi)) / 2.0


def find_defects(
    dark: xr.Dataset,
    flats: Sequence[xr.Dataset],
    *,
    hot_rate: float = 0.2,
    dead_fraction: float = 0.5,
    window: int = 15,
) -> pd.DataFrame:
    """Defect boxes: hot pixels from a master dark, dead/dim pixels from flats. Computes.

    Hot: dark current above ``hot_rate`` e⁻/s. Dead: the mean of the median-normalised
    flats below ``dead_fraction`` of its local median along the row (``window`` px).
    Each connected group becomes its bounding box.

    Returns
    -------
    pandas.DataFrame
        ``kind`` (``hot`` / ``dead``), ``x0``, ``y0``, ``width``, ``height`` (detector
        frame, 0-based), ``n_pixels``.
    """
    rate = np.asarray(dark["image"].values, dtype=np.float64)
    hot = rate > hot_rate
    if window < 1 or window % 2 == 0:
        raise ValueError(f"find_defects: window must be a positive odd number, got {window}")
    # Mean of the median-normalised flats, one flat in memory at a time (a stack of ten
    # 8-Mpixel float64 flats is 640 MB). The level is the median of every 7th pixel: its
    # error (~1e-4) is far below the dead-pixel threshold.
    mean_flat = np.zeros_like(rate)
    for f in flats:
        img = np.ascontiguousarray(f["image"].values)
        sample = img.ravel()[::7]
        if img.dtype == np.float32:  # np.median of the float64 sample, by radix selection
            m, lo, hi = _ck.middle_values(sample)
            level = _middle_mean(m, lo, hi) if m == sample.size else np.float64(np.nan)
        else:
            level = np.median(np.asarray(sample, dtype=np.float64))
        _ck.add_scaled(mean_flat, img, level)
    mean_flat = mean_flat / len(flats) if flats else np.ones_like(rate)
    local = _ck.row_median_filter(np.ascontiguousarray(mean_flat, dtype=np.float64), window)
    dead = mean_flat < dead_fraction * local
    rows = []
    for kind, plane in (("hot", hot), ("dead", dead)):
        labels, _ = ndimage.label(plane, structure=np.ones((3, 3)))
        for k, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            ys, xs = sl
            rows.append(
                {
                    "kind": kind,
                    "x0": xs.start,
                    "y0": ys.start,
                    "width": xs.stop - xs.start,
                    "height": ys.stop - ys.start,
                    "n_pixels": int((labels[sl] == k).sum()),
                }
            )
    cols = ["kind", "x0", "y0", "width", "height", "n_pixels"]
    return pd.DataFrame(rows, columns=cols).astype(
        {
            "x0": np.int64,
            "y0": np.int64,
            "width": np.int64,
            "height": np.int64,
            "n_pixels": np.int64,
        }
    )


def fringe_from_exposures(
    exposures: Sequence[xr.Dataset],
    *,
    n_sigma: float = 3.0,
    smooth_px: float = 3.0,
    bad_planes: Sequence[str] = ("BAD", "SAT", "INTRP", "UNMASKEDNAN"),
) -> xr.Dataset:
    """A zero-mean fringe frame (fraction of the sky) from flat-fielded science exposures.

    Each exposure: fit a plane to the sky (sources clipped at ``n_sigma`` √variance,
    twice), divide the residual by it, mask sources (dilated); the median over exposures
    is smoothed by a Gaussian of ``smooth_px`` (normalised for masked pixels) and made
    zero-mean (its constant is degenerate with the sky).

    Notes
    -----
    Each exposure is one delayed block (a plane fit needs the whole detector); computes
    nothing until asked. Needs whole exposures in memory.
    """

    def one(
        img: NDArray[np.float32], var: NDArray[np.float32], msk: NDArray[np.int32], bad: int
    ) -> NDArray[np.float32]:
        good = ((msk & bad) == 0) & np.isfinite(img)
        # np.median(im[good]) of the float64 image: the middle float32 values, their
        # mean in float64
        m, lo, hi = _ck.middle_values(np.where(good, img, np.float32(np.nan)))
        level = _middle_mean(m, lo, hi)
        im = np.asarray(img, dtype=np.float64)
        sky = np.full_like(im, level)
        noise = np.ascontiguousarray(n_sigma * np.sqrt(np.maximum(var, 1.0)))
        for _ in range(2):
            src = _ck.dilate_diamond(_ck.above_sky(im, sky, noise), 3)
            keep = good & ~src
            sky = _ck.plane_fit(im, keep)
        return _ck.sky_fraction(im, sky, keep)

    fracs = []
    for e in exposures:
        bad = mask_bits(mask_planes(e), list(bad_planes))
        delayed = dask.delayed(one, pure=True)(
            e["image"].data, e["variance"].data, e["mask"].data, bad
        )
        fracs.append(
            da.from_delayed(delayed, shape=e["image"].shape, dtype=F32, meta=np.empty((0, 0), F32))
        )

    def finish(stack: NDArray[np.float32]) -> NDArray[np.float32]:
        med = _ck.nanmedian_axis0(np.ascontiguousarray(stack, dtype=F32))
        ok = np.isfinite(med)
        # normalised convolution (zeros beyond the edges and at masked pixels)
        g = gaussian_taps(smooth_px)
        num = correlate_separable(np.where(ok, med, np.float32(0.0)).astype(F32), g, g)
        den = correlate_separable(ok.astype(F32), g, g)
        out = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)
        return (out - out.mean()).astype(F32)

    stack = da.stack(fracs).rechunk(-1)
    frame = da.map_blocks(finish, stack, drop_axis=0, dtype=F32, meta=np.empty((0, 0), F32))
    return make_exposure(frame, units="electron", attrs={"n_inputs": len(exposures)})
