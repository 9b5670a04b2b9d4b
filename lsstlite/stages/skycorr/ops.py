"""Sky correction: one smooth background over the whole focal plane of a visit.

Characterisation subtracts a background mesh per detector (sep, ~128 px cells). Around
galaxies larger than a cell that mesh follows the galaxy's outskirts and takes their light
away. ``skyCorr`` in the LSST pipelines replaces the per-detector backgrounds by a model fitted
to all detectors of a visit at once; this module does the same:

1. :func:`binned_sky`: each calexp with its subtracted background restored (``background``
   dataset × the calexp's nJy per count), sources and bad pixels masked, in clipped-median
   superpixels of ``bin_px``;
2. :func:`fit_sky_model`: a 2-D Legendre polynomial in the gnomonic (tangent-plane)
   coordinates about the visit's boresight, fitted to the superpixels of every detector
   with iterative clipping;
3. :func:`apply_sky_model`: calexp + restored background − model, evaluated on a coarse
   grid and interpolated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from numpy.polynomial import legendre
from numpy.typing import NDArray

from lsstlite.data.masks import mask_bits, mask_planes
from lsstlite.data.wcs import wcs_from_cards
from lsstlite.stages.skycorr import _kernels

__all__ = [
    "SKY_BAD_PLANES",
    "SkyModel",
    "apply_sky_model",
    "binned_sky",
    "fit_sky_model",
    "pair_backgrounds",
    "tangent_plane",
]

#: Pixels left out of the sky estimate.
SKY_BAD_PLANES = ("BAD", "SAT", "CR", "EDGE", "NO_DATA", "DETECTED", "SUSPECT", "INTRP")


def tangent_plane(
    ra: NDArray[np.float64], dec: NDArray[np.float64], ra0: float, dec0: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Gnomonic coordinates (degrees) of ``(ra, dec)`` about ``(ra0, dec0)``."""
    a, d = np.radians(ra), np.radians(dec)
    a0, d0 = math.radians(ra0), math.radians(dec0)
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cos_c
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cos_c
    return np.degrees(xi), np.degrees(eta)


@dataclass(frozen=True)
class SkyModel:
    """A visit's focal-plane sky (nJy per pixel) as a Legendre polynomial in the tangent
    plane about ``(ra0, dec0)``; ``u = xi / scale_deg``, ``v = eta / scale_deg``."""

    ra0: float
    dec0: float
    scale_deg: float
    order: int
    coeffs: list[list[float]]
    rms: float
    n_bins: int
    n_detectors: int
    visit: int | None = None

    def evaluate(self, xi: Any, eta: Any) -> NDArray[np.float64]:
        """The model at tangent-plane positions (degrees)."""
        u = np.asarray(xi, dtype=float) / self.scale_deg
        v = np.asarray(eta, dtype=float) / self.scale_deg
        return np.asarray(legendre.legval2d(u, v, np.asarray(self.coeffs)), dtype=float)

    def at_sky(self, ra: Any, dec: Any) -> NDArray[np.float64]:
        """The model at sky positions (degrees)."""
        return self.evaluate(*tangent_plane(np.asarray(ra), np.asarray(dec), self.ra0, self.dec0))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "focal_plane_legendre", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkyModel:
        fields = {k: v for k, v in data.items() if k != "kind"}
        return cls(**fields)


def _njy_per_count(calexp: xr.Dataset) -> float:
    meta = calexp.attrs.get("calibrate") or {}
    if "njy_per_count" not in meta:
        raise ValueError(
            f"{_describe(calexp)}: no attrs['calibrate']['njy_per_count']; the background "
            "(in counts) cannot be restored on this exposure"
        )
    return float(meta["njy_per_count"])


def _describe(ds: xr.Dataset) -> str:
    vi = ds.attrs.get("visit_info") or {}
    return f"calexp visit {vi.get('exposure')} detector {vi.get('detector')}"


def _restored(calexp: xr.Dataset, background: xr.Dataset | None) -> NDArray[np.float64]:
    image = np.asarray(calexp["image"].values, dtype=np.float64)
    if background is not None:
        back = np.asarray(background["image"].values, dtype=np.float64)
        if back.shape != image.shape:
            raise ValueError(
                f"{_describe(calexp)}: background shape {back.shape} is not the image's "
                f"{image.shape}"
            )
        image = image + back * _njy_per_count(calexp)
    return image


def _exposure_key(ds: xr.Dataset) -> tuple[Any, Any]:
    vi = ds.attrs.get("visit_info") or {}
    return vi.get("exposure"), vi.get("detector")


def pair_backgrounds(
    calexps: Sequence[xr.Dataset], backgrounds: Sequence[xr.Dataset]
) -> list[xr.Dataset]:
    """The background of each calexp, matched by (exposure, detector) in ``visit_info``.

    Raises
    ------
    LookupError
        Naming the calexp whose background is missing.
    """
    by_key = {_exposure_key(b): b for b in backgrounds}
    out = []
    for c in calexps:
        key = _exposure_key(c)
        if key not in by_key:
            raise LookupError(f"no background for {_describe(c)}")
        out.append(by_key[key])
    return out


