"""Calexp-like exposures built from the simulator's truth (single-frame processing stand-in).

``true_image`` (sky + objects, e⁻) minus the true sky plane, plus cosmic rays and the
satellite trail of the truth tables (left in, for the coadd to reject), plus Gaussian noise
of the true variance, converted to nJy with the true zero point; true WCS and true PSF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

import lsstlite.data as lld
from lsstlite.sim import true_image, true_psf, true_wcs
from lsstlite.sim.artifacts import add_trail, deposit_cosmic_rays
from lsstlite.sim.observe import sky_level
from lsstlite.sim.survey import _load, _visit

READ_NOISE_E = 6.0


@dataclass
class SimCalexp:
    calexp: xr.Dataset
    #: Artifact (cosmic rays + trail) contribution, nJy, same shape as the image.
    artifacts: np.ndarray
    #: Image without artifacts and without noise (nJy): the truth of this calexp.
    truth: np.ndarray
    #: nJy per electron.
    scale: float

    def variant(self, kind: str) -> xr.Dataset:
        """``"clean"``: same noise, artifacts removed; ``"noiseless"``: the truth image."""
        ds = self.calexp.copy()
        if kind == "clean":
            ds["image"] = ds["image"] - self.artifacts.astype(np.float32)
            ds["variance"] = ds["variance"] - (self.artifacts * self.scale).astype(np.float32)
        elif kind == "noiseless":
            ds["image"] = (("y", "x"), self.truth.astype(np.float32), ds["image"].attrs)
        else:
            raise ValueError(f"unknown variant {kind!r}")
        return ds


@cache
def _tables(outdir: str) -> dict[str, pd.DataFrame]:
    truth = Path(outdir) / "truth"
    return {
        n: pd.read_parquet(truth / f"{n}.parquet") for n in ("exposures", "cosmic_rays", "trails")
    }


def exposure_rows(outdir: str | Path, band: str | None = None) -> pd.DataFrame:
    rows = _tables(str(outdir))["exposures"]
    return rows if band is None else rows[rows["band"] == band]


def make_sim_calexp(
    outdir: str | Path,
    visit: int,
    detector: int,
    *,
    seed: int = 0,
    artifacts: bool = True,
    noise: bool = True,
) -> SimCalexp:
    """A calexp-like exposure of one (visit, detector) of a simulated survey."""
    outdir = str(outdir)
    tables = _tables(outdir)
    rows = tables["exposures"]
    row = rows[(rows["visit"] == visit) & (rows["detector"] == detector)].iloc[0]
    electrons = true_image(outdir, visit, detector)
    state = _load(outdir)
    ny, nx = electrons.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    sky = sky_level(_visit(state, visit, detector), state.camera, detector, xx, yy)
    art = np.zeros_like(electrons)
    if artifacts:
        crs = tables["cosmic_rays"]
        deposit_cosmic_rays(art, crs[(crs["exposure"] == visit) & (crs["detector"] == detector)])
        trails = tables["trails"]
        for t in trails[(trails["exposure"] == visit) & (trails["detector"] == detector)].to_dict(
            "records"
        ):
            add_trail(art, t)
    variance = np.clip(electrons + art, 0.0, None) + READ_NOISE_E**2
    rng = np.random.default_rng([seed, visit, detector])
    noisy = electrons + art - sky
    if noise:
        noisy = noisy + rng.normal(0.0, 1.0, electrons.shape) * np.sqrt(variance)
    scale = 10.0 ** (-0.4 * (float(row["zero_point"]) - lld.AB_NJY_ZERO_POINT))
    calexp = lld.make_exposure(
        (noisy * scale).astype(np.float32),
        variance=(variance * scale**2).astype(np.float32),
        wcs=true_wcs(outdir, visit, detector),
        psf=true_psf(outdir, visit, detector),
        photo_calib=lld.PhotoCalib(njy_per_count=1.0),
        units="nJy",
        visit_info={
            "instrument": "SimCam",
            "exposure": int(visit),
            "visit": int(visit),
            "detector": int(detector),
            "band": str(row["band"]),
            "physical_filter": str(row["physical_filter"]),
            "exptime": float(row["exptime"]),
            "mjd": float(row["mjd"]),
        },
    )
    return SimCalexp(calexp, art * scale, (electrons - sky) * scale, scale)


def objects(outdir: str | Path) -> pd.DataFrame:
    return pd.read_parquet(Path(outdir) / "truth" / "objects.parquet")


def psf_dict(outdir: str | Path, visit: int, detector: int) -> dict[str, Any]:
    rows = exposure_rows(outdir)
    row = rows[(rows["visit"] == visit) & (rows["detector"] == detector)].iloc[0]
    return dict(json.loads(row["psf_model"]))
