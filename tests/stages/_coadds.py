"""Synthetic coadds rendered from a truth table, for the multi-band measurement tests.

A coadd here is a tangent-plane patch (north up, east left) in nJy: stars are Moffat
PSFs, galaxies Sérsic profiles (truncated and normalised as the simulator does)
convolved with the PSF, plus Gaussian noise of a known, constant variance. The pixel
kernels are the simulator's (``lsstlite.sim._kernels``), used read-only.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import xarray as xr
from scipy.signal import fftconvolve

import lsstlite.data as lld
from lsstlite.sim import _kernels as simk
from lsstlite.sim.config import PRESETS
from lsstlite.sim.sky import make_catalog

PIXEL_SCALE = 0.2
RA0, DEC0 = 150.0, 2.0
#: Per-band seeing (pixels) and per-pixel noise (nJy) of the test coadds.
FWHM_PX = {"g": 4.2, "r": 3.9, "i": 3.6, "z": 3.5}
NOISE_NJY = {"g": 4.0, "r": 5.0, "i": 6.0, "z": 9.0}
BETA = 3.0
_TRUNC = {1.0: 4.0, 4.0: 5.0}


def truth_catalog(bands: tuple[str, ...] = ("g", "r", "i"), seed: int = 1) -> pd.DataFrame:
    """The simulator's truth for the ``small`` preset (the sim_small field), given bands."""
    config = dataclasses.replace(PRESETS["small"], bands=bands)
    return make_catalog(config, seed)


def _bn(n: float) -> float:
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def make_wcs(shape: tuple[int, int], xy0: tuple[int, int] = (0, 0)) -> object:
    """The tract WCS: tangent point at (RA0, DEC0) in the middle of a ``shape`` image."""
    ny, nx = shape
    return lld.make_tan_wcs(RA0, DEC0, (xy0[0] + nx / 2.0, xy0[1] + ny / 2.0), PIXEL_SCALE)


def render_coadd(
    truth: pd.DataFrame,
    band: str,
    *,
    shape: tuple[int, int] = (1000, 1000),
    xy0: tuple[int, int] = (0, 0),
    wcs: object | None = None,
    fwhm_px: float | None = None,
    noise_njy: float | None = None,
    seed: int = 0,
) -> xr.Dataset:
    """A background-free coadd of ``truth`` in ``band`` (nJy), with PSF, WCS and band.

    ``wcs`` defaults to :func:`make_wcs` of the parent (tract) frame; ``xy0`` is the
    patch origin in that frame.
    """
    ny, nx = shape
    fwhm = FWHM_PX[band] if fwhm_px is None else fwhm_px
    sigma = NOISE_NJY[band] if noise_njy is None else noise_njy
    wcs = make_wcs(shape, xy0) if wcs is None else wcs
    x, y = wcs.all_world2pix(truth["ra"].to_numpy(), truth["dec"].to_numpy(), 0)  # type: ignore[attr-defined]
    x, y = np.asarray(x) - xy0[0], np.asarray(y) - xy0[1]
    margin = 60
    sel = (x > -margin) & (x < nx + margin) & (y > -margin) & (y < ny + margin)
    image = np.zeros(shape)
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / BETA) - 1.0))
    psf_grid = simk.moffat_grid(2 * math.ceil(5 * fwhm) + 1, 1.0, fwhm, BETA, 0.0, 0.0)
    psf_grid /= psf_grid.sum()
    floor = 0.003 * sigma
    for k in np.flatnonzero(sel):
        row = truth.iloc[k]
        flux = float(row[f"flux_{band}"])
        if bool(row["is_star"]):
            peak = flux * (BETA - 1.0) / (math.pi * alpha * alpha)
            r = alpha * math.sqrt(max((peak / floor) ** (1.0 / BETA) - 1.0, 0.0))
            radius = int(min(max(math.ceil(r), math.ceil(2 * fwhm)), 200))
            simk.add_moffat(image, x[k], y[k], flux, fwhm, BETA, 0.0, 0.0, radius)
            continue
        n = float(row["sersic_n"])
        hlr = float(row["hlr_arcsec"]) / PIXEL_SCALE
        q, pa = float(row["q"]), math.radians(float(row["pa_deg"]))
        u = np.array([-math.sin(pa), math.cos(pa)])  # major axis in pixels (east = -x)
        w = np.array([math.cos(pa), math.sin(pa)])
        s = hlr * hlr / q * np.outer(u, u) + hlr * hlr * q * np.outer(w, w)
        m = np.linalg.inv(s)
        rg = math.ceil(_TRUNC[n] * hlr / math.sqrt(q)) + 1
        over = 4 if hlr * math.sqrt(q) < 1.5 else 2
        ix, iy = math.floor(x[k] + 0.5), math.floor(y[k] + 0.5)
        n_g = 2 * rg + 1
        mid = (n_g * over - 1) / 2.0
        grid = simk.sersic_grid(
            n_g * over, 1.0 / over, mid + (x[k] - ix) * over, mid + (y[k] - iy) * over,
            n, _bn(n), 1.0, m[0, 0], m[0, 1], m[1, 1], _TRUNC[n],
        )  # fmt: skip
        gal = grid.reshape(n_g, over, n_g, over).sum(axis=(1, 3))
        stamp = fftconvolve(gal * (flux / gal.sum()), psf_grid, mode="full")
        half = rg + psf_grid.shape[0] // 2
        _add(image, stamp, ix - half, iy - half)
    rng = np.random.default_rng(seed)
    image += rng.normal(0.0, sigma, size=shape)
    return lld.make_exposure(
        image.astype(np.float32),
        variance=np.full(shape, sigma * sigma, dtype=np.float32),
        wcs=wcs,
        psf=lld.MoffatPsf(fwhm=fwhm, beta=BETA),
        units="nJy",
        xy0=xy0,
        attrs={"band": band},
    )


