"""Synthetic lazy calexps: noise plus Gaussian stars on dithered TAN grids."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

import lsstlite.data as lld
from lsstlite.data.skymap import PatchGeometry
from lsstlite.data.wcs import wcs_to_cards

RA, DEC, SCALE = 150.0, 2.0, 0.2


def _noise_block(block: np.ndarray, seed: int, sigma: float, block_info: Any = None) -> np.ndarray:
    loc = block_info[0]["chunk-location"]
    rng = np.random.default_rng([seed, *loc])
    return rng.normal(0.0, sigma, block.shape).astype(np.float32)


def synthetic_calexp(
    shape: tuple[int, int],
    *,
    seed: int,
    offset_px: tuple[float, float] = (0.0, 0.0),
    rotation_deg: float = 0.0,
    chunks: int = 512,
    sigma: float = 10.0,
    stars: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    fwhm_px: float = 3.0,
) -> xr.Dataset:
    """A lazy calexp: ``shape`` pixels of Gaussian noise (σ = ``sigma`` nJy), optionally with
    Gaussian stars at sky positions ``(ra, dec, flux)``; TAN WCS centred near (150°, 2°).
    """
    ny, nx = shape
    wcs = lld.make_tan_wcs(
        RA,
        DEC,
        ((nx - 1) / 2 + offset_px[0], (ny - 1) / 2 + offset_px[1]),
        SCALE,
        rotation_deg=rotation_deg,
    )
    template = da.zeros(shape, dtype=np.float32, chunks=chunks)
    image = template.map_blocks(_noise_block, seed, sigma, dtype=np.float32)
    if stars is not None:
        ra, dec, flux = stars
        x, y = wcs.all_world2pix(ra, dec, 0)
        s = fwhm_px / 2.3548
        yy, xx = np.mgrid[0:ny, 0:nx]
        model = np.zeros(shape, np.float32)
        for xi, yi, f in zip(x, y, flux, strict=True):
            if -20 < xi < nx + 20 and -20 < yi < ny + 20:
                x0, x1 = max(0, int(xi) - 15), min(nx, int(xi) + 16)
                y0, y1 = max(0, int(yi) - 15), min(ny, int(yi) + 16)
                sub = (slice(y0, y1), slice(x0, x1))
                model[sub] += (
                    f
                    * np.exp(-0.5 * ((xx[sub] - xi) ** 2 + (yy[sub] - yi) ** 2) / s**2)
                    / (2 * np.pi * s * s)
                )
        image = image + da.from_array(model, chunks=chunks)
    return lld.make_exposure(
        image,
        variance=da.full(shape, sigma**2, dtype=np.float32, chunks=chunks),
        wcs=wcs,
        psf=lld.GaussianPsf(fwhm=fwhm_px),
        units="nJy",
        visit_info={
            "instrument": "Synth",
            "exposure": seed,
            "visit": seed,
            "detector": 0,
            "band": "r",
        },
    )


def synthetic_patch(shape: tuple[int, int]) -> PatchGeometry:
    ny, nx = shape
    wcs = lld.make_tan_wcs(RA, DEC, ((nx - 1) / 2, (ny - 1) / 2), SCALE)
    return PatchGeometry(wcs_to_cards(wcs), shape, (0, 0))
