"""Post-ISR-like exposures built from the simulator's truth (stand-in for the ISR output).

``true_image`` (sky + objects, electrons, before noise) plus the truth cosmic rays and
satellite trails, Poisson and per-amplifier read noise; variance = image + read noise²;
the raw header's (1–2″ off) WCS and visit info. Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

import lsstlite.data as lld
from lsstlite.instruments import get_instrument
from lsstlite.sim import true_image
from lsstlite.sim.artifacts import add_trail
from lsstlite.sim.raw import raw_path

__all__ = ["Processed", "cosmic_rays", "post_isr_exposure", "process_all", "truth_tables"]


@lru_cache(maxsize=8)
def truth_tables(outdir: str) -> dict[str, pd.DataFrame]:
    """The truth Parquet tables of a simulation, by name (``objects``, ``exposures``, ...)."""
    truth = Path(outdir) / "truth"
    names = ("objects", "exposures", "cosmic_rays", "trails")
    return {n: pd.read_parquet(truth / f"{n}.parquet") for n in names}


def cosmic_rays(outdir: str | Path, exposure: int, detector: int) -> pd.DataFrame:
    """Truth cosmic-ray pixels of one (exposure, detector)."""
    crs = truth_tables(str(outdir))["cosmic_rays"]
    return crs[(crs["exposure"] == exposure) & (crs["detector"] == detector)]


def post_isr_exposure(
    outdir: str | Path,
    exposure: int,
    detector: int,
    *,
    seed: int = 0,
    with_artifacts: bool = True,
    true: np.ndarray | None = None,
) -> xr.Dataset:
    """A realistic post-ISR exposure (electrons) of a simulated science visit.

    Parameters
    ----------
    outdir
        Simulation directory.
    exposure, detector
        What to build.
    seed
        Noise seed (combined with exposure and detector).
    with_artifacts
        Add the truth cosmic rays and trails.
    true
        The noise-free image if already computed (``lsstlite.sim.true_image``).
    """
    outdir = Path(outdir)
    path = raw_path(outdir, "science", exposure, detector)
    # The camera of the simulation's geometry (the registry's default is the full one).
    cam = type(get_instrument("SimCam")).from_header(_primary(path))
    raw = cam.read_raw(path)
    expected = np.array(true_image(outdir, exposure, detector) if true is None else true)
    if with_artifacts:
        crs = cosmic_rays(outdir, exposure, detector)
        np.add.at(expected, (crs["y"].to_numpy(), crs["x"].to_numpy()), crs["electrons"].to_numpy())
        trails = truth_tables(str(outdir))["trails"]
        for row in trails[
            (trails["exposure"] == exposure) & (trails["detector"] == detector)
        ].itertuples():
            add_trail(
                expected,
                {k: float(getattr(row, k)) for k in ("x0", "y0", "x1", "y1", "fwhm_px", "peak_e")},
            )
    rng = np.random.default_rng([seed, exposure, detector])
    image = rng.poisson(np.clip(expected, 0, None)).astype(np.float64)
    read_noise = np.empty_like(image)
    for amp in cam.amplifier_parameters(detector):
        y0, y1, x0, x1 = amp.detector_section
        read_noise[y0:y1, x0:x1] = amp.read_noise
    image += rng.normal(0.0, 1.0, image.shape) * read_noise
    variance = np.clip(image, 0, None) + read_noise**2
    vi = {k: v for k, v in raw.attrs["visit_info"].items() if k in lld.VisitInfo.model_fields}
    return lld.make_exposure(
        image.astype(np.float32),
        variance=variance.astype(np.float32),
        wcs=raw.attrs["wcs"],
        visit_info=vi,
        units="electron",
    )


def _primary(path: Path) -> dict[str, object]:
    from astropy.io import fits

    return dict(fits.getheader(path, 0))


@dataclass
class Processed:
    """One detector through the single-frame stages, with its truth."""

    visit: int
    detector: int
    post_isr: xr.Dataset
    characterized: Any
    calibrated: Any
    truth: pd.Series


@lru_cache(maxsize=2)
def process_all(outdir: str) -> dict[tuple[int, int], Processed]:
    """Characterise and calibrate every science (visit, detector) of a simulation, once per
    test session (the post-ISR stand-in, the default configs, the truth refcat)."""
    from lsstlite.stages.calibrate import calibrate_exposure
    from lsstlite.stages.characterize import characterize_exposure

    tables = truth_tables(outdir)
    refcat = pd.read_parquet(Path(outdir) / "refcat" / "refcat.parquet")
    out: dict[tuple[int, int], Processed] = {}
    for row in tables["exposures"].itertuples():
        visit, detector = int(row.visit), int(row.detector)
        exposure = post_isr_exposure(outdir, visit, detector)
        char = characterize_exposure(exposure)
        cal = calibrate_exposure(char.exposure, char.sources, refcat)
        out[(visit, detector)] = Processed(
            visit, detector, exposure, char, cal, tables["exposures"].iloc[row.Index]
        )
    return out
