"""Orchestration: write a whole simulated survey, and recompute its truth on demand.

Determinism: every random draw comes from a ``SeedSequence`` keyed by the survey seed
and a stream number — catalog ``[seed, 0]``, visit plan ``[seed, 1]``, reference catalog
``[seed, 5]``, and per (exposure, detector) ``[seed, exposure, detector, stream]`` with
stream 1 (photon and read noise), 2 (cosmic rays) and 3 (bias offsets and drifts). Files can therefore
be written by any number of processes, in any order, and still be byte-identical.

Resumption: raws and truth files are written to a temporary name and renamed, so a file
that exists is complete. ``simulation_started.json`` names the preset and seed being
written; ``simulation.json`` is written last and marks a complete simulation.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from lsstlite.data.psf import VaryingMoffatPsf
from lsstlite.instruments.simcam import SimCam
from lsstlite.sim import _kernels
from lsstlite.sim.artifacts import add_trail, cosmic_rays, deposit_cosmic_rays, trail_for_detector
from lsstlite.sim.calibs import dark_current_map, flat_field, fringe_pattern
from lsstlite.sim.config import PRESETS, SurveyConfig
from lsstlite.sim.observe import (
    CalibExposure,
    Visit,
    calib_exposures,
    header_wcs,
    make_visits,
    true_psf_for,
    true_wcs_for,
)
from lsstlite.sim.raw import bias_levels, electrons_to_adu, primary_header, raw_path, write_raw
from lsstlite.sim.refcat import make_refcat
from lsstlite.sim.render import apply_brighter_fatter, detector_objects, render_true_image
from lsstlite.sim.sky import make_catalog
from lsstlite.sim.truth import (
    calib_exposures_table,
    defects_table,
    exposures_table,
    trails_table,
    write_calib_truth,
    write_parquet,
)

__all__ = ["SurveySummary", "simulate_survey", "true_image", "true_psf", "true_wcs"]

MARKER = "simulation.json"
STARTED = "simulation_started.json"
#: What simulate_survey writes (and what ``overwrite=True`` removes).
_OWNED = ("raw", "truth", "refcat", MARKER, STARTED)
NOISE_STREAM = 1


@dataclass(frozen=True)
class SurveySummary:
    """What :func:`simulate_survey` wrote, and how long it took."""

    outdir: Path
    preset: str
    seed: int
    n_science_raws: int
    n_calib_raws: int
    n_objects: int
    n_refcat: int
    raw_megapixels: float
    raw_bytes: int
    elapsed_s: float
    timings: dict[str, float] = field(default_factory=dict)
    resumed: bool = False

    @property
    def raw_dir(self) -> Path:
        return self.outdir / "raw"

    @property
    def truth_dir(self) -> Path:
        return self.outdir / "truth"

    @property
    def refcat_path(self) -> Path:
        return self.outdir / "refcat" / "refcat.parquet"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["outdir"] = str(self.outdir)
        return d


@dataclass
class _State:
    """Everything a worker needs to render any (exposure, detector)."""

    config: SurveyConfig
    seed: int
    catalog: pd.DataFrame
    visits: dict[int, Visit]
    calibs: dict[int, CalibExposure]

    @property
    def camera(self) -> SimCam:
        return SimCam(self.config.geometry)


_STATE: _State | None = None


def _init_worker(state: _State) -> None:
    global _STATE
    _STATE = state


def _build_state(config: SurveyConfig, seed: int) -> _State:
    return _State(
        config=config,
        seed=seed,
        catalog=make_catalog(config, seed),
        visits={v.exposure: v for v in make_visits(config, seed)},
        calibs={c.exposure: c for c in calib_exposures(config)},
    )


def _config_from_dict(data: dict[str, Any]) -> SurveyConfig:
    fields = {f.name: f for f in dataclasses.fields(SurveyConfig)}
    kwargs: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields
    }
    return SurveyConfig(**kwargs)


# -- per-file work (runs in worker processes) -----------------------------------------


def _science_electrons(state: _State, visit: Visit, detector: int) -> np.ndarray:
    """Expected electrons (after flat, fringes, trail, brighter-fatter, dark)."""
    camera = state.camera
    geom = state.config.geometry
    objects = detector_objects(state.catalog, visit, camera, detector)
    image = render_true_image(state.catalog, visit, camera, detector, objects)
    if visit.fringe_e > 0.0:
        image += visit.fringe_e * fringe_pattern(geom, detector)
    trail = trail_for_detector(visit, camera, detector)
    if trail is not None:
        add_trail(image, trail)
    image *= flat_field(geom, detector, visit.band)
    apply_brighter_fatter(
        image,
        objects[objects["is_star"]],
        true_psf_for(visit, camera, detector),
        camera.bf_kernel(),
    )
    image += dark_current_map(geom, detector) * visit.darktime
    return image


def _calib_electrons(state: _State, calib: CalibExposure, detector: int) -> np.ndarray:
    geom = state.config.geometry
    image = dark_current_map(geom, detector).astype(np.float64) * calib.darktime
    if calib.obs_type == "flat":
        image += calib.level_e * flat_field(geom, detector, calib.band)
    return image


def _write_one(task: tuple[int, int, str]) -> tuple[int, float]:
    """Render, read out and write one raw; returns (bytes, CPU seconds of this process)."""
    t0 = time.process_time()
    exposure, detector, outdir = task
    state = _STATE
    assert state is not None, "worker state not initialised"
    camera = state.camera
    config = state.config
    if exposure in state.visits:
        visit = state.visits[exposure]
        expected = _science_electrons(state, visit, detector)
        obs_type, darktime = "science", visit.darktime
    else:
        calib = state.calibs[exposure]
        expected = _calib_electrons(state, calib, detector)
        obs_type, darktime = calib.obs_type, calib.darktime
    rng = np.random.default_rng(
        np.random.SeedSequence([state.seed, exposure, detector, NOISE_STREAM])
    )
    electrons = rng.poisson(expected).astype(np.float64)
    deposit_cosmic_rays(
        electrons, cosmic_rays(config, state.seed, exposure, detector, darktime, camera)
    )
    full_well = np.empty(camera.geometry.det_nx)
    for amp in camera.amplifier_parameters(detector):
        full_well[amp.detector_section[2] : amp.detector_section[3]] = amp.full_well
    _kernels.bleed_columns(electrons, full_well)
    amps = electrons_to_adu(
        electrons, camera, detector, bias_levels(state.seed, exposure, detector, camera), rng
    )
    if obs_type == "science":
        header = primary_header(
            camera,
            detector,
            exposure=exposure,
            obs_type="science",
            physical_filter=visit.physical_filter,
            exptime=visit.exptime,
            darktime=visit.darktime,
            mjd=visit.mjd,
            ra=visit.boresight_ra
            + visit.pointing_error_arcsec[0] / 3600.0 / np.cos(np.radians(visit.boresight_dec)),
            dec=visit.boresight_dec + visit.pointing_error_arcsec[1] / 3600.0,
            rot_deg=visit.rot_deg + visit.rotation_error_deg,
            airmass=visit.airmass,
            object_name="SIMFIELD",
            wcs=header_wcs(visit, camera, detector),
        )
    else:
        header = primary_header(
            camera,
            detector,
            exposure=exposure,
            obs_type=obs_type,
            physical_filter=calib.physical_filter,
            exptime=calib.exptime,
            darktime=calib.darktime,
            mjd=calib.mjd,
            ra=config.ra_deg,
            dec=config.dec_deg,
            rot_deg=0.0,
            airmass=1.0,
            object_name={"flat": "domeflat"}.get(obs_type, obs_type),
            wcs=None,
        )
    n_bytes = write_raw(
        raw_path(outdir, obs_type, exposure, detector), header, amps, camera, detector
    )
    return n_bytes, time.process_time() - t0


def _write_calib_truth(task: tuple[int, int, str]) -> tuple[int, float]:
    t0 = time.process_time()
    _, detector, outdir = task
    assert _STATE is not None
    write_calib_truth(Path(outdir), _STATE.config, detector)
    return 0, time.process_time() - t0


def _dispatch(task: tuple[int, int, str]) -> tuple[int, float]:
    return _write_calib_truth(task) if task[0] < 0 else _write_one(task)


# -- the public API ---------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def simulate_survey(
    outdir: str | Path,
    *,
    preset: str = "small",
    seed: int = 1,
    overwrite: bool = False,
    n_workers: int | None = None,
) -> SurveySummary:
    """Simulate a survey: raw FITS (science and calibration), reference catalog and truth.

    Parameters
    ----------
    outdir
        Output directory (created). It must be empty, or hold a simulation with the same
        preset and seed (a complete one is returned at once, an interrupted one is
        resumed), unless ``overwrite``.
    preset
        A key of :data:`lsstlite.sim.PRESETS`: ``"small"``, ``"ci"`` or ``"full"``.
    seed
        Survey seed: same seed, same bytes.
    overwrite
        Delete a previous simulation's files (``raw/``, ``truth/``, ``refcat/`` and the
        marker files; nothing else) before writing.
    n_workers
        Processes writing raws (default 2; 1 runs in this process).

    Returns
    -------
    SurveySummary

    Raises
    ------
    FileExistsError
        If ``outdir`` holds something else and ``overwrite`` is false.
    KeyError
        If ``preset`` is unknown.
    """
    t_start = time.perf_counter()
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    config = PRESETS[preset]
    out = Path(outdir)
    ident = {"preset": preset, "seed": int(seed)}
    marker = _read_json(out / MARKER)
    started = _read_json(out / STARTED)
    resumed = False
    if out.exists() and any(out.iterdir()):
        same = marker is not None and {k: marker.get(k) for k in ident} == ident
        if same and not overwrite:
            assert marker is not None
            saved = dict(marker["summary"])
            saved.update(outdir=out, resumed=True, elapsed_s=time.perf_counter() - t_start)
            return SurveySummary(**saved)
        if overwrite:
            for name in _OWNED:
                p = out / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        elif marker is None and started is not None and {k: started.get(k) for k in ident} == ident:
            resumed = True
        else:
            what = (
                f"a simulation with preset={marker.get('preset')!r}, seed={marker.get('seed')}"
                if marker
                else "other files"
            )
            raise FileExistsError(
                f"output directory '{out}' is not empty (it holds {what}); choose an empty "
                f"directory or pass overwrite=True (lsstlite sim --overwrite) to replace a "
                f"previous simulation"
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / STARTED).write_text(json.dumps({**ident, "config": config.to_dict()}, sort_keys=True))
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    state = _build_state(config, seed)
    camera = state.camera
    timings["plan"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    visits = list(state.visits.values())
    truth = out / "truth"
    write_parquet(state.catalog, truth / "objects.parquet")
    write_parquet(exposures_table(config, visits, camera), truth / "exposures.parquet")
    write_parquet(
        calib_exposures_table(list(state.calibs.values())), truth / "calib_exposures.parquet"
    )
    write_parquet(trails_table(visits, camera), truth / "trails.parquet")
    write_parquet(defects_table(camera), truth / "defects.parquet")
    crs = []
    for exposure in sorted([*state.visits, *state.calibs]):
        darktime = (
            state.visits[exposure].darktime
            if exposure in state.visits
            else state.calibs[exposure].darktime
        )
        for det in camera.detectors:
            cr = cosmic_rays(config, seed, exposure, det, darktime, camera)
            cr.insert(0, "detector", np.int32(det))
            cr.insert(0, "exposure", np.int32(exposure))
            crs.append(cr)
    write_parquet(pd.concat(crs, ignore_index=True), truth / "cosmic_rays.parquet")
    levels = [
        {
            "exposure": exposure,
            "detector": det,
            "amp": amp,
            "mean_level_adu": float(row.mean()),
            "min_level_adu": float(row.min()),
            "max_level_adu": float(row.max()),
        }
        for exposure in sorted([*state.visits, *state.calibs])
        for det in camera.detectors
        for amp, row in enumerate(bias_levels(seed, exposure, det, camera))
    ]
    write_parquet(pd.DataFrame(levels), truth / "bias_levels.parquet")
    (truth / "camera.json").write_text(camera.constants_json)
    refcat = make_refcat(state.catalog, config, seed)
    write_parquet(refcat, out / "refcat" / "refcat.parquet")
    timings["truth_tables"] = time.perf_counter() - t0

    # Raws (and the per-detector true calibration frames) in parallel, grouped by detector
    # so each worker mostly reuses its cached flat and dark maps.
    t0 = time.perf_counter()
    tasks: list[tuple[int, int, str]] = [(-1, det, str(out)) for det in camera.detectors]
    n_science = n_calib = 0
    for det in camera.detectors:
        for exposure in sorted(state.calibs):
            c = state.calibs[exposure]
            n_calib += 1
            if not raw_path(out, c.obs_type, exposure, det).exists():
                tasks.append((exposure, det, str(out)))
        for exposure in sorted(state.visits):
            n_science += 1
            if not raw_path(out, "science", exposure, det).exists():
                tasks.append((exposure, det, str(out)))
    workers = 2 if n_workers is None else max(int(n_workers), 1)
    if workers == 1:
        _init_worker(state)
        results = [_dispatch(t) for t in tasks]
    else:
        # fork: workers inherit the imported modules and numba's compiled kernels.
        ctx = mp.get_context("fork")
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(state,)
        ) as pool:
            chunk = max(1, len(tasks) // (4 * workers))
            results = list(pool.map(_dispatch, tasks, chunksize=chunk))
    timings["raws"] = time.perf_counter() - t0
    timings["raws_cpu"] = float(sum(r[1] for r in results))

    g = camera.geometry
    n_raw = n_science + n_calib
    raw_bytes = sum(p.stat().st_size for p in (out / "raw").rglob("*.fits"))
    summary = SurveySummary(
        outdir=out,
        preset=preset,
        seed=int(seed),
        n_science_raws=n_science,
        n_calib_raws=n_calib,
        n_objects=len(state.catalog),
        n_refcat=len(refcat),
        raw_megapixels=n_raw * g.det_ny * g.raw_amp_width * g.n_amps / 1e6,
        raw_bytes=raw_bytes,
        elapsed_s=time.perf_counter() - t_start,
        timings=timings,
        resumed=resumed,
    )
    # Timings and the directory vary from run to run: keep them out of the file so that
    # every file of two runs with the same seed is byte-identical.
    saved = {**summary.to_dict(), "elapsed_s": 0.0, "timings": {}, "resumed": False}
    del saved["outdir"]
    record = {**ident, "config": config.to_dict(), "summary": saved}
    (out / MARKER).write_text(json.dumps(record, sort_keys=True, indent=1))
    return summary


@lru_cache(maxsize=2)
def _state_for(outdir: str, preset: str, seed: int, config_json: str) -> _State:
    return _build_state(_config_from_dict(json.loads(config_json)), seed)


def _load(outdir: str | Path | SurveySummary) -> _State:
    out = outdir.outdir if isinstance(outdir, SurveySummary) else Path(outdir)
    record = _read_json(out / MARKER) or _read_json(out / STARTED)
    if record is None:
        raise FileNotFoundError(f"'{out}' holds no lsstlite simulation (no {MARKER})")
    return _state_for(
        str(out.resolve()),
        record["preset"],
        int(record["seed"]),
        json.dumps(record["config"], sort_keys=True),
    )


def _visit(state: _State, exposure: int, detector: int) -> Visit:
    if exposure not in state.visits:
        raise KeyError(
            f"exposure {exposure} is not a science visit of this simulation; "
            f"visits: {sorted(state.visits)}"
        )
    if detector not in state.camera.detectors:
        raise KeyError(f"detector {detector} does not exist; detectors: {state.camera.detectors}")
    return state.visits[exposure]


def true_image(outdir: str | Path | SurveySummary, exposure: int, detector: int) -> np.ndarray:
    """The true electron image of a science exposure of one detector, recomputed.

    Sky + objects, before noise and before flat, fringes, trails, dark, bias, cosmic
    rays, brighter-fatter, nonlinearity and crosstalk; assembled, trimmed detector
    frame; electrons per pixel (float64, ``(det_ny, det_nx)``).
    """
    state = _load(outdir)
    visit = _visit(state, exposure, detector)
    return render_true_image(state.catalog, visit, state.camera, detector)


def true_psf(outdir: str | Path | SurveySummary, exposure: int, detector: int) -> VaryingMoffatPsf:
    """The PSF used to render (detector pixel coordinates)."""
    state = _load(outdir)
    return true_psf_for(_visit(state, exposure, detector), state.camera, detector)


def true_wcs(outdir: str | Path | SurveySummary, exposure: int, detector: int) -> WCS:
    """The exact TAN-SIP WCS used to render (0-based pixels of the assembled detector)."""
    state = _load(outdir)
    return true_wcs_for(_visit(state, exposure, detector), state.camera, detector)