def _add(image: np.ndarray, stamp: np.ndarray, x0: int, y0: int) -> None:
    ny, nx = image.shape
    sy, sx = stamp.shape
    ya, yb = max(y0, 0), min(y0 + sy, ny)
    xa, xb = max(x0, 0), min(x0 + sx, nx)
    if ya < yb and xa < xb:
        image[ya:yb, xa:xb] += stamp[ya - y0 : yb - y0, xa - x0 : xb - x0]


def star_pairs(
    n: int, *, fwhm_px: float, seed: int = 3, shape: tuple[int, int] = (1000, 1000)
) -> pd.DataFrame:
    """Truth-like table of ``n`` isolated pairs of stars on a grid.

    Separations 1.5–4 PSF FWHM, magnitudes as the simulator's pairs (primary 17.5–21.5,
    companion 0–2 mag fainter) shifted 2.5 mag fainter in ``g`` … kept identical in all
    bands here (flux ratios are what matters); ``blend_group`` numbers the pairs.
    """
    rng = np.random.default_rng(seed)
    wcs = make_wcs(shape)
    side = math.ceil(math.sqrt(n))
    step = min(shape) / (side + 1)
    rows = []
    for k in range(n):
        gx, gy = (k % side + 1) * step, (k // side + 1) * step
        sep = rng.uniform(1.5, 4.0) * fwhm_px
        ang = rng.uniform(0.0, 2.0 * math.pi)
        m1 = rng.uniform(17.5, 21.5)
        m2 = m1 + rng.uniform(0.0, 2.0)
        for dx, dy, mag in ((0.0, 0.0, m1), (sep * math.cos(ang), sep * math.sin(ang), m2)):
            ra, dec = wcs.all_pix2world(gx + dx + rng.uniform(-0.5, 0.5), gy + dy, 0)  # type: ignore[attr-defined]
            flux = 10.0 ** (-0.4 * (mag - 31.4))
            rows.append(
                {"ra": float(ra), "dec": float(dec), "is_star": True, "flux_g": flux,
                 "flux_r": flux, "flux_i": flux, "sersic_n": np.nan, "hlr_arcsec": np.nan,
                 "q": np.nan, "pa_deg": np.nan, "blend_group": k + 1, "sep_px": sep}
            )  # fmt: skip
    table = pd.DataFrame(rows)
    table.insert(0, "id", np.arange(1, len(table) + 1))
    return table
