"""Helpers for the ISR tests: raws, true calibrations and residual statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.io import fits
from scipy import ndimage

import lsstlite.data as lld
from lsstlite.sim.raw import raw_path


def raw_file(sim: Any, exposure: int, detector: int) -> Path:
    return raw_path(Path(sim.outdir), "science", exposure, detector)


def true_calibs(sim: Any, detector: int, band: str) -> dict[str, Any]:
    """The simulator's true calibrations as IsrTask inputs (fringe: zero-mean pattern)."""
    cdir = Path(sim.outdir) / "truth" / "calibs"

    def exp(name: str, ext: str | int = 1) -> xr.Dataset:
        return lld.make_exposure(fits.getdata(cdir / f"{name}_{detector:03d}.fits", ext))

    defects = pd.read_parquet(Path(sim.outdir) / "truth" / "defects.parquet")
    out = {
        "bias": exp("bias", "ADU"),
        "dark": exp("dark"),
        "flat": exp(f"flat_{band}"),
        "defects": defects[defects["detector"] == detector].reset_index(drop=True),
    }
    if band == "i":
        out["fringe"] = exp("fringe")
    return out


def clean_sky(
    sim: Any, exposure: int, detector: int, result: xr.Dataset, truth: np.ndarray
) -> np.ndarray:
    """Pixels fit for noise statistics: unmasked, away from cosmic rays and trails, and
    sky-dominated (selected on the truth, so the selection is unbiased)."""
    crs = pd.read_parquet(Path(sim.outdir) / "truth" / "cosmic_rays.parquet")
    crs = crs[(crs["exposure"] == exposure) & (crs["detector"] == detector)]
    hit = np.zeros(truth.shape, bool)
    hit[crs["y"], crs["x"]] = True
    hit = ndimage.binary_dilation(hit, iterations=2)
    bright = ndimage.binary_dilation(truth > np.percentile(truth, 50) * 1.2, iterations=3)
    return (result["mask"].values == 0) & ~hit & ~bright


@pytest.fixture(scope="session")
def sim_outdir(sim_small: Any) -> Path:
    return Path(sim_small.outdir)
