"""Shared fixtures: paths to real data and small synthetic exposures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import lsstlite.data as lld

ROOT = Path(__file__).resolve().parents[1]


def _real_data_candidates() -> list[Path]:
    """Where the real test data may be (never copied into the project): $LSSTLITE_REAL_DATA;
    ``../shared/data/real`` beside this checkout; the same beside the checkout this one was
    cloned from (a fresh clone in a temporary directory, as CI makes)."""
    import os
    import subprocess

    out = []
    if os.environ.get("LSSTLITE_REAL_DATA"):
        out.append(Path(os.environ["LSSTLITE_REAL_DATA"]))
    out.append(ROOT.parent / "shared" / "data" / "real")
    try:
        origin = subprocess.run(
            ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and "://" not in origin and Path(origin).is_dir():
        out.append(Path(origin).resolve().parent / "shared" / "data" / "real")
    return out


@pytest.fixture(scope="session")
def real_data() -> Path:
    candidates = _real_data_candidates()
    for path in candidates:
        if path.is_dir():
            return path
    pytest.skip(
        "real test data not found (looked in "
        + ", ".join(str(p) for p in candidates)
        + "); set LSSTLITE_REAL_DATA to the shared data/real directory"
    )


def synthetic_exposure(
    shape: tuple[int, int] = (300, 200), *, seed: int = 1, xy0: tuple[int, int] = (10, 20)
) -> xr.Dataset:
    """A small exposure with every kind of metadata, for round-trip tests."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 5.0, size=shape).astype(np.float32)
    mask = rng.integers(0, 2**15, size=shape).astype(np.int32)
    wcs = lld.make_tan_wcs(150.0, 2.0, (100.0, 150.0), 0.2, rotation_deg=10.0)
    return lld.make_exposure(
        image,
        mask=mask,
        variance=np.abs(image) / 1.7,
        wcs=wcs,
        visit_info={
            "instrument": "SimCam",
            "exposure": 3,
            "visit": 3,
            "detector": 1,
            "band": "r",
            "physical_filter": "SIM-r",
            "exptime": 30.0,
            "mjd": 60000.5,
            "airmass": 1.2,
            "boresight_ra": 150.0,
            "boresight_dec": 2.0,
            "rot_angle": 0.1,
        },
        psf=lld.MoffatPsf(fwhm=4.0, beta=3.0, e1=0.02, e2=-0.01),
        photo_calib=lld.PhotoCalib.from_zero_point(28.0, 0.002),
        xy0=xy0,
    )


@pytest.fixture
def exposure() -> xr.Dataset:
    return synthetic_exposure()


@pytest.fixture(scope="session")
def sim_small(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The ``small`` simulated survey (seed 1), generated once per test session."""
    from lsstlite.sim import simulate_survey

    return simulate_survey(
        tmp_path_factory.getbasetemp() / "sim_small", preset="small", seed=1, n_workers=2
    )


@pytest.fixture(scope="session")
def small_dir(sim_small: Any) -> Path:
    """Directory of the small simulated survey (raw/, refcat/, truth/)."""
    return Path(sim_small.outdir)


@pytest.fixture(scope="session")
def sim_repo(sim_small: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A repository with the small survey's raws (``SimCam/raw/all``, direct) and its
    reference catalog (``refcats``, name ``sim``). Shared: tests write only into their own runs."""
    from lsstlite.repo import Butler, ingest_raws, ingest_refcat

    root = str(tmp_path_factory.mktemp("sim_repo") / "repo")
    butler = Butler.create(root)
    report = ingest_raws(butler, Path(sim_small.outdir) / "raw", transfer="direct")
    assert not report.failed, report
    ingest_refcat(butler, Path(sim_small.outdir) / "refcat" / "refcat.parquet", name="sim")
    return root


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo, run once on the small survey (seed 3, 2 worker processes): its
    ``DemoResult``. The demo test, the notebooks and the SLURM notebook resume from it."""
    from lsstlite.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("demo") / "demo", preset="small", seed=3, n_workers=2)