def binned_sky(
    calexp: xr.Dataset,
    background: xr.Dataset | None = None,
    *,
    bin_px: int = 64,
    n_sigma: float = 3.0,
    min_good_fraction: float = 0.5,
    bad_planes: Sequence[str] = SKY_BAD_PLANES,
) -> pd.DataFrame:
    """Clipped-median sky of ``bin_px`` superpixels of one calexp (background restored).

    Returns
    -------
    pandas.DataFrame
        ``ra``, ``dec`` of each superpixel centre, ``value`` (nJy per pixel), ``error``
        (its standard error) and ``n_good`` (pixels used); superpixels with fewer than
        ``min_good_fraction`` usable pixels are left out.
    """
    image = _restored(calexp, background)
    planes = mask_planes(calexp)
    bits = mask_bits(planes, [p for p in bad_planes if p in planes])
    bad = ((np.asarray(calexp["mask"].values) & bits) != 0) | ~np.isfinite(image)
    ny, nx = image.shape
    by, bx = ny // bin_px, nx // bin_px
    if by == 0 or bx == 0:
        raise ValueError(f"{_describe(calexp)}: smaller than one {bin_px}-px superpixel")
    value, n_good, sigma = _kernels.clipped_block_stats(
        np.ascontiguousarray(image), np.ascontiguousarray(bad), int(bin_px), float(n_sigma)
    )
    ok = (n_good >= min_good_fraction * bin_px * bin_px) & np.isfinite(value)
    iy, ix = np.nonzero(ok)
    x0, y0 = float(calexp["x"].values[0]), float(calexp["y"].values[0])
    xc = x0 + (ix + 0.5) * bin_px - 0.5
    yc = y0 + (iy + 0.5) * bin_px - 0.5
    ra, dec = wcs_from_cards(calexp.attrs["wcs"]).all_pix2world(xc, yc, 0)
    # median of n values: standard error ≈ 1.2533 σ / √n
    error = 1.2533 * sigma[ok] / np.sqrt(n_good[ok])
    return pd.DataFrame(
        {
            "ra": np.asarray(ra, float),
            "dec": np.asarray(dec, float),
            "value": value[ok],
            "error": error,
            "n_good": n_good[ok],
        }
    )


def _terms(order: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]


def fit_sky_model(
    calexps: Sequence[xr.Dataset],
    backgrounds: Sequence[xr.Dataset | None] | None = None,
    *,
    bin_px: int = 64,
    order: int = 2,
    n_sigma: float = 3.0,
    n_iter: int = 3,
) -> SkyModel:
    """Fit one focal-plane sky to the calexps of a visit (backgrounds restored).

    Parameters
    ----------
    calexps
        The visit's calexps (nJy, with WCS and ``attrs['calibrate']``).
    backgrounds
        Their ``background`` datasets (counts), in the same order, or None to fit the
        calexps as they are.
    bin_px, n_sigma
        Superpixel size and clipping of :func:`binned_sky`.
    order
        Total degree of the Legendre polynomial.
    n_iter
        Rounds of clipping superpixels whose residual exceeds ``n_sigma`` robust σ.

    Raises
    ------
    ValueError
        With no calexp, or fewer usable superpixels than polynomial terms.
    """
    if not calexps:
        raise ValueError("fit_sky_model: no calexp")
    backs: Sequence[xr.Dataset | None] = backgrounds or [None] * len(calexps)
    if len(backs) != len(calexps):
        raise ValueError(f"{len(calexps)} calexps but {len(backs)} backgrounds")
    table = pd.concat(
        [
            binned_sky(c, b, bin_px=bin_px, n_sigma=n_sigma)
            for c, b in zip(calexps, backs, strict=True)
        ],
        ignore_index=True,
    )
    vi = calexps[0].attrs.get("visit_info") or {}
    ra0 = vi.get("boresight_ra")
    dec0 = vi.get("boresight_dec")
    if ra0 is None or dec0 is None:
        ra0, dec0 = float(np.median(table["ra"])), float(np.median(table["dec"]))
    xi, eta = tangent_plane(table["ra"].to_numpy(), table["dec"].to_numpy(), ra0, dec0)
    scale = float(max(np.max(np.abs(xi)), np.max(np.abs(eta)), 1e-6))
    terms = _terms(order)
    if len(table) < len(terms):
        raise ValueError(
            f"fit_sky_model: {len(table)} usable superpixels for {len(terms)} polynomial terms; "
            "lower order or bin_px"
        )
    u, v = xi / scale, eta / scale
    basis = np.stack(
        [
            legendre.legval(u, np.eye(order + 1)[i]) * legendre.legval(v, np.eye(order + 1)[j])
            for i, j in terms
        ],
        axis=1,
    )
    y = table["value"].to_numpy()
    w = 1.0 / np.maximum(table["error"].to_numpy(), 1e-12)
    use = np.ones(len(y), bool)
    coef = np.zeros(len(terms))
    for _ in range(max(n_iter, 1)):
        coef, *_ = np.linalg.lstsq(basis[use] * w[use, None], y[use] * w[use], rcond=None)
        resid = y - basis @ coef
        robust = 1.4826 * float(np.median(np.abs(resid[use] - np.median(resid[use]))))
        new = np.abs(resid) <= n_sigma * max(robust, 1e-30)
        if new.sum() < len(terms) or np.array_equal(new, use):
            break
        use = new
    grid = np.zeros((order + 1, order + 1))
    for (i, j), c in zip(terms, coef, strict=True):
        grid[i, j] = c
    resid = y[use] - basis[use] @ coef
    return SkyModel(
        ra0=float(ra0),
        dec0=float(dec0),
        scale_deg=scale,
        order=int(order),
        coeffs=grid.tolist(),
        rms=float(np.sqrt(np.mean(resid**2))) if len(resid) else math.nan,
        n_bins=int(use.sum()),
        n_detectors=len(calexps),
        visit=None if vi.get("exposure") is None else int(vi["exposure"]),
    )


