"""The sky: a star and galaxy catalog with realistic counts, colours, shapes and blends.

Positions are drawn uniformly in the tangent plane of the field centre over a square that
covers every dithered pointing, then de-projected (gnomonic). Magnitudes follow power-law
number counts ``dN/dm ∝ 10^(slope · m)`` (stars 0.15 dex/mag, galaxies 0.35 dex/mag, so
galaxies dominate beyond r ≈ 21); star colours follow a stellar locus in g−r; fluxes are
AB, in nJy (``m = 31.4 − 2.5 log10(f / nJy)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from lsstlite.instruments.simcam import GEOMETRIES, PIXEL_SCALE_ARCSEC
from lsstlite.sim.config import SurveyConfig

__all__ = ["mag_to_njy", "make_catalog", "njy_to_mag", "sky_half_width_deg"]

#: Nominal seeing used to place blended pairs (pairs are 1.5–4 × this FWHM apart).
NOMINAL_FWHM_ARCSEC = 0.8


def mag_to_njy(mag: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """AB magnitude → flux in nJy."""
    return np.asarray(10.0 ** (-0.4 * (np.asarray(mag) - 31.4)), dtype=np.float64)


def njy_to_mag(flux: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """Flux in nJy → AB magnitude."""
    return np.asarray(31.4 - 2.5 * np.log10(np.asarray(flux)), dtype=np.float64)


def sky_half_width_deg(config: SurveyConfig) -> float:
    """Half-side of the square (tangent plane, deg) holding the catalog."""
    g = GEOMETRIES[config.geometry]
    return (g.field_radius * PIXEL_SCALE_ARCSEC + config.dither_arcsec + 20.0) / 3600.0


def _power_law_mags(
    rng: np.random.Generator, n: int, lo: float, hi: float, slope: float
) -> NDArray[np.float64]:
    """Magnitudes in [lo, hi) with dN/dm ∝ 10^(slope m) (inverse CDF)."""
    u = rng.uniform(size=n)
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + u * (b - a)) / slope


def _deproject(
    ra0: float, dec0: float, xi: NDArray[np.float64], eta: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Gnomonic de-projection: tangent-plane (xi east, eta north; deg) → (ra, dec) deg."""
    a0, d0 = math.radians(ra0), math.radians(dec0)
    x, y = np.radians(xi), np.radians(eta)
    den = math.cos(d0) - y * math.sin(d0)
    ra = a0 + np.arctan2(x, den)
    dec = np.arctan2(math.sin(d0) + y * math.cos(d0), np.hypot(x, den))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _star_colours(rng: np.random.Generator, n: int) -> dict[str, NDArray[np.float64]]:
    """Offsets ``m_band - m_r`` along a stellar locus parametrised by g−r in [0.2, 1.5]."""
    gr = 0.2 + 1.3 * rng.beta(2.0, 3.0, size=n)
    ri = 0.38 * gr - 0.03 + 2.5 * np.maximum(gr - 1.3, 0.0) + rng.normal(0.0, 0.03, size=n)
    iz = 0.5 * ri + rng.normal(0.0, 0.02, size=n)
    return {"g": gr, "r": np.zeros(n), "i": -ri, "z": -ri - iz}


def _galaxy_colours(rng: np.random.Generator, n: int) -> dict[str, NDArray[np.float64]]:
    gr = rng.uniform(0.3, 1.1, size=n)
    ri = 0.3 * gr + rng.uniform(0.05, 0.25, size=n)
    iz = rng.uniform(0.05, 0.3, size=n)
    return {"g": gr, "r": np.zeros(n), "i": -ri, "z": -ri - iz}


@dataclass
class _Block:
    """Objects of one kind before assembly (tangent-plane positions in deg)."""

    xi: NDArray[np.float64]
    eta: NDArray[np.float64]
    mag_r: NDArray[np.float64]
    is_star: bool
    blend_group: NDArray[np.int64]


def _galaxy_shapes(
    rng: np.random.Generator, mag_r: NDArray[np.float64], config: SurveyConfig
) -> dict[str, NDArray[np.float64]]:
    n = mag_r.size
    is_dev = rng.uniform(size=n) < config.galaxy_fraction_dev
    lo, hi = config.galaxy_hlr_arcsec
    # Fainter galaxies are smaller: median 1.0″ at r = 18 down to 0.35″ at r = 25.
    median = 10.0 ** (np.log10(1.0) + (mag_r - 18.0) / 7.0 * np.log10(0.35))
    hlr = np.clip(median * 10.0 ** rng.normal(0.0, 0.18, size=n), lo, hi)
    q = np.where(is_dev, rng.uniform(0.5, 1.0, size=n), rng.uniform(0.2, 1.0, size=n))
    return {
        "sersic_n": np.where(is_dev, 4.0, 1.0),
        "hlr_arcsec": hlr,
        "q": q,
        "pa_deg": rng.uniform(0.0, 180.0, size=n),
    }


