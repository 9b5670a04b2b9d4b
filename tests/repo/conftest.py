"""Fixtures for the repository tests: small synthetic exposures and repos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lsstlite.repo import Butler


def small_exposure(value: float = 1.0, shape: tuple[int, int] = (24, 32)) -> xr.Dataset:
    """A tiny exposure following the lsstlite.data model."""
    from lsstlite.data import make_exposure

    rng = np.random.default_rng(int(value * 1000) % 2**32)
    image = (rng.normal(size=shape) + value).astype(np.float32)
    return make_exposure(image, variance=np.ones(shape, np.float32), xy0=(5, 7))


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    Butler.create(path)
    return path


@pytest.fixture
def butler(repo_path: Path) -> Butler:
    return Butler(repo_path, run="demo")


@pytest.fixture
def grid_butler(repo_path: Path) -> Butler:
    """psf datasets for exposures 1..10 x detectors 0..3 with exposure records.

    Odd exposures are band r (filter r_01), even ones band g (g_01);
    day_obs is 20220525 for exposures <= 5 and 20220526 after; mjd = 59700 + exposure.
    """
    b = Butler(repo_path, run="grid")
    records = []
    for e in range(1, 11):
        band = "r" if e % 2 else "g"
        records.append(
            {
                "instrument": "SimCam",
                "exposure": e,
                "band": band,
                "physical_filter": f"{band}_01",
                "day_obs": 20220525 if e <= 5 else 20220526,
                "mjd": 59700.0 + e,
                "exptime": 30.0,
                "obs_type": "science",
            }
        )
        for d in range(4):
            b.put({"e": e, "d": d}, "psf", instrument="SimCam", exposure=e, detector=d)
    b.register_exposures(records)
    return b


GRID = [(e, d) for e in range(1, 11) for d in range(4)]


def grid_band(e: int) -> str:
    return "r" if e % 2 else "g"


def grid_day_obs(e: int) -> int:
    return 20220525 if e <= 5 else 20220526