def _linear_weights(points: NDArray[np.float64], grid: NDArray[np.float64]) -> NDArray[np.float64]:
    """``(len(points), len(grid))`` linear-interpolation weights of ``points`` (inside the
    increasing ``grid``): two non-zero weights per row, summing to one."""
    k = np.clip(np.searchsorted(grid, points, side="right") - 1, 0, len(grid) - 2)
    t = (points - grid[k]) / (grid[k + 1] - grid[k])
    w = np.zeros((len(points), len(grid)))
    rows = np.arange(len(points))
    w[rows, k] = 1.0 - t
    w[rows, k + 1] = t
    return w


def apply_sky_model(
    calexp: xr.Dataset,
    model: SkyModel | dict[str, Any],
    background: xr.Dataset | None = None,
    *,
    grid_px: int = 32,
) -> xr.Dataset:
    """``calexp`` + its restored ``background`` − the focal-plane ``model`` (lazy-safe).

    The model is evaluated on a grid of ``grid_px`` and interpolated linearly (a smooth
    polynomial: the interpolation error is far below the sky noise). The result carries
    ``attrs['sky_correction']`` (the model) and keeps chunks, mask and variance.
    """
    sky = model if isinstance(model, SkyModel) else SkyModel.from_dict(dict(model))
    ny, nx = calexp["image"].shape
    x0, y0 = float(calexp["x"].values[0]), float(calexp["y"].values[0])
    gy = np.unique(np.append(np.arange(0, ny, grid_px), ny - 1)).astype(float)
    gx = np.unique(np.append(np.arange(0, nx, grid_px), nx - 1)).astype(float)
    mx, my = np.meshgrid(gx + x0, gy + y0)
    ra, dec = wcs_from_cards(calexp.attrs["wcs"]).all_pix2world(mx.ravel(), my.ravel(), 0)
    coarse = sky.at_sky(ra, dec).reshape(my.shape)

    def model_block(block: NDArray[Any], block_info: Any = None) -> NDArray[np.float32]:
        if block_info is None:
            (ya, yb), (xa, xb) = (0, block.shape[0]), (0, block.shape[1])
        else:
            (ya, yb), (xa, xb) = block_info[0]["array-location"]
        # bilinear on the regular grid as two small products (RegularGridInterpolator on
        # every pixel of a 1024² chunk: 0.12-0.14 s; this: 0.02 s)
        wy = _linear_weights(np.arange(ya, yb, dtype=float), gy)
        wx = _linear_weights(np.arange(xa, xb, dtype=float), gx)
        return np.asarray(wy @ coarse @ wx.T, dtype=np.float32)

    image = calexp["image"]
    # Only the coarse grid travels with the graph; each chunk interpolates its own pixels.
    if isinstance(image.data, da.Array):
        new = image.data - da.map_blocks(model_block, image.data, dtype=np.float32)
    else:
        new = np.asarray(image.data, np.float32) - model_block(np.asarray(image.data))
    if background is not None:
        back = background["image"].data
        if isinstance(new, da.Array) and not isinstance(back, da.Array):
            back = da.from_array(np.asarray(back), chunks=new.chunks)
        elif isinstance(back, da.Array) and isinstance(new, da.Array):
            back = back.rechunk(new.chunks)
        new = new + back * np.float32(_njy_per_count(calexp))
    out = calexp.copy()
    out["image"] = (("y", "x"), new.astype(np.float32), dict(image.attrs))
    out.attrs = dict(calexp.attrs)
    out.attrs["sky_correction"] = {
        **sky.to_dict(),
        "restored_background": background is not None,
    }
    return out
