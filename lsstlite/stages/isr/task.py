"""IsrTask: one raw (exposure, detector) → ``post_isr`` exposure in electrons, lazily."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from pydantic import Field

from lsstlite.instruments import RawReadError, instrument_for_header
from lsstlite.pipe import Config, Input, Output, PrerequisiteInput, Task, TaskResult
from lsstlite.stages.isr import ops

__all__ = ["IsrConfig", "IsrTask", "read_raw"]

DET = ("instrument", "exposure", "detector")
DET_CAL = ("instrument", "detector")
FILT_CAL = ("instrument", "detector", "physical_filter")


class IsrConfig(Config):
    """Switches and parameters of every ISR step (applied in the order listed)."""

    do_saturation: bool = Field(True, description="SAT where raw ADU ≥ amplifier saturation")
    saturated_grow: int = Field(1, ge=0, description="grow SAT by this many px (bleed edges)")
    do_overscan: bool = True
    overscan_mode: Literal["median", "median_per_row", "poly", "spline"] = "median_per_row"
    overscan_order: int = Field(3, ge=0, description="Legendre order (mode 'poly')")
    overscan_knot_rows: int = Field(128, ge=8, description="spline knot spacing (mode 'spline')")
    overscan_n_sigma: float = Field(3.0, gt=0, description="clipping of the poly/spline fits")
    do_crosstalk: bool = True
    do_bias: bool = True
    do_linearity: bool = True
    do_defects: bool = True
    do_bf: bool = True
    bf_threshold: float = Field(10_000.0, description="e⁻; BF evaluated near brighter pixels")
    bf_radius: int = Field(12, ge=0, description="px around bright pixels where BF is evaluated")
    bf_n_iter: int = Field(2, ge=1)
    do_dark: bool = True
    do_flat: bool = True
    do_fringe: bool = True
    fringe_n_sigma: float = Field(3.0, gt=0, description="source clipping of the amplitude fit")
    do_interpolate: bool = True
    interp_max_width: int = Field(32, ge=1, description="longest masked run interpolated (px)")
    chunk_rows: int = Field(ops.DEFAULT_CHUNK_ROWS, ge=16, description="rows per raw read chunk")
    block_rows: int = Field(
        ops.DEFAULT_BLOCK_ROWS, ge=16, description="rows per ISR block (the output's row chunks)"
    )


def read_raw(
    raw: str | Path | xr.Dataset, *, chunk_rows: int = ops.DEFAULT_CHUNK_ROWS
) -> xr.Dataset:
    """A raw Dataset (dask-backed, row chunks) from a path (instrument from the header)."""
    if isinstance(raw, xr.Dataset):
        return raw
    from astropy.io import fits

    try:
        header = fits.getheader(raw, 0)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # not FITS, empty, or a broken first header
        raise RawReadError(f"raw file '{raw}': cannot read its primary header: {exc}") from None
    ds = instrument_for_header(header).read_raw(raw)
    data = ds["image"].data
    # Named after the file (path, size, mtime): hashing the pixels for a name took ~0.08 s
    # of every 8-Mpixel raw.
    st = os.stat(raw)
    name = "raw-" + tokenize(os.path.abspath(raw), st.st_size, st.st_mtime_ns, chunk_rows)
    ds["image"] = (("y", "x"), da.from_array(data, chunks=(chunk_rows, -1), name=name))
    return ds


def _when(raw: xr.Dataset) -> str:
    info = raw.attrs.get("visit_info") or {}
    return (
        f"exposure {info.get('exposure')} detector {info.get('detector')} "
        f"(day_obs {info.get('day_obs')}, MJD {info.get('mjd')}, file {raw.attrs.get('filename')})"
    )


class IsrTask(Task):
    """Instrument signature removal of one detector of one exposure.

    Steps, in order: saturation (raw ADU), overscan, crosstalk (ADU, readout order),
    assembly, bias, linearity, gain and variance, NaNs, defects, dark, brighter-fatter,
    flat, fringe, SAT growth, interpolation. The result's ``attrs['isr_steps']`` lists
    the steps applied. Camera constants (linearity, crosstalk, BF kernel) come from the
    instrument; bias, dark, flat, fringe and defects are calibrations.
    """

    ConfigClass = IsrConfig
    dimensions = DET
    inputs = {
        "raw": Input(
            "raw",
            DET,
            storage_class="Raw",
            where="exposure.obs_type = 'science'",
            doc="raw science frame (calibration raws go to calibs.yaml)",
        ),
        "bias": PrerequisiteInput("bias", DET_CAL, calibration=True, doc="master bias (ADU)"),
        "dark": PrerequisiteInput("dark", DET_CAL, calibration=True, doc="master dark (e⁻/s)"),
        "flat": PrerequisiteInput("flat", FILT_CAL, calibration=True, doc="master flat"),
        "fringe": PrerequisiteInput(
            "fringe",
            FILT_CAL,
            calibration=True,
            optional=True,
            doc="fringe frame (only the fringing band has one)",
        ),
        "defects": PrerequisiteInput(
            "defects", DET_CAL, storage_class="Table", calibration=True, doc="defect boxes"
        ),
    }
    outputs = {"post_isr": Output("post_isr", DET, doc="exposure after ISR (electrons)")}

    _SWITCH = {
        "bias": "do_bias",
        "dark": "do_dark",
        "flat": "do_flat",
        "fringe": "do_fringe",
        "defects": "do_defects",
    }

    def active_inputs(self) -> dict[str, Any]:
        return {
            n: c
            for n, c in self.inputs.items()
            if n not in self._SWITCH or getattr(self.config, self._SWITCH[n])
        }

    def run(
        self,
        raw: str | Path | xr.Dataset,
        bias: xr.Dataset | None = None,
        dark: xr.Dataset | None = None,
        flat: xr.Dataset | None = None,
        fringe: xr.Dataset | None = None,
        defects: pd.DataFrame | None = None,
    ) -> TaskResult:
        """Build the lazy ISR graph of one raw (nothing is computed here).

        Raises
        ------
        ValueError
            If a calibration a ``do_*`` switch asks for is missing, naming the calibration
            type, the config key and the exposure's date.
        """
        c = self.config
        assert isinstance(c, IsrConfig)
        ds = read_raw(raw, chunk_rows=c.chunk_rows)
        for name, value in (("bias", bias), ("dark", dark), ("flat", flat), ("defects", defects)):
            if value is None and getattr(c, self._SWITCH[name]):
                raise ValueError(
                    f"{self.label}: no {name!r} calibration for {_when(ds)} but "
                    f"{self.label}.{self._SWITCH[name]} is true; certify one valid at that date "
                    f"or set {self._SWITCH[name]}=false"
                )
        given = {"bias": bias, "dark": dark, "flat": flat, "fringe": fringe, "defects": defects}
        for name, value in given.items():
            if value is not None and getattr(c, self._SWITCH[name]):
                _check_made_for(self.label, name, value, ds)
        instrument = None
        if c.do_crosstalk or c.do_linearity or c.do_bf:
            instrument = instrument_for_header(ds.attrs.get("header", {}))
        detector = int((ds.attrs.get("visit_info") or {}).get("detector") or 0)
        levels: Any = None
        if c.do_overscan and c.overscan_mode == "median_per_row":
            levels = "median_per_row"  # computed in each block, from the rows it reads
        elif c.do_overscan:
            levels = ops.overscan_levels(
                ds,
                mode=c.overscan_mode,
                order=c.overscan_order,
                knot_rows=c.overscan_knot_rows,
                n_sigma=c.overscan_n_sigma,
            )
        bf_kernel = _camera(instrument, "bf_kernel") if c.do_bf else None
        use_fringe = fringe if c.do_fringe else None
        if use_fringe is not None:
            use_fringe = use_fringe.copy()
            use_fringe["image"] = use_fringe["image"] - use_fringe["image"].mean()
        exp = ops.isr_stacked(
            ds,
            overscan=levels,
            crosstalk=_camera(instrument, "crosstalk_matrix", detector) if c.do_crosstalk else None,
            bias=bias if c.do_bias else None,
            linearity=_camera(instrument, "linearity", detector) if c.do_linearity else None,
            dark=dark if c.do_dark else None,
            defects=defects if c.do_defects else None,
            bf_kernel=None if bf_kernel is None else np.asarray(bf_kernel),
            bf_threshold=c.bf_threshold,
            bf_radius=c.bf_radius,
            bf_n_iter=c.bf_n_iter,
            flat=flat if c.do_flat else None,
            fringe=use_fringe,
            fringe_n_sigma=c.fringe_n_sigma,
            do_saturation=c.do_saturation,
            saturated_grow=c.saturated_grow if c.do_saturation else 0,
            interpolate_planes=("BAD", "SAT", "UNMASKEDNAN") if c.do_interpolate else None,
            interp_max_width=c.interp_max_width,
            chunk_rows=c.block_rows,
        )
        return TaskResult(post_isr=exp)


def _check_made_for(label: str, name: str, calib: Any, raw: xr.Dataset) -> None:
    """Refuse a calibration made for another instrument, detector or filter than the raw's
    (``attrs["calib_for"]`` of the master calibrations, the ``detector`` column of a
    defects table; calibrations without them are taken as they are). Same-shaped
    detectors would otherwise take each other's bias or flat without a word."""
    from lsstlite.data.exposure import exposure_label

    info = raw.attrs.get("visit_info") or {}
    if isinstance(calib, pd.DataFrame):
        made_for = {}
        if "detector" in calib.columns and len(calib):
            detectors = sorted({int(d) for d in calib["detector"]})
            made_for = {"detector": detectors[0] if len(detectors) == 1 else detectors}
    else:
        made_for = dict(calib.attrs.get("calib_for") or {})
    wrong = {
        k: (v, info.get(k))
        for k, v in made_for.items()
        if info.get(k) is not None and v != info.get(k)
    }
    if wrong:
        what = ", ".join(
            f"{k} {mine!r} (the raw's: {theirs!r})" for k, (mine, theirs) in wrong.items()
        )
        verb = "are" if name == "defects" else "is"
        raise ValueError(
            f"{label}: the {name} {verb} for {what}; raw {exposure_label(raw)} needs its own"
        )


def _camera(instrument: Any, method: str, *args: Any) -> Any:
    fn = getattr(instrument, method, None)
    if fn is None:
        raise ValueError(
            f"instrument {instrument!r} does not provide {method}(); turn the matching do_* "
            "switch off for it"
        )
    return fn(*args)
