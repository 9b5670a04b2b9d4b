"""Master-calibration tasks: bias, dark, flat (focal-plane normalised), defects, fringe.

One run builds everything (each product is a regular input of the next), then one
certification makes them calibrations::

    lsstlite run REPO -p calibs.yaml -i SimCam/raw/all -o SimCam/calib/build -j 2
    lsstlite certify REPO --input-run <the run> --collection SimCam/calib

Products are matched to their consumers by the standard join: a master bias (no
``exposure`` dimension, so no implied filter) serves the flats of every filter.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import Field

from lsstlite.instruments import instrument_for_header
from lsstlite.pipe import Config, Input, Output, Task, TaskResult
from lsstlite.stages.calibs import ops
from lsstlite.stages.isr import ops as isr_ops
from lsstlite.stages.isr.task import read_raw

__all__ = [
    "BiasTask",
    "CalibConfig",
    "DarkTask",
    "DefectsTask",
    "FlatNormTask",
    "FlatTask",
    "FringeConfig",
    "FringeTask",
]

#: One raw read at a time: the reader swaps process-wide warning filters (not thread-safe).
_READ_LOCK = threading.Lock()

RAW_DIMS = ("instrument", "exposure", "detector")
DET_CAL = ("instrument", "detector")
FILT_CAL = ("instrument", "detector", "physical_filter")


class CalibConfig(Config):
    """Common settings of the combination tasks."""

    n_sigma: float = Field(5.0, gt=0, description="rejection threshold (σ of each pixel)")
    overscan_mode: str = "median_per_row"
    chunk_rows: int = Field(isr_ops.DEFAULT_CHUNK_ROWS, ge=16)


def _isr(
    path: str | Path,
    config: CalibConfig,
    *,
    bias: xr.Dataset | None = None,
    dark: xr.Dataset | None = None,
) -> xr.Dataset:
    """Overscan, crosstalk, assembly, bias, linearity and dark of a calibration raw (e⁻).

    Crosstalk and linearity matter for flats: 20 ke⁻ flats leak ~0.1% between amplifiers
    and are ~0.4% nonlinear.
    """
    with _READ_LOCK:
        raw = read_raw(path, chunk_rows=config.chunk_rows)
    camera = instrument_for_header(raw.attrs.get("header", {}))
    det = int(raw.attrs["visit_info"]["detector"])
    levels = isr_ops.overscan_levels(raw, mode=config.overscan_mode)
    return isr_ops.isr_chain(
        raw,
        overscan=levels,
        bias=bias,
        dark=dark,
        chunk_rows=config.chunk_rows,
        crosstalk=getattr(camera, "crosstalk_matrix", lambda d: None)(det),
        linearity=getattr(camera, "linearity", lambda d: None)(det),
    )


def _in_memory(cal: xr.Dataset, chunk_rows: int) -> xr.Dataset:
    """A calibration with its image read once (float32, in the ISR's row chunks).

    Every raw's ISR graph would otherwise read and decompress the image from the
    repository again (~0.2 s of each raw of a flat or defects quantum).
    """
    out = cal.copy()
    out["image"] = cal["image"].astype(np.float32).chunk({"y": chunk_rows, "x": -1}).persist()
    return out


def _to_adu(exp: xr.Dataset) -> xr.Dataset:
    """Electrons → ADU per amplifier (a master bias is kept in ADU, subtracted before gain)."""
    amps = exp.attrs["amplifiers"]
    gain = isr_ops._column_values(amps, exp.sizes["x"], [a["gain"] for a in amps]).astype(
        np.float32
    )
    out = exp.copy()
    out["image"] = exp["image"] / gain[None, :]
    out["variance"] = exp["variance"] / (gain * gain)[None, :]
    out.attrs["units"] = "adu"
    return out


class _CalibTask(Task):
    """Base of the master-calibration tasks.

    The standard join matches each input on the dimensions it shares with the task, and
    groups by implied values (``physical_filter``) only inputs that have an ``exposure``
    dimension: the flats of a ``physical_filter`` quantum are that filter's flat raws,
    while a master bias (no ``exposure``) serves every filter.
    """


def _finish(exp: xr.Dataset, raws: list[xr.Dataset], kind: str) -> xr.Dataset:
    exp.attrs["calib_type"] = kind
    exp.attrs["calib_for"] = calib_for(raws, kind)
    exp.attrs["inputs"] = [r.attrs.get("filename") for r in raws]
    exp.attrs.pop("amplifiers", None)
    return exp


def calib_for(exposures: list[xr.Dataset], kind: str) -> dict[str, Any]:
    """What a calibration made from ``exposures`` is for: their instrument and detector,
    and for a flat or fringe frame their filter (``attrs["calib_for"]``, which
    :class:`~lsstlite.stages.isr.IsrTask` checks against each raw).

    Raises
    ------
    ValueError
        If the exposures disagree on one of those, naming the values and the files.
    """
    keys = ["instrument", "detector"] + ["physical_filter"] * (kind in ("flat", "fringe"))
    out: dict[str, Any] = {}
    for key in keys:
        values = {
            (e.attrs.get("visit_info") or {}).get(key): e.attrs.get("filename") for e in exposures
        }
        values.pop(None, None)
        if len(values) > 1:
            raise ValueError(
                f"the {kind} inputs are of different {key}s: "
                + ", ".join(f"{v!r} ({f})" for v, f in values.items())
            )
        if values:
            out[key] = next(iter(values))
    return out


class BiasTask(_CalibTask):
    """Master bias (ADU, overscan removed): clipped mean of the bias raws of a detector."""

    ConfigClass = CalibConfig
    dimensions = DET_CAL
    inputs = {
        "raws": Input(
            "raw", RAW_DIMS, storage_class="Raw", multiple=True, where="exposure.obs_type = 'bias'"
        )
    }
    outputs = {"bias": Output("bias", DET_CAL, doc="master bias (ADU)")}

    def run(self, raws: list[str]) -> TaskResult:
        c = self.config
        assert isinstance(c, CalibConfig)
        exps = [_isr(p, c) for p in raws]
        master = ops.combine_exposures(exps, n_sigma=c.n_sigma)
        master.attrs["amplifiers"] = exps[0].attrs["amplifiers"]
        return TaskResult(bias=_finish(_to_adu(master), exps, "bias"))


class DarkTask(_CalibTask):
    """Master dark (e⁻/s): bias-subtracted darks divided by their dark time, clipped mean."""

    ConfigClass = CalibConfig
    dimensions = DET_CAL
    inputs = {
        "raws": Input(
            "raw", RAW_DIMS, storage_class="Raw", multiple=True, where="exposure.obs_type = 'dark'"
        ),
        "bias": Input("bias", DET_CAL),
    }
    outputs = {"dark": Output("dark", DET_CAL, doc="master dark (e⁻/s)")}

    def run(self, raws: list[str], bias: xr.Dataset) -> TaskResult:
        c = self.config
        assert isinstance(c, CalibConfig)
        bias = _in_memory(bias, c.chunk_rows)
        exps = [_isr(p, c, bias=bias) for p in raws]
        times = [isr_ops._dark_time(e, None) for e in exps]
        master = ops.combine_exposures(exps, scales=times, n_sigma=c.n_sigma)
        master.attrs["units"] = "electron"
        return TaskResult(dark=_finish(master, exps, "dark"))


class FlatNormTask(_CalibTask):
    """Lamp level of each flat exposure: the mean over detectors of each detector's mean.

    The master flats divided by these levels average to one over the focal plane (the
    convention of the true flats), not per detector.
    """

    ConfigClass = CalibConfig
    dimensions = ("instrument", "physical_filter")
    inputs = {
        "raws": Input(
            "raw", RAW_DIMS, storage_class="Raw", multiple=True, where="exposure.obs_type = 'flat'"
        )
    }
    outputs = {
        "levels": Output(
            "flat_norm",
            ("instrument", "physical_filter"),
            storage_class="Json",
            doc="flat lamp level per exposure (e⁻)",
        )
    }

    def run(self, raws: list[str]) -> TaskResult:
        c = self.config
        assert isinstance(c, CalibConfig)

        def level(path: str) -> tuple[str, float]:
            exp = _isr(path, c)
            value = float(ops.robust_mean_level(exp).compute(scheduler="sync"))
            return str(exp.attrs["visit_info"]["exposure"]), value

        # Two raws at a time, each computed in its own thread: one raw's reading overlaps
        # the other's ISR and level kernels (nogil); the reading itself is serialised.
        per_exposure: dict[str, list[float]] = {}
        with ThreadPoolExecutor(2) as pool:
            for key, value in pool.map(level, raws):
                per_exposure.setdefault(key, []).append(value)
        n_det = {len(v) for v in per_exposure.values()}
        if len(n_det) != 1:
            raise ValueError(f"flat exposures cover different numbers of detectors: {per_exposure}")
        return TaskResult(
            levels={
                "levels": {k: float(np.mean(v)) for k, v in per_exposure.items()},
                "per_detector": per_exposure,
            }
        )


class FlatTask(_CalibTask):
    """Master flat: bias- and dark-corrected flats over their lamp levels, clipped mean."""

    ConfigClass = CalibConfig
    dimensions = FILT_CAL
    inputs = {
        "raws": Input(
            "raw", RAW_DIMS, storage_class="Raw", multiple=True, where="exposure.obs_type = 'flat'"
        ),
        "levels": Input("flat_norm", ("instrument", "physical_filter"), storage_class="Json"),
        "bias": Input("bias", DET_CAL),
        "dark": Input("dark", DET_CAL),
    }
    outputs = {"flat": Output("flat", FILT_CAL, doc="master flat (unit focal-plane mean)")}

    def run(
        self, raws: list[str], levels: dict[str, Any], bias: xr.Dataset, dark: xr.Dataset
    ) -> TaskResult:
        c = self.config
        assert isinstance(c, CalibConfig)
        bias, dark = _in_memory(bias, c.chunk_rows), _in_memory(dark, c.chunk_rows)
        exps = [_isr(p, c, bias=bias, dark=dark) for p in raws]
        scales = []
        for e in exps:
            key = str(e.attrs["visit_info"]["exposure"])
            if key not in levels["levels"]:
                raise KeyError(
                    f"flat_norm has no level for exposure {key} ({e.attrs.get('filename')})"
                )
            scales.append(levels["levels"][key])
        master = ops.combine_exposures(exps, scales=scales, n_sigma=c.n_sigma)
        master.attrs["units"] = "electron"
        return TaskResult(flat=_finish(master, exps, "flat"))


class DefectsConfig(Config):
    """Thresholds of :func:`lsstlite.stages.calibs.ops.find_defects`."""

    hot_rate: float = Field(0.2, gt=0, description="e⁻/s above which a pixel is hot")
    dead_fraction: float = Field(0.5, gt=0, lt=1, description="relative flat response of dead px")
    overscan_mode: str = "median_per_row"
    n_sigma: float = 5.0
    chunk_rows: int = Field(isr_ops.DEFAULT_CHUNK_ROWS, ge=16)


class DefectsTask(_CalibTask):
    """Defects (boxes) of a detector: hot pixels from the master dark, dead ones from flats."""

    ConfigClass = DefectsConfig
    dimensions = DET_CAL
    inputs = {
        "flats": Input(
            "raw", RAW_DIMS, storage_class="Raw", multiple=True, where="exposure.obs_type = 'flat'"
        ),
        "bias": Input("bias", DET_CAL),
        "dark": Input("dark", DET_CAL),
    }
    outputs = {"defects": Output("defects", DET_CAL, storage_class="Table", doc="defect boxes")}

    def run(self, flats: list[str], bias: xr.Dataset, dark: xr.Dataset) -> TaskResult:
        c = self.config
        assert isinstance(c, DefectsConfig)
        cc = CalibConfig(n_sigma=c.n_sigma, overscan_mode=c.overscan_mode, chunk_rows=c.chunk_rows)
        bias, dark = _in_memory(bias, c.chunk_rows), _in_memory(dark, c.chunk_rows)
        exps = [_isr(p, cc, bias=bias, dark=dark) for p in flats]
        table = ops.find_defects(dark, exps, hot_rate=c.hot_rate, dead_fraction=c.dead_fraction)
        # the detector as a column (IsrTask checks it against each raw's)
        made_for = calib_for(exps, "defects")
        if "detector" in made_for:
            table["detector"] = made_for["detector"]
        return TaskResult(defects=table)


class FringeConfig(Config):
    """Which filter fringes, and how the frame is made."""

    physical_filter: str = Field("SIM-i", description="the fringing (reddest) filter")
    n_sigma: float = Field(3.0, gt=0, description="source clipping")
    smooth_px: float = Field(3.0, ge=0, description="Gaussian smoothing of the frame (px)")


class FringeTask(_CalibTask):
    """Fringe frame of the fringing filter from its ISR-processed science exposures."""

    ConfigClass = FringeConfig
    dimensions = FILT_CAL
    inputs = {
        "raws": Input(
            "raw",
            RAW_DIMS,
            storage_class="Raw",
            multiple=True,
            where="exposure.obs_type = 'science'",
        ),
        "bias": Input("bias", DET_CAL),
        "dark": Input("dark", DET_CAL),
        "flat": Input("flat", FILT_CAL),
        "defects": Input("defects", DET_CAL, storage_class="Table"),
    }
    outputs = {"fringe": Output("fringe", FILT_CAL, doc="fringe frame (zero-mean, sky units)")}

    def active_inputs(self) -> dict[str, Any]:
        from dataclasses import replace

        c = self.config
        assert isinstance(c, FringeConfig)
        out = dict(self.inputs)
        out["raws"] = replace(
            out["raws"],
            where=f"exposure.obs_type = 'science' AND physical_filter = '{c.physical_filter}'",
        )
        return out

    def run(
        self,
        raws: list[str],
        bias: xr.Dataset,
        dark: xr.Dataset,
        flat: xr.Dataset,
        defects: pd.DataFrame,
    ) -> TaskResult:
        from lsstlite.stages.isr.task import IsrConfig, IsrTask

        c = self.config
        assert isinstance(c, FringeConfig)
        isr = IsrTask({"do_fringe": False}, label=f"{self.label}.isr")
        assert isinstance(isr.config, IsrConfig)
        rows = isr.config.chunk_rows
        bias, dark, flat = (_in_memory(cal, rows) for cal in (bias, dark, flat))
        exps = [
            isr.run(raw=p, bias=bias, dark=dark, flat=flat, defects=defects).post_isr for p in raws
        ]
        frame = ops.fringe_from_exposures(exps, n_sigma=c.n_sigma, smooth_px=c.smooth_px)
        frame.attrs["inputs"] = [str(p) for p in raws]
        frame.attrs["calib_type"] = "fringe"
        frame.attrs["calib_for"] = calib_for(exps, "fringe")
        return TaskResult(fringe=frame)