def make_catalog(config: SurveyConfig, seed: int) -> pd.DataFrame:
    """The true object catalog of a survey (deterministic in ``config`` and ``seed``).

    Returns
    -------
    pandas.DataFrame
        One row per object: ``id`` (int64, from 1), ``ra``, ``dec`` (deg), ``is_star``,
        ``flux_<band>`` (nJy) for every survey band, galaxy parameters ``sersic_n``,
        ``hlr_arcsec`` (Sérsic r_e), ``q`` (axis ratio), ``pa_deg`` (major axis, east of
        north) — NaN for stars — and ``blend_group`` (0: not in an injected pair; else
        the id shared by the members of one close pair).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    half = sky_half_width_deg(config)
    area = (2.0 * half) ** 2
    blocks: list[_Block] = []

    def uniform_positions(n: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return rng.uniform(-half, half, size=n), rng.uniform(-half, half, size=n)

    # Field stars.
    n_star = int(rng.poisson(config.star_density_deg2 * area))
    xi, eta = uniform_positions(n_star)
    mags = _power_law_mags(rng, n_star, *config.star_mag_range, config.star_count_slope)
    blocks.append(_Block(xi, eta, mags, True, np.zeros(n_star, np.int64)))

    # Field galaxies: dN/dm = dndm21 · 10^(slope (m - 21)) integrated over the range.
    lo, hi = config.galaxy_mag_range
    s = config.galaxy_count_slope
    n_gal_expected = config.galaxy_dndm_at_21 * (10 ** (s * (hi - 21)) - 10 ** (s * (lo - 21)))
    n_gal = int(rng.poisson(n_gal_expected / (s * math.log(10.0)) * area))
    xi, eta = uniform_positions(n_gal)
    mags = _power_law_mags(rng, n_gal, lo, hi, s)
    blocks.append(_Block(xi, eta, mags, False, np.zeros(n_gal, np.int64)))

    # Injected close pairs: primary + companion 1.5-4 FWHM away, sharing a blend_group.
    group = 1
    for kind, density in (
        ("ss", config.n_star_pairs_deg2),
        ("sg", config.n_star_galaxy_pairs_deg2),
    ):
        n_pair = int(rng.poisson(density * area))
        xi, eta = uniform_positions(n_pair)
        sep = rng.uniform(*config.pair_separation_fwhm, size=n_pair) * NOMINAL_FWHM_ARCSEC / 3600
        angle = rng.uniform(0.0, 2.0 * math.pi, size=n_pair)
        # xi is a tangent-plane coordinate (already "× cos dec"), so offsets add directly.
        xi2, eta2 = xi + sep * np.cos(angle), eta + sep * np.sin(angle)
        groups = np.arange(group, group + n_pair, dtype=np.int64)
        group += n_pair
        m1 = rng.uniform(17.5, 21.5, size=n_pair)
        m2 = m1 + rng.uniform(0.0, 2.0, size=n_pair)
        blocks.append(_Block(xi, eta, m1, kind == "ss", groups))
        blocks.append(_Block(xi2, eta2, m2, True, groups))

    columns: dict[str, list[NDArray[Any]]] = {}
    all_bands = ("g", "r", "i", "z")
    for block in blocks:
        n = block.xi.size
        ra, dec = _deproject(config.ra_deg, config.dec_deg, block.xi, block.eta)
        colours = _star_colours(rng, n) if block.is_star else _galaxy_colours(rng, n)
        nan = np.full(n, np.nan)
        shapes = (
            {"sersic_n": nan, "hlr_arcsec": nan, "q": nan, "pa_deg": nan}
            if block.is_star
            else _galaxy_shapes(rng, block.mag_r, config)
        )
        if not block.is_star and np.any(block.blend_group > 0):
            # Galaxies in star-galaxy pairs are compact (0.2-0.8″) so the pair stays a blend.
            shapes["hlr_arcsec"] = np.minimum(shapes["hlr_arcsec"], 0.8)
        values: dict[str, NDArray[Any]] = {
            "ra": ra,
            "dec": dec,
            "is_star": np.full(n, block.is_star),
            **{f"flux_{b}": mag_to_njy(block.mag_r + colours[b]) for b in all_bands},
            **shapes,
            "blend_group": block.blend_group,
        }
        for key, val in values.items():
            columns.setdefault(key, []).append(val)
    table = pd.DataFrame({k: np.concatenate(v) for k, v in columns.items()})
    table = table[
        [
            "ra",
            "dec",
            "is_star",
            *(f"flux_{b}" for b in config.bands),
            "sersic_n",
            "hlr_arcsec",
            "q",
            "pa_deg",
            "blend_group",
        ]
    ]
    table.insert(0, "id", np.arange(1, len(table) + 1, dtype=np.int64))
    return table.reset_index(drop=True)
