"""Coadds of the small simulated survey (band r), computed once per session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import xarray as xr

from lsstlite.data.skymap import PatchGeometry, SkyMap
from lsstlite.stages.coadd import coadd_exposures
from lsstlite.stages.skymap import make_discrete_skymap
from lsstlite.stages.warp import warp_exposure
from tests.stages._calexps import SimCalexp, exposure_rows, make_sim_calexp


@dataclass
class SimCoadds:
    sims: list[SimCalexp]
    skymap: SkyMap
    patch: PatchGeometry
    #: compare_warp coadd of the calexps with artifacts (computed)
    coadd: xr.Dataset
    #: mean coadds of the artifact-free calexps (same noise) and of the noiseless truth
    clean: xr.Dataset
    noiseless: xr.Dataset
    #: number of visits covering each pixel
    coverage: np.ndarray


@pytest.fixture(scope="session")
def sim_coadds(sim_small: Any) -> SimCoadds:
    out = sim_small.outdir
    sims = [
        make_sim_calexp(out, int(r.visit), int(r.detector))
        for r in exposure_rows(out, "r").itertuples()
    ]
    skymap = make_discrete_skymap(
        [s.calexp for s in sims], name="test", patch_inner=1300, patch_border=50
    )
    patch = skymap.tract(0).patch(0).geometry
    calexps = [s.calexp for s in sims]
    coadd = coadd_exposures(calexps, patch, method="compare_warp").compute()
    weights = coadd.attrs["coadd_inputs"]
    w = [row["weight"] for row in weights]
    clean = coadd_exposures([s.variant("clean") for s in sims], patch, method="mean", weights=w)
    noiseless = coadd_exposures(
        [s.variant("noiseless") for s in sims], patch, method="mean", weights=w
    )
    coverage = np.zeros(patch.shape, np.int32)
    for ds in calexps:
        warp = warp_exposure(ds, patch, kernel="bilinear")
        coverage += ((warp["mask"].values >> 8) & 1) == 0
    return SimCoadds(sims, skymap, patch, coadd, clean.compute(), noiseless.compute(), coverage)
