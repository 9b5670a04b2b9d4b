"""A Gaia-like reference catalog: the bright stars, with realistic errors.

Positional errors grow from ~0.03 mas at r = 15 to ~1.3 mas at r = 21
(``σ = 0.02 + 0.5 · 10^(0.4 (m − 20))`` mas per axis); flux errors from 0.2% to ~3%.
Positions and fluxes are scattered by their errors, so the catalog is a noisy
measurement of the truth, as a real one is. No proper motions: the catalog's epoch is
the survey's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lsstlite.sim.config import SurveyConfig
from lsstlite.sim.sky import njy_to_mag

__all__ = ["make_refcat"]

#: Child-seed stream of the reference catalog.
REFCAT_STREAM = 5


def make_refcat(catalog: pd.DataFrame, config: SurveyConfig, seed: int) -> pd.DataFrame:
    """Reference catalog of the stars brighter than ``config.refcat_mag_limit`` (r, or the
    first band if r is not simulated).

    Returns
    -------
    pandas.DataFrame
        ``id`` (truth id), ``ra``, ``dec`` (deg), ``ra_err``, ``dec_err`` (mas; ``ra_err``
        is along the great circle), and ``<band>_flux``, ``<band>_flux_err`` (nJy) for
        every survey band.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, REFCAT_STREAM]))
    ref_band = "r" if "r" in config.bands else config.bands[0]
    mag = njy_to_mag(catalog[f"flux_{ref_band}"].to_numpy())
    stars = catalog.loc[catalog["is_star"].to_numpy() & (mag < config.refcat_mag_limit)]
    mag = njy_to_mag(stars[f"flux_{ref_band}"].to_numpy())
    n = len(stars)
    pos_err = 0.02 + 0.5 * 10.0 ** (0.4 * (mag - 20.0))  # mas
    dec = stars["dec"].to_numpy()
    cos_dec = np.cos(np.radians(dec))
    out = pd.DataFrame(
        {
            "id": stars["id"].to_numpy(),
            "ra": stars["ra"].to_numpy() + rng.normal(0.0, 1.0, n) * pos_err / 3.6e6 / cos_dec,
            "dec": dec + rng.normal(0.0, 1.0, n) * pos_err / 3.6e6,
            "ra_err": pos_err,
            "dec_err": pos_err,
        }
    )
    for band in config.bands:
        flux = stars[f"flux_{band}"].to_numpy()
        rel = 0.002 + 0.01 * 10.0 ** (0.4 * (njy_to_mag(flux) - 20.0))
        out[f"{band}_flux"] = flux * (1.0 + rel * rng.normal(0.0, 1.0, n))
        out[f"{band}_flux_err"] = flux * rel
    return out.reset_index(drop=True)
