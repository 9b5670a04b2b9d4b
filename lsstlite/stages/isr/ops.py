"""ISR operations on xarray objects: lazy, chunked, usable on any raw from a notebook.

A *raw* is the Dataset of :meth:`lsstlite.instruments.simcam.SimCam.read_raw` (or
:func:`raw_from_fits` for a generic single-HDU frame): the untrimmed frame in readout
order with ``attrs['amplifiers']``. The step-by-step ops, in the order :class:`IsrTask`
applies them::

    raw = mask_saturation(raw)                  # raw ADU ≥ amplifier saturation → SAT
    raw = subtract_overscan(raw)                # per amplifier, per row
    raw = correct_crosstalk(raw, matrix)        # ADU, readout order (before linearity)
    exp = assemble(raw)                         # trim, flip, place: ADU exposure
    exp = subtract_bias(exp, bias)
    exp = apply_linearity(exp, coeffs)
    exp = apply_gain(exp)                       # electrons; variance = e + read_noise²
    exp = mask_defects(mask_nans(exp), defects)
    exp = subtract_dark(exp, dark)
    exp = correct_brighter_fatter(exp, kernel)
    exp = remove_fringe(divide_flat(exp, flat), fringe)
    exp = interpolate_bad(grow_mask_plane(exp, "SAT", 1))

:func:`isr_chain` does the per-pixel part of the same sequence in one fused kernel per
block of rows (the task's path); the two agree to float32 rounding.

No op computes: each returns lazy dask-backed xarray objects.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from astropy.io import fits
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import NDArray

from lsstlite.data._pool import BufferPool
from lsstlite.data.exposure import exposure_label, make_exposure
from lsstlite.data.masks import mask_bits, mask_planes
from lsstlite.stages.isr import _kernels

__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "DEFAULT_CHUNK_ROWS",
    "apply_gain",
    "apply_linearity",
    "assemble",
    "correct_brighter_fatter",
    "correct_crosstalk",
    "divide_flat",
    "fit_fringe_amplitude",
    "grow_mask_plane",
    "interpolate_bad",
    "isr_chain",
    "isr_post_dark",
    "isr_stacked",
    "mask_defects",
    "mask_nans",
    "mask_saturation",
    "overscan_levels",
    "raw_from_fits",
    "remove_fringe",
    "subtract_bias",
    "subtract_dark",
    "subtract_overscan",
]

#: Rows per raw read chunk and calibration chunk (full rows: crosstalk pairs pixels
#: across amplifiers).
DEFAULT_CHUNK_ROWS = 1024

#: Rows per block of :func:`isr_stacked` (the output's row chunks), whatever the inputs'
#: chunks: a block reads the input chunks its rows overlap. Each block pays fixed costs:
#: its four Dask tasks (~0.3 ms each on the threaded scheduler) and the neighbours' rows
#: it recomputes (up to 2 × 22 with brighter-fatter). A 4096² detector read in 1024-row
#: chunks, 150 bright stars: 58-60 ms on one core and 34 ms on two with 2048-row blocks,
#: 61.5-63 and 35-37 ms with 1024 (``benchmarks/isr.py --block-rows``). A 2048-row block
#: of a 4096-wide detector is 103 MB.
DEFAULT_BLOCK_ROWS = 2048

#: The ISR's block buffers, lent again once Dask has let go of a block (a fresh block's
#: pages cost more than the ISR arithmetic on them; see :mod:`lsstlite.data._pool`).
_BLOCKS = BufferPool(max_bytes=1 << 30)

F32 = np.float32


# -- geometry helpers ------------------------------------------------------------------


def _amps(raw: xr.Dataset) -> list[dict[str, Any]]:
    amps = raw.attrs.get("amplifiers")
    if not amps:
        raise ValueError(
            f"raw {raw.attrs.get('filename', '')!r} has no attrs['amplifiers']; read it with an "
            "instrument's read_raw or lsstlite.stages.isr.ops.raw_from_fits"
        )
    return list(amps)


def _dask(arr: xr.DataArray) -> da.Array:
    data = arr.data
    return data if isinstance(data, da.Array) else da.from_array(data, chunks=data.shape)


def _detector_shape(amps: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    return (
        max(a["detector_section"][1] for a in amps),
        max(a["detector_section"][3] for a in amps),
    )


def _column_values(
    amps: Sequence[Mapping[str, Any]], nx: int, values: Sequence[float] | NDArray[np.floating]
) -> NDArray[np.float64]:
    """Per-column array (assembled frame) of a per-amplifier constant."""
    out = np.zeros(nx)
    for amp, value in zip(amps, values, strict=True):
        _, _, x0, x1 = amp["detector_section"]
        out[x0:x1] = value
    return out


def _readout_geometry(raw: xr.Dataset) -> dict[str, Any]:
    """Arrays describing where each amplifier's data lies (raw) and goes (assembled)."""
    amps = _amps(raw)
    widths = {a["data_section"][3] - a["data_section"][2] for a in amps}
    if len(widths) != 1:
        raise ValueError(
            f"amplifiers of {raw.attrs.get('filename', 'raw')!r} differ in width {sorted(widths)}"
        )
    ny, nx = _detector_shape(amps)
    for a in amps:
        ya, yb = a["data_section"][:2]
        if (ya, yb) != (a["detector_section"][0], a["detector_section"][1]) or a.get("flip_y"):
            raise ValueError(
                f"amplifier {a.get('name')!r}: only full-height, non-y-flipped data sections are "
                f"supported (data {a['data_section']}, detector {a['detector_section']})"
            )
    return {
        "raw_x0": np.array([a["data_section"][2] for a in amps], dtype=np.int64),
        "det_x0": np.array([a["detector_section"][2] for a in amps], dtype=np.int64),
        "flip": np.array([bool(a.get("flip_x")) for a in amps], dtype=np.bool_),
        "width": int(widths.pop()),
        "shape": (ny, nx),
        "gain": np.array([float(a["gain"]) for a in amps]),
        "read_noise": np.array([float(a["read_noise"]) for a in amps]),
        "saturation": np.array([float(a.get("saturation_adu", np.inf)) for a in amps]),
    }


def _rows(n: int) -> str:
    return f"{n} such row" if n == 1 else f"{n} such rows"


def _visit_info(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    info = attrs.get("visit_info")
    return dict(info) if info else None


def _with(exp: xr.Dataset, **variables: Any) -> xr.Dataset:
    """A shallow copy of ``exp`` with some variables' data replaced (attrs kept)."""
    out = exp.copy()
    for name, data in variables.items():
        out[name] = (("y", "x"), data, exp[name].attrs)
    return out


def _add_steps(exp: xr.Dataset, *steps: str) -> xr.Dataset:
    exp.attrs["isr_steps"] = [*exp.attrs.get("isr_steps", []), *steps]
    return exp


# -- reading a generic raw -------------------------------------------------------------


def _parse_section(text: str) -> tuple[int, int, int, int]:
    from lsstlite.instruments.simcam import parse_section

    box, _, _ = parse_section(text.replace(" ", ""))  # IRAF writers pad: '[  17: 528,   1: 520]'
    return box


def raw_from_fits(
    path: str | Path,
    *,
    hdu: int = 0,
    biassec_key: str = "BIASSEC",
    trimsec_key: str = "TRIMSEC",
    gain_key: str = "GAIN",
    rdnoise_key: str = "RDNOISE",
    saturation_key: str = "SATURATE",
    chunks: tuple[int, int] | None = None,
) -> xr.Dataset:
    """A single-amplifier raw Dataset (same layout as ``SimCam.read_raw``) from any FITS image.

    Parameters
    ----------
    path
        FITS file; the image is HDU ``hdu``.
    biassec_key, trimsec_key, gain_key, rdnoise_key, saturation_key
        Header keys of the overscan (or prescan) section, the data section (IRAF
        ``[x1:x2,y1:y2]``), the gain (e⁻/ADU), read noise (e⁻) and saturation (ADU,
        optional: ∞ when absent).
    chunks
        Dask chunks of ``image`` (default: one chunk).

    Raises
    ------
    KeyError
        If a required key is missing, naming the file and the key.

    Notes
    -----
    Reads the pixels eagerly (a FITS file is not chunked storage) and wraps them in dask.
    """
    path = Path(path)
    with fits.open(path, memmap=False) as hdul:
        header = hdul[hdu].header
        data = np.asarray(hdul[hdu].data, dtype=F32)
    for key in (biassec_key, trimsec_key, gain_key, rdnoise_key):
        if key not in header:
            raise KeyError(f"raw file '{path}': header key {key!r} (HDU {hdu}) is missing")
    bsec = _parse_section(str(header[biassec_key]))
    tsec = _parse_section(str(header[trimsec_key]))
    ny, nx = data.shape
    amp = {
        "name": "A",
        "bbox_raw": [0, ny, 0, nx],
        "data_section": list(tsec),
        "serial_overscan": list(bsec),
        "prescan": [0, ny, 0, 0],
        "detector_section": [0, tsec[1] - tsec[0], 0, tsec[3] - tsec[2]],
        "flip_x": False,
        "flip_y": False,
        "gain": float(header[gain_key]),
        "read_noise": float(header[rdnoise_key]),
        "saturation_adu": float(header.get(saturation_key, np.inf)),
    }
    plain = {
        k: (v if isinstance(v, bool | int | float | str) else str(v))
        for k, v in header.items()
        if k not in ("COMMENT", "HISTORY", "")
    }
    exptime = float(header.get("EXPTIME", 0.0))
    visit_info = {
        "instrument": str(header.get("INSTRUME", "unknown")),
        "exposure": 0,
        "exptime": exptime,
        "darktime": float(header.get("DARKTIME", exptime)),
    }
    return xr.Dataset(
        {"image": (("y", "x"), da.from_array(data, chunks=chunks or data.shape))},
        attrs={
            "amplifiers": [amp],
            "visit_info": visit_info,
            "wcs": {},
            "header": plain,
            "filename": str(path),
        },
    )


# -- overscan ----------------------------------------------------------------------------


def overscan_levels(
    raw: xr.Dataset,
    *,
    mode: str = "median_per_row",
    order: int = 3,
    knot_rows: int = 128,
    n_sigma: float = 3.0,
    n_iter: int = 3,
) -> xr.DataArray:
    """Overscan level of every row of every amplifier, ``("amp", "y")`` float32 (ADU).

    ``mode``: ``"median"`` (one level per amplifier), ``"median_per_row"``, ``"poly"``
    (clipped Legendre fit of the per-row medians, ``order``) or ``"spline"`` (clipped cubic
    spline, a knot every ``knot_rows`` rows).

    Notes
    -----
    Lazy: the per-row medians are one ``map_blocks`` over row chunks of the raw (all
    amplifiers in one numba task); the fit is one small delayed reduction per amplifier.
    No halo.
    """
    if mode not in _kernels.OVERSCAN_MODES:
        raise ValueError(f"overscan mode must be one of {_kernels.OVERSCAN_MODES}, got {mode!r}")
    image = _dask(raw["image"])
    amps = _amps(raw)
    for amp in amps:
        y0, y1, x0, x1 = amp["serial_overscan"]
        if x1 <= x0:
            raise ValueError(
                f"amplifier {amp.get('name')!r} has no overscan columns ({amp['serial_overscan']})"
            )
    rows = {tuple(a["serial_overscan"][:2]) for a in amps}
    if rows == {(0, image.shape[0])}:  # full-height overscans: every amplifier in one task
        x0s = np.array([a["serial_overscan"][2] for a in amps], np.int64)
        x1s = np.array([a["serial_overscan"][3] for a in amps], np.int64)
        # (rows, amps) blocks, transposed lazily: a blockwise contraction of x would copy
        # each raw block (dask concatenates the one chunk it is given)
        all_med = (
            image.rechunk({1: -1})
            .map_blocks(
                _row_medians_t,
                x0s=x0s,
                x1s=x1s,
                chunks=(image.chunks[0], (len(amps),)),
                dtype=F32,
                meta=np.empty((0, 0), F32),
            )
            .T
        )
        meds = [all_med[i] for i in range(len(amps))]
    else:
        meds = []
        for amp in amps:
            y0, y1, x0, x1 = amp["serial_overscan"]
            cols = image[y0:y1, x0:x1].rechunk({1: -1})
            meds.append(
                cols.map_blocks(
                    lambda b: np.median(b, axis=1).astype(F32),
                    drop_axis=1,
                    dtype=F32,
                    meta=np.empty((0,), F32),
                )
            )
    if mode == "median_per_row":
        stacked = all_med if rows == {(0, image.shape[0])} else da.stack(meds)
        return xr.DataArray(stacked, dims=("amp", "y"), name="overscan")
    levels = []
    for med in meds:
        fit = dask.delayed(_kernels.fit_overscan, pure=True)(
            med.rechunk(-1),
            mode=mode,
            order=order,
            knot_rows=knot_rows,
            n_sigma=n_sigma,
            n_iter=n_iter,
        )
        levels.append(
            da.from_delayed(fit, shape=(med.shape[0],), dtype=F32, meta=np.empty((0,), F32))
        )
    return xr.DataArray(da.stack(levels), dims=("amp", "y"), name="overscan")


def _row_medians_t(
    block: NDArray[np.number], x0s: NDArray[np.int64], x1s: NDArray[np.int64]
) -> NDArray[np.float32]:
    return _kernels.row_medians(block, x0s, x1s).T


def subtract_overscan(
    raw: xr.Dataset, *, levels: xr.DataArray | None = None, **fit: Any
) -> xr.Dataset:
    """The raw with each amplifier's overscan level (per row) subtracted from its columns.

    ``levels`` from :func:`overscan_levels` (computed with ``**fit`` when not given).

    Notes
    -----
    Lazy, elementwise per amplifier column range: any chunking works, no halo.
    """
    if levels is None:
        levels = overscan_levels(raw, **fit)
    image = _dask(raw["image"])
    amps = sorted(enumerate(_amps(raw)), key=lambda t: t[1]["bbox_raw"][2])
    pieces, x_prev = [], 0
    for k, amp in amps:
        y0, y1, x0, x1 = amp["bbox_raw"]
        if x0 != x_prev or (y0, y1) != (0, image.shape[0]):
            raise ValueError(
                f"amplifier bounding boxes must tile the raw along x; got {amp['bbox_raw']}"
            )
        lev = _dask(levels)[k]
        pieces.append(image[:, x0:x1] - lev[:, None])
        x_prev = x1
    out = raw.copy()
    out["image"] = (("y", "x"), da.concatenate(pieces, axis=1).astype(F32))
    return _add_steps(out, "overscan")


def mask_saturation(raw: xr.Dataset) -> xr.Dataset:
    """Add (or update) a raw-frame ``mask`` with SAT where raw ADU ≥ the amplifier's saturation.

    Must run on the untouched raw (the threshold includes the bias level).

    Notes
    -----
    Lazy, elementwise: any chunking, no halo. Grow the plane after assembly with
    :func:`grow_mask_plane` to cover the edges of bleed trails.
    """
    from lsstlite.data.masks import DEFAULT_MASK_PLANES

    image = _dask(raw["image"])
    sat_cols = np.full(image.shape[1], np.inf)
    for amp in _amps(raw):
        _, _, x0, x1 = amp["bbox_raw"]
        sat_cols[x0:x1] = float(amp.get("saturation_adu", np.inf))
    bit = 1 << DEFAULT_MASK_PLANES["SAT"]
    old = (
        _dask(raw["mask"])
        if "mask" in raw
        else da.zeros(image.shape, dtype=np.int32, chunks=image.chunks)
    )
    new = da.where(image >= sat_cols[None, :], old | np.int32(bit), old).astype(np.int32)
    out = raw.copy()
    out["mask"] = (("y", "x"), new, {"planes": dict(DEFAULT_MASK_PLANES)})
    return _add_steps(out, "saturation")


def correct_crosstalk(raw: xr.Dataset, matrix: NDArray[np.floating]) -> xr.Dataset:
    """Remove inter-amplifier crosstalk from an overscan-subtracted raw (ADU, readout order).

    ``matrix[source, victim]``: the victim's signal gained that fraction of the source's
    signal at the same readout position. Applied before linearity: the crosstalk arises
    in the electronics, on the already nonlinear signal.

    Notes
    -----
    Lazy ``map_blocks``; every amplifier of a row is needed, so the op rechunks x to one
    chunk (rows stay chunked). No halo in y.
    """
    geo = _readout_geometry(raw)
    c = np.asarray(matrix, dtype=np.float64)
    n = geo["raw_x0"].size
    if c.shape != (n, n):
        raise ValueError(f"crosstalk matrix has shape {c.shape}, the raw has {n} amplifiers")
    image = _dask(raw["image"]).rechunk({1: -1})
    out_img = image.map_blocks(
        _kernels.crosstalk_readout,
        geo["raw_x0"],
        geo["width"],
        c,
        dtype=F32,
        meta=np.empty((0, 0), F32),
    )
    out = raw.copy()
    out["image"] = (("y", "x"), out_img)
    return _add_steps(out, "crosstalk")


def assemble(raw: xr.Dataset) -> xr.Dataset:
    """Trim and assemble the amplifiers' data sections into the detector frame (ADU exposure).

    x-flipped amplifiers (read from the right) are reversed. The raw's ``mask`` (if any)
    follows the pixels; ``attrs['amplifiers']`` is kept (``detector_section`` gives each
    amplifier's place) with the raw's WCS cards and visit info.

    Notes
    -----
    Lazy slicing and concatenation: the output chunks follow the input's; no halo.
    """
    amps = _amps(raw)
    ny, nx = _detector_shape(amps)

    def place(arr: da.Array) -> da.Array:
        pieces = []
        for amp in sorted(amps, key=lambda a: a["detector_section"][2]):
            ya, yb, xa, xb = amp["data_section"]
            piece = arr[ya:yb, xa:xb]
            if amp.get("flip_x"):
                piece = piece[:, ::-1]
            if amp.get("flip_y"):
                piece = piece[::-1, :]
            pieces.append(piece)
        out = da.concatenate(pieces, axis=1)
        if out.shape != (ny, nx):
            raise ValueError(f"amplifier detector sections do not tile a {ny}×{nx} detector")
        return out

    image = place(_dask(raw["image"]))
    mask = place(_dask(raw["mask"])) if "mask" in raw else None
    exp = make_exposure(
        image,
        mask=mask,
        wcs=raw.attrs.get("wcs") or None,
        visit_info=_visit_info(raw.attrs),
        units="adu",
        attrs={"amplifiers": amps, "isr_steps": [*raw.attrs.get("isr_steps", []), "assemble"]},
    )
    return exp


# -- assembled-frame steps ---------------------------------------------------------------


def _amp_columns(exp: xr.Dataset, values: Sequence[float] | NDArray[np.floating]) -> xr.DataArray:
    amps = exp.attrs["amplifiers"]
    return xr.DataArray(
        _column_values(amps, exp.sizes["x"], values).astype(np.float64),
        dims=("x",),
        coords={"x": exp["x"]},
    )


def subtract_bias(exp: xr.Dataset, bias: xr.Dataset) -> xr.Dataset:
    """Subtract a master bias (same units as ``exp``, ADU before :func:`apply_gain`).

    Notes
    -----
    Lazy, elementwise; chunks follow ``exp``; no halo.
    """
    _check_same_shape(exp, bias, "bias")
    out = _with(exp, image=(exp["image"] - bias["image"].data).data.astype(F32))
    return _add_steps(out, "bias")


def apply_linearity(exp: xr.Dataset, coeffs: NDArray[np.floating] | Sequence[Any]) -> xr.Dataset:
    """Linearise bias-subtracted ADU: ``a + a²(d2 + a(d3 + a d4))`` per amplifier.

    ``coeffs``: ``(n_amps, 3)`` array of ``(d2, d3, d4)`` or a list of objects with
    ``correction_coeffs`` (``SimCam.linearity``).

    Notes
    -----
    Lazy, elementwise; no halo.
    """
    c = _linearity_array(coeffs)
    a: xr.DataArray = exp["image"].astype(np.float64)
    d2, d3, d4 = (_amp_columns(exp, c[:, k]) for k in range(3))
    lin: xr.DataArray = a + a * a * (d2 + a * (d3 + a * d4))
    out = _with(exp, image=lin.astype(F32).transpose("y", "x").data)
    return _add_steps(out, "linearity")


def _linearity_array(coeffs: Any) -> NDArray[np.float64]:
    if isinstance(coeffs, np.ndarray):
        return np.asarray(coeffs, dtype=np.float64).reshape(-1, 3)
    return np.array([list(getattr(c, "correction_coeffs", c)) for c in coeffs], dtype=np.float64)


def apply_gain(exp: xr.Dataset) -> xr.Dataset:
    """ADU → electrons with each amplifier's gain; variance ``max(e, 0) + read_noise²``.

    Notes
    -----
    Lazy, elementwise; no halo.
    """
    amps = exp.attrs["amplifiers"]
    gain = _amp_columns(exp, [a["gain"] for a in amps])
    rn = _amp_columns(exp, [a["read_noise"] for a in amps])
    e: xr.DataArray = exp["image"].astype(np.float64) * gain
    var: xr.DataArray = e.clip(min=0.0) + rn * rn
    out = _with(
        exp,
        image=e.astype(F32).transpose("y", "x").data,
        variance=var.astype(F32).transpose("y", "x").data,
    )
    out.attrs["units"] = "electron"
    out["image"].attrs["units"] = "electron"
    out["variance"].attrs["units"] = "electron^2"
    return _add_steps(out, "gain", "variance")


def mask_nans(exp: xr.Dataset) -> xr.Dataset:
    """Flag non-finite pixels UNMASKEDNAN (value 0, variance ∞) so they get interpolated.

    Notes
    -----
    Lazy, elementwise; no halo.
    """
    bit = mask_bits(mask_planes(exp), "UNMASKEDNAN")
    bad = ~np.isfinite(exp["image"])
    out = _with(
        exp,
        image=exp["image"].where(~bad, 0.0).data,
        variance=exp["variance"].where(~bad, np.inf).astype(F32).data,
        mask=xr.where(bad, exp["mask"] | bit, exp["mask"]).astype(np.int32).data,
    )
    return _add_steps(out, "nans")


def mask_defects(exp: xr.Dataset, defects: pd.DataFrame | NDArray[np.integer]) -> xr.Dataset:
    """Set BAD inside defect boxes (``x0, y0, width, height`` in the detector frame).

    Notes
    -----
    Lazy ``map_blocks``: each block rasterises only the boxes that touch it; no halo,
    any chunking.
    """
    boxes = _boxes(defects)
    bit = np.int32(mask_bits(mask_planes(exp), "BAD"))
    mask = _dask(exp["mask"])
    y0, x0 = int(exp["y"][0]), int(exp["x"][0])

    def block(m: NDArray[np.int32], block_info: dict[Any, Any] | None = None) -> NDArray[np.int32]:
        (ya, _), (xa, _) = block_info[0]["array-location"] if block_info else ((0, 0), (0, 0))
        hit = _kernels.rasterize_boxes(boxes, y0 + ya, x0 + xa, m.shape)
        return np.where(hit, m | bit, m).astype(np.int32)

    out = _with(
        exp, mask=da.map_blocks(block, mask, dtype=np.int32, meta=np.empty((0, 0), np.int32))
    )
    return _add_steps(out, "defects")


def _boxes(defects: pd.DataFrame | NDArray[np.integer]) -> NDArray[np.int64]:
    """The defect boxes ``(x0, y0, width, height)`` as an int64 array; a table with a
    missing, non-integer or non-finite value, or a box without area, is refused, naming
    the row."""
    names = ("x0", "y0", "width", "height")
    if isinstance(defects, pd.DataFrame):
        missing = set(names) - set(defects.columns)
        if missing:
            raise ValueError(f"defects table lacks columns {sorted(missing)}")
        # column by column: a frame's multi-column selection costs ~0.3 ms
        values = np.stack([defects[c].to_numpy() for c in names], axis=1)
    else:
        values = np.asarray(defects)
        if values.size % 4:
            raise ValueError(
                f"defect boxes need 4 values each (x0, y0, width, height), got {values.shape}"
            )
        values = values.reshape(-1, 4)
    if values.dtype.kind in "iu":
        boxes = values.astype(np.int64)
    else:
        as_float = np.asarray(values, dtype=np.float64)
        whole = np.isfinite(as_float) & (as_float == np.round(as_float))
        if not whole.all():
            row, col = np.argwhere(~whole)[0]
            raise ValueError(
                f"defects row {row}: {names[col]} = {values[row, col]} is not an integer pixel"
            )
        boxes = as_float.astype(np.int64)
    empty = (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise ValueError(
            f"defects row {row}: width {boxes[row, 2]} and height {boxes[row, 3]} must be "
            f"positive ({_rows(int(empty.sum()))})"
        )
    return boxes


def _dark_time(exp: xr.Dataset, dark_time: float | None) -> float:
    if dark_time is not None:
        return float(dark_time)
    info = exp.attrs.get("visit_info") or {}
    value = info.get("darktime") if info.get("darktime") is not None else info.get("exptime")
    if value is None:
        raise ValueError(
            f"exposure {exposure_label(exp)} has no darktime/exptime in visit_info; pass dark_time="
        )
    if not np.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f"exposure {exposure_label(exp)} has dark time {value!r}: not a duration")
    return float(value)


def subtract_dark(
    exp: xr.Dataset, dark: xr.Dataset, *, dark_time: float | None = None
) -> xr.Dataset:
    """Subtract a master dark (e⁻/s) scaled by the exposure's dark time (default visit_info).

    Notes
    -----
    Lazy, elementwise; no halo.
    """
    _check_same_shape(exp, dark, "dark")
    t = _dark_time(exp, dark_time)
    out = _with(exp, image=(exp["image"] - F32(t) * dark["image"].data).data.astype(F32))
    return _add_steps(out, "dark")


def bf_halo(kernel: NDArray[np.floating], radius: int, n_iter: int) -> int:
    """Halo (pixels) that makes :func:`correct_brighter_fatter` chunk-independent."""
    half = np.asarray(kernel).shape[0] // 2
    return n_iter * (half + 1) + radius


def correct_brighter_fatter(
    exp: xr.Dataset,
    kernel: NDArray[np.floating],
    *,
    threshold: float = 10_000.0,
    radius: int = 12,
    n_iter: int = 2,
    max_width: int = 32,
) -> xr.Dataset:
    """Undo the brighter-fatter effect, ``ΔI = ½ ∇·(I ∇(K ∗ I))`` (electrons, before the flat).

    Evaluated within ``radius`` px of pixels brighter than ``threshold`` e⁻ (``ΔI`` ∝ I²).
    Defects (BAD pixels: :func:`mask_defects` before this) are filled in for the
    correction by interpolation along rows, as :func:`interpolate_bad` would (runs of up
    to ``max_width``; 0: not filled), and keep their own values plus the correction
    (LSST's ``IsrTask`` does the same): a dead column through a bright star would
    otherwise move charge in the good pixels beside it.

    Notes
    -----
    Lazy ``map_overlap`` with halo ``n_iter × (kernel half-size + 1) + radius``
    (:func:`bf_halo`), ``max_width + 1`` more along x, boundary ``none`` (no charge
    flows through the detector edge); any chunking gives the same result.
    """
    depth = bf_halo(kernel, radius, n_iter)
    width = max(int(max_width), 0)
    k = np.asarray(kernel, dtype=np.float64)
    img = da.map_overlap(
        _bf_block,
        _dask(exp["image"]),
        _dask(exp["mask"]),
        depth={0: depth, 1: depth + (width + 1 if width else 0)},
        boundary="none",
        dtype=F32,
        meta=np.empty((0, 0), F32),
        kernel=k,
        threshold=threshold,
        radius=radius,
        n_iter=n_iter,
        bad_bit=int(mask_bits(mask_planes(exp), "BAD")),
        max_width=width,
    )
    return _add_steps(_with(exp, image=img), "brighter_fatter")


def _bf_block(
    image: NDArray[np.float32], mask: NDArray[np.int32], **kwargs: Any
) -> NDArray[np.float32]:
    return _kernels.bf_correct(image, mask=np.ascontiguousarray(mask, np.int32), **kwargs)


def divide_flat(exp: xr.Dataset, flat: xr.Dataset) -> xr.Dataset:
    """Divide by a master flat (variance by its square); a flat outside
    ``(_kernels.FLAT_MIN, _kernels.FLAT_MAX)`` (2⁻¹²⁰, 2¹²⁰) or not finite → BAD, 0.

    Notes
    -----
    Lazy, elementwise; no halo.
    """
    _check_same_shape(exp, flat, "flat")
    f = flat["image"].data
    ok = (f > F32(_kernels.FLAT_MIN)) & (f < F32(_kernels.FLAT_MAX))
    safe = da.where(ok, f, F32(1.0))
    bit = np.int32(mask_bits(mask_planes(exp), "BAD"))
    out = _with(
        exp,
        image=da.where(ok, _dask(exp["image"]) / safe, F32(0)).astype(F32),
        variance=da.where(ok, _dask(exp["variance"]) / (safe * safe), np.inf).astype(F32),
        mask=da.where(ok, _dask(exp["mask"]), _dask(exp["mask"]) | bit).astype(np.int32),
    )
    return _add_steps(out, "flat")


def fit_fringe_amplitude(
    exp: xr.Dataset,
    fringe: xr.Dataset,
    *,
    n_sigma: float = 3.0,
    bad_planes: Sequence[str] = ("BAD", "SAT", "UNMASKEDNAN"),
) -> da.Array:
    """Fringe amplitude of an exposure: least squares of ``I = plane + A F`` (0-d dask array).

    Sources are excluded (above ``sky + n_sigma √variance``, ``sky`` the median of the
    block medians) as are pixels in ``bad_planes``.

    Notes
    -----
    Lazy: a ``map_blocks`` of per-block 4×5 normal equations summed by one small
    reduction; needs the variance plane (run after :func:`apply_gain`). No halo.
    """
    _check_same_shape(exp, fringe, "fringe")
    img, var, msk = (_dask(exp[v]) for v in ("image", "variance", "mask"))
    frg = _dask(fringe["image"]).rechunk(img.chunks)
    bad = mask_bits(mask_planes(exp), list(bad_planes))
    meds = da.map_blocks(
        lambda b: np.atleast_2d(np.nanmedian(b)).astype(np.float64),
        img,
        chunks=((1,) * img.numblocks[0], (1,) * img.numblocks[1]),
        dtype=np.float64,
        meta=np.empty((0, 0), np.float64),
    )
    sky = da.median(meds.ravel(), axis=0)
    shape = img.shape

    def block(
        i: Any, v: Any, m: Any, f: Any, s: Any, block_info: dict[Any, Any] | None = None
    ) -> Any:
        (ya, _), (xa, _) = block_info[0]["array-location"] if block_info else ((0, 0), (0, 0))
        eq = _kernels.fringe_normal_equations(i, v, m, f, ya, xa, shape, float(s), n_sigma, bad)
        return eq[None, None]

    eqs = da.map_blocks(
        block,
        img,
        var,
        msk,
        frg,
        sky,
        new_axis=[2, 3],
        chunks=(1, 1, 4, 5),
        dtype=np.float64,
        meta=np.empty((0, 0, 0, 0), np.float64),
    )
    total = eqs.sum(axis=(0, 1))
    return da.map_blocks(
        lambda t: np.asarray(np.linalg.solve(t[:, :4], t[:, 4])[3]),
        total,
        drop_axis=[0, 1],
        chunks=(),
        dtype=np.float64,
        meta=np.empty((), np.float64),
    )


def remove_fringe(
    exp: xr.Dataset,
    fringe: xr.Dataset,
    *,
    amplitude: float | da.Array | None = None,
    n_sigma: float = 3.0,
) -> xr.Dataset:
    """Subtract ``amplitude × fringe`` (amplitude fitted per exposure when not given).

    The fringe frame should have zero mean: its constant part is degenerate with the sky.

    Notes
    -----
    Lazy: one small reduction for the amplitude (:func:`fit_fringe_amplitude`) then an
    elementwise subtraction; no halo.
    """
    amp = fit_fringe_amplitude(exp, fringe, n_sigma=n_sigma) if amplitude is None else amplitude
    frg = _dask(fringe["image"]).rechunk(_dask(exp["image"]).chunks)
    img = (_dask(exp["image"]) - amp * frg).astype(F32)
    out = _add_steps(_with(exp, image=img), "fringe")
    return out


def grow_mask_plane(exp: xr.Dataset, plane: str, radius: int) -> xr.Dataset:
    """Grow a mask plane by a square of half-size ``radius`` (e.g. SAT over bleed edges).

    Notes
    -----
    Lazy ``map_overlap`` with halo ``radius``; any chunking.
    """
    if radius <= 0:
        return exp
    bit = mask_bits(mask_planes(exp), plane)
    m = _dask(exp["mask"]).map_overlap(
        _kernels.grow_mask,
        depth=radius,
        boundary="none",
        dtype=np.int32,
        meta=np.empty((0, 0), np.int32),
        bit=bit,
        radius=radius,
    )
    return _with(exp, mask=m)


def interpolate_bad(
    exp: xr.Dataset,
    *,
    planes: Sequence[str] = ("BAD", "SAT", "UNMASKEDNAN"),
    max_width: int = 32,
) -> xr.Dataset:
    """Interpolate linearly along rows over masked runs ≤ ``max_width`` px; set INTRP.

    Notes
    -----
    Lazy ``map_overlap`` with halo ``max_width + 1`` along x only (a bad column needs
    its neighbours in the row); any chunking.
    """
    planes_map = mask_planes(exp)
    bad, intrp = mask_bits(planes_map, list(planes)), mask_bits(planes_map, "INTRP")
    stacked = da.stack(
        [_dask(exp["image"]), _dask(exp["variance"]), _dask(exp["mask"]).view(F32)]
    ).rechunk({0: 3})

    def block(s: NDArray[np.float32]) -> NDArray[np.float32]:
        img, var, m = _kernels.interpolate_rows(
            s[0], s[1], s[2].view(np.int32), bad, intrp, max_width
        )
        return np.stack([img, var, m.view(F32)])

    res = stacked.map_overlap(
        block,
        depth={0: 0, 1: 0, 2: max_width + 1},
        boundary="none",
        dtype=F32,
        meta=np.empty((0, 0, 0), F32),
    )
    out = _with(exp, image=res[0], variance=res[1], mask=res[2].view(np.int32))
    return _add_steps(out, "interpolate")


def _check_same_shape(exp: xr.Dataset, calib: xr.Dataset, what: str) -> None:
    if calib["image"].shape != exp["image"].shape:
        raise ValueError(
            f"{what} has shape {calib['image'].shape}, the exposure {exp['image'].shape}"
        )


# -- the fused chain ---------------------------------------------------------------------


def _row_chunks(ny: int, chunk_rows: int, min_rows: int = 0) -> tuple[int, ...]:
    """Row chunks of ``chunk_rows`` (a short last chunk below ``min_rows`` joins its neighbour)."""
    chunks = [min(chunk_rows, ny - y) for y in range(0, ny, chunk_rows)]
    if len(chunks) > 1 and chunks[-1] < max(min_rows, 1):
        chunks[-2] += chunks.pop()
    return tuple(chunks)


def _block_plan(
    lo: int, hi: int, chunks: Sequence[tuple[int, ...]]
) -> tuple[list[int], list[tuple[int, int, list[tuple[int, int]]]], list[int]]:
    """How a block reads its inputs, whatever their row chunks: for rows ``[lo, hi)`` (a
    block and its halo) and each input's row ``chunks``, how many of its chunks overlap
    them; the segments ``(s0, s1, at)`` of rows (from ``lo``) within which no input
    changes chunk, ``at`` giving each input's chunk (counted from the first that
    overlaps) and the segment's first row in it; and each input's first chunk."""
    # plain Python: a few chunks each, numpy's per-call cost dominated
    edges = [[0, *itertools.accumulate(int(c) for c in ch)] for ch in chunks]
    firsts = [bisect.bisect_right(e, lo) - 1 for e in edges]
    lasts = [bisect.bisect_right(e, hi - 1) - 1 for e in edges]
    cuts = {lo, hi}
    for e, first, last in zip(edges, firsts, lasts, strict=True):
        cuts.update(e[first + 1 : last + 1])
    segments = []
    for s0, s1 in itertools.pairwise(sorted(cuts)):
        at = []
        for e, first in zip(edges, firsts, strict=True):
            c = bisect.bisect_right(e, s0) - 1
            at.append((c - first, s0 - e[c]))
        segments.append((s0 - lo, s1 - lo, at))
    counts = [last - first + 1 for first, last in zip(firsts, lasts, strict=True)]
    return counts, segments, firsts


def _full_width(arr: da.Array, axis: int) -> da.Array:
    """``arr`` in one chunk along ``axis`` (its row chunks, along the other, kept)."""
    return arr if len(arr.chunks[axis]) == 1 else arr.rechunk({axis: -1})


def _mask_bits_array() -> NDArray[np.int32]:
    """(SAT, UNMASKEDNAN, BAD, INTRP) bits of the default mask planes."""
    from lsstlite.data.masks import DEFAULT_MASK_PLANES as planes

    return np.array([1 << planes[p] for p in ("SAT", "UNMASKEDNAN", "BAD", "INTRP")], np.int32)


def _chain_stack(
    raw: xr.Dataset,
    *,
    overscan: xr.DataArray | str | None,
    crosstalk: NDArray[np.floating] | None,
    bias: xr.Dataset | None,
    linearity: Any,
    dark: xr.Dataset | None,
    dark_time: float | None,
    flat: xr.Dataset | None,
    defects: pd.DataFrame | NDArray[np.integer] | None,
    do_saturation: bool,
    chunk_rows: int,
    local: Mapping[str, Any] | None = None,
) -> tuple[tuple[da.Array, da.Array, da.Array], list[str]]:
    """The ISR as image, variance and mask dask arrays (one task per block), and its steps.

    One task per block of full rows; it takes the chunks of each input (raw, overscan
    levels, calibrations, each chunked along rows as it comes) that its rows and halo
    overlap, and runs the chain on segments of rows within which no input changes chunk
    (:func:`_block_plan`). Without ``local`` it runs the fused per-pixel chain
    (the flat included when given). With ``local`` (keyword arguments of
    :func:`_kernels.isr_local_inplace` but ``bits``: ``bf_kernel``, ``bf_threshold``,
    ``bf_radius``, ``bf_n_iter``, ``grow``, ``interp_bits``, ``interp_max_width``) the
    same task then runs the neighbourhood steps: it recomputes the fused chain on ``halo``
    rows of each neighbouring block (the chain is row-local, so they equal the
    neighbour's) into one ``(3, halo + rows + halo, nx)`` buffer, the flat included. The
    kernel also says which rows may hold a pixel above ``bf_threshold`` and which mask
    bits each row has. BF acts before the flat: on boxes around the bright pixels
    (:func:`_kernels.bright_boxes`) the image times the flat is corrected and the pixels
    it changes are divided again (pixels whose flat is unusable get their value from the
    chain run again without the flat). SAT growth and interpolation visit only the rows
    whose bits call for them. The task returns its core rows: one pass over memory per
    block, no overlap concatenation.
    """
    geo = _readout_geometry(raw)
    ny, nx = geo["shape"]
    n_amps = geo["raw_x0"].size
    loc = dict(local or {})
    bf_kernel = loc.get("bf_kernel")
    if bf_kernel is not None:
        bf_kernel = np.asarray(bf_kernel, np.float64)
    halo = 0
    if loc:
        halo = max(int(loc["grow"]), 0)
        if bf_kernel is not None:
            halo = max(halo, bf_halo(bf_kernel, loc["bf_radius"], loc["bf_n_iter"]))
    row_chunks = _row_chunks(ny, max(chunk_rows, halo), halo)
    image = _full_width(_dask(raw["image"]), 1)
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise ValueError(f"raw {raw.attrs.get('filename', '')!r} has pixel type {image.dtype}")
    os_arr: da.Array | None = None
    os_cols: tuple[NDArray[np.int64], int] | None = None
    if isinstance(overscan, str):
        # per-row medians computed in each block from the raw rows it reads
        if overscan != "median_per_row":
            raise ValueError(
                f"overscan mode {overscan!r} needs the levels of every row: pass "
                "overscan_levels(raw, mode=...) instead"
            )
        amps = _amps(raw)
        widths = {a["serial_overscan"][3] - a["serial_overscan"][2] for a in amps}
        if {tuple(a["serial_overscan"][:2]) for a in amps} == {(0, image.shape[0])} and (
            len(widths) == 1 and min(widths) > 0
        ):
            os_cols = (
                np.array([a["serial_overscan"][2] for a in amps], np.int64),
                int(widths.pop()),
            )
        else:  # partial-height, unequal or missing overscans: the general way (or its error)
            overscan = overscan_levels(raw, mode="median_per_row")
    if overscan is None:
        os_arr = da.zeros((n_amps, ny), dtype=F32, chunks=(n_amps, row_chunks))
    elif not isinstance(overscan, str):
        os_arr = _full_width(_dask(overscan).astype(F32), 0)
    xt = np.zeros((n_amps, n_amps)) if crosstalk is None else np.asarray(crosstalk, np.float64)
    if xt.shape != (n_amps, n_amps):
        raise ValueError(f"crosstalk matrix has shape {xt.shape}, the raw has {n_amps} amplifiers")
    lin = np.zeros((n_amps, 3)) if linearity is None else _linearity_array(linearity)
    for name, cal in (("bias", bias), ("dark", dark), ("flat", flat)):
        if cal is not None and cal["image"].shape != (ny, nx):
            raise ValueError(
                f"{name} has shape {cal['image'].shape}, the assembled raw {exposure_label(raw)} "
                f"is {(ny, nx)}: a calibration of another detector or camera?"
            )
    flags = np.array(
        [
            overscan is not None,
            crosstalk is not None,
            bias is not None,
            linearity is not None,
            dark is not None,
            do_saturation,
            flat is not None,
        ]
    )
    no_flat = flags.copy()
    no_flat[6] = False
    bits = _mask_bits_array()
    t = _dark_time(raw, dark_time) if dark is not None else 0.0
    boxes = _boxes(defects) if defects is not None else np.zeros((0, 4), np.int64)
    outside = (
        (boxes[:, 0] >= nx)
        | (boxes[:, 1] >= ny)
        | (boxes[:, 0] + boxes[:, 2] <= 0)
        | (boxes[:, 1] + boxes[:, 3] <= 0)
    )
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"defects row {row} (x0, y0, width, height = {tuple(int(v) for v in boxes[row])}) "
            f"lies outside the {ny} × {nx} detector of raw {exposure_label(raw)} "
            f"({_rows(int(outside.sum()))}): defects of another detector?"
        )
    starts = np.cumsum((0, *row_chunks[:-1]))
    present = (bias is not None, dark is not None, flat is not None)
    cal_arrays = [
        _full_width(_dask(c["image"]).astype(F32), 1) for c in (bias, dark, flat) if c is not None
    ]
    empty = np.zeros((0, 0), F32)
    n_blocks = len(row_chunks)
    xt_groups = _kernels.crosstalk_groups(xt)
    bright = float(loc["bf_threshold"]) if bf_kernel is not None else np.inf
    bad_bit = int(bits[2])
    amp_spans = (np.asarray(geo["det_x0"], np.int64), int(geo["width"]))
    has_os = int(os_arr is not None)

    # BF sees the defects filled in (runs of up to the interpolation's longest), and its
    # boxes reach as much further as such a run is long
    fill_max = max(int(loc.get("interp_max_width", 0)), 0) if bf_kernel is not None else 0
    fill_run = _kernels.fill_width(boxes, None, 0, fill_max)

    def block(i: int, *parts: Any) -> NDArray[np.float32]:
        # the chunks of each input that the block's rows (and halo) overlap, as one flat
        # list of arguments; plans[i]: how many of each input's, and the segments of rows
        # within which no input changes chunk
        counts, segments, _ = plans[i]
        chunks, k = [], 0
        for c in counts:
            chunks.append(parts[k : k + c])
            k += c
        raw_p, *rest = chunks
        os_p, cal_p = (rest[0], rest[1:]) if os_arr is not None else (None, rest)
        top = halo if i > 0 else 0
        bottom = halo if i < n_blocks - 1 else 0
        rows = row_chunks[i]
        n = top + rows + bottom
        work = _BLOCKS.empty((3, n, nx), F32)
        msk = work[2].view(np.int32)
        row_bright = np.zeros(n, np.int64)  # bit a: amplifier a may have bright pixels
        row_bits = np.zeros(n, np.int32)
        # work rows [0, top) are the previous block's last rows, [top, top + rows) this
        # block's, then the next block's first rows

        def compute(lo: int, hi: int, with_flat: bool, into: Any = None) -> None:
            # the fused chain on work rows [lo, hi) (or into rows [0, hi - lo) of `into`,
            # without the defects), then the defects
            dest = work if into is None else into
            shift = 0 if into is None else lo
            for s0, s1, at in segments:
                a, b = max(lo, s0), min(hi, s1)
                if a >= b:
                    continue
                # each input's chunk and the rows of it: at[m] = (chunk, its first row)
                src = [slice(f + a - s0, f + b - s0) for _, f in at]
                it = iter(c[at[m][0]][src[m]] for m, c in enumerate(cal_p, 1 + has_os))
                cb, cd, cf = (next(it) if p else empty for p in present)
                use_flat = with_flat and flat is not None
                _kernels.isr_fused(
                    raw_p[at[0][0]][src[0]],
                    os_p[at[1][0]][:, src[1]] if os_p is not None else empty,
                    geo["raw_x0"],
                    geo["det_x0"],
                    geo["flip"],
                    geo["width"],
                    nx,
                    geo["gain"],
                    geo["read_noise"],
                    geo["saturation"],
                    lin,
                    xt_groups,
                    cb,
                    cd,
                    t,
                    cf if use_flat else empty,
                    flags if use_flat else no_flat,
                    bits,
                    out=dest[:, a - shift : b - shift],
                    bright=bright,
                    row_bright=None if into is not None else row_bright[a:b],
                    row_bits=None if into is not None else row_bits[a:b],
                    overscan_columns=os_cols,
                )
            if boxes.size and into is None:
                # not in row_bits: finish_rows interpolates through the boxes
                _kernels.mark_boxes(msk[lo:hi], boxes, int(starts[i]) - top + lo, bad_bit)

        if bf_kernel is None:
            compute(0, n, True)
        else:
            # The outer halo rows matter only through BF near the block's edge: first the
            # rows a bright pixel there would need, the rest if one is found
            near = min(halo, max(int(loc["grow"]), int(loc["bf_radius"])))
            compute(top - min(near, top), top + rows + min(near, bottom), True)
            if top and row_bright[top - near : top + halo].any():
                compute(0, top - near, True)
            if bottom and row_bright[top + rows - halo : top + rows + near].any():
                compute(top + rows + near, n, True)
        if not loc:
            return work
        work_boxes = boxes - np.array([0, int(starts[i]) - top, 0, 0])  # rows as in work
        if bf_kernel is not None and flat is None:
            _kernels.bf_correct_inplace(
                work[0],
                bf_kernel,
                threshold=loc["bf_threshold"],
                radius=loc["bf_radius"],
                n_iter=loc["bf_n_iter"],
                row_bright=row_bright,
                columns=amp_spans,
                max_width=fill_max,
                defects=work_boxes,
            )
        elif bf_kernel is not None:
            # BF acts before the flat: on boxes around bright pixels, the image times the
            # flat (the image before it, to the rounding; pixels whose flat is not usable
            # recomputed without it) is corrected, and the pixels it changes divided again
            def flat_rows(lo: int, hi: int) -> NDArray[np.float32]:
                parts = []
                for s0, s1, at in segments:
                    a, b = max(lo, s0), min(hi, s1)
                    if a < b:
                        c, f = at[-1]
                        parts.append(cal_p[-1][c][f + a - s0 : f + b - s0])
                return parts[0] if len(parts) == 1 else np.concatenate(parts)

            threshold = float(loc["bf_threshold"])
            margin = _kernels.bf_margin(bf_kernel, loc["bf_radius"], fill_run)
            radius, n_iter, nan_bit = int(loc["bf_radius"]), int(loc["bf_n_iter"]), int(bits[1])
            no_mask = np.zeros((0, 0), np.int32)
            for lo, hi in _kernels.row_bands(row_bright, margin):
                band = (work[0, lo:hi], work[1, lo:hi], msk[lo:hi], flat_rows(lo, hi))
                c0, c1 = max(lo, top) - lo, min(hi, top + rows) - lo  # this block's rows
                # the defects that reach the band's rows, in its rows
                band_boxes = work_boxes - np.array([0, lo, 0, 0])
                band_boxes = band_boxes[
                    (band_boxes[:, 1] < hi - lo) & (band_boxes[:, 1] + band_boxes[:, 3] > 0)
                ]
                left = _kernels.bf_band(
                    *band, row_bright[lo:hi], *amp_spans, threshold, margin, bf_kernel,
                    radius, n_iter, c0, c1, nan_bit, band_boxes, fill_max,
                )  # fmt: skip
                for y0, y1, x0, x1 in left:
                    # a box with pixels whose flat is not usable (or defects beside
                    # such pixels): their values before the flat from the chain run
                    # again without it
                    f_box = np.ascontiguousarray(band[3][y0:y1, x0:x1])  # as bf_band's
                    pre = np.empty((y1 - y0, x1 - x0), F32)
                    _kernels.unflat(band[0][y0:y1, x0:x1], f_box, pre)
                    redo = np.empty((3, y1 - y0, nx), F32)
                    compute(lo + y0, lo + y1, False, into=redo)
                    lost = ~((f_box > _kernels.FLAT_MIN) & (f_box < _kernels.FLAT_MAX))
                    pre[lost] = redo[0][:, x0:x1][lost]
                    filled = pre
                    wx0, wx1 = max(x0 - fill_max - 1, 0), min(x1 + fill_max + 1, nx)
                    member, found = _kernels.defect_members(
                        no_mask, 0, band_boxes, int(y0), int(y1), wx0, wx1
                    )
                    if found and fill_max > 0:
                        filled, _ = _kernels.fill_defects(
                            pre, member, wx0, int(x0), band[0][y0:y1], band[3][y0:y1],
                            redo[0], fill_max,
                        )  # fmt: skip
                    _kernels.bf_box_reflat(
                        *band[:3], f_box, pre, filled, int(y0), int(x0), c0, c1, bf_kernel,
                        threshold, radius, n_iter, nan_bit,
                    )  # fmt: skip
        _kernels.finish_rows(
            work[0],
            work[1],
            msk,
            row_bits,
            top,
            rows,
            int(bits[0]),
            int(loc["grow"]),
            int(loc["interp_bits"]) if loc["interp_max_width"] > 0 else 0,
            int(bits[3]),
            int(loc["interp_max_width"]),
            work_boxes,
        )
        return work[:, top : top + rows]

    inputs: list[Any] = [image, *([os_arr] if os_arr is not None else []), *cal_arrays]
    axes = [1 if arr is os_arr else 0 for arr in inputs]
    keys = [_row_keys(arr, ax) for arr, ax in zip(inputs, axes, strict=True)]
    input_rows = [arr.chunks[ax] for arr, ax in zip(inputs, axes, strict=True)]
    plans = []
    for i in range(n_blocks):
        lo = int(starts[i]) - (halo if i > 0 else 0)  # the block's rows and halo
        hi = int(starts[i]) + row_chunks[i] + (halo if i < n_blocks - 1 else 0)
        plans.append(_block_plan(lo, hi, input_rows))
    name = "isr-" + tokenize(
        raw.attrs.get("filename"),
        *inputs,
        overscan if isinstance(overscan, str) else None,
        xt,
        lin,
        flags,
        boxes,
        t,
        sorted(loc.items()),  # keys unique: values never compared
    )
    dsk: dict[Any, Any] = {}
    for i in range(n_blocks):
        args: list[Any] = []
        counts, _, firsts = plans[i]
        for ks, first, count in zip(keys, firsts, counts, strict=True):
            args += ks[first : first + count]  # flat: no nested tuple task per input
        dsk[(name, i)] = (block, i, *args)
    planes = []
    for k, dtype in enumerate((F32, F32, np.int32)):
        # plain indexing of the block (a view): dask's slicing would copy each plane. The
        # block tasks are in each plane's layer (same keys): computed once together.
        pname = f"{name}-{('image', 'variance', 'mask')[k]}"
        layer: dict[Any, Any] = {(pname, i, 0): (_plane, (name, i), k) for i in range(n_blocks)}
        graph = HighLevelGraph.from_collections(pname, {**dsk, **layer}, dependencies=inputs)
        planes.append(da.Array(graph, pname, chunks=(row_chunks, (nx,)), dtype=dtype))
    steps = ["saturation"] * do_saturation + ["overscan"] * (overscan is not None)
    steps += ["crosstalk"] * (crosstalk is not None) + ["assemble"]
    steps += ["bias"] * (bias is not None) + ["linearity"] * (linearity is not None)
    steps += ["gain", "variance", "nans"] + ["defects"] * (defects is not None)
    steps += ["dark"] * (dark is not None)
    if loc:
        steps += ["brighter_fatter"] * (bf_kernel is not None) + ["flat"] * (flat is not None)
    else:
        steps += ["flat"] * (flat is not None)
    return (planes[0], planes[1], planes[2]), steps


def _plane(block: NDArray[np.float32], k: int) -> NDArray[Any]:
    """Plane ``k`` of a ``(3, rows, nx)`` ISR block: image, variance, or the int32 mask."""
    return block[k].view(np.int32) if k == 2 else block[k]


def _exposure_from_planes(
    planes: tuple[da.Array, da.Array, da.Array],
    like: xr.Dataset,
    steps: list[str],
    amplifiers: bool = True,
) -> xr.Dataset:
    """The exposure of the planes, with ``like``'s WCS and visit info, its amplifier
    table when ``amplifiers`` (which later step-by-step ops need; the finished ISR's
    output leaves it out, as the task's ``post_isr`` does)."""
    attrs: dict[str, Any] = {"isr_steps": steps}
    if amplifiers:
        attrs = {"amplifiers": like.attrs.get("amplifiers"), **attrs}
    return make_exposure(
        planes[0],
        variance=planes[1],
        mask=planes[2],
        wcs=like.attrs.get("wcs") or None,
        visit_info=_visit_info(like.attrs),
        units="electron",
        attrs=attrs,
    )


def _row_keys(arr: da.Array, axis: int) -> list[Any]:
    """The keys of a 2-d dask array with one chunk across ``1 - axis``, one per row block."""
    keys: Any = arr.__dask_keys__()
    return [k[0] for k in keys] if axis == 0 else list(keys[0])


def _exposure_from_stack(
    stack: da.Array, like: xr.Dataset, steps: list[str], amplifiers: bool = True
) -> xr.Dataset:
    planes = (stack[0], stack[1], stack[2].view(np.int32))
    return _exposure_from_planes(planes, like, steps, amplifiers)


def isr_chain(
    raw: xr.Dataset,
    *,
    overscan: xr.DataArray | str | None = None,
    crosstalk: NDArray[np.floating] | None = None,
    bias: xr.Dataset | None = None,
    linearity: Any = None,
    dark: xr.Dataset | None = None,
    dark_time: float | None = None,
    defects: pd.DataFrame | NDArray[np.integer] | None = None,
    flat: xr.Dataset | None = None,
    do_saturation: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> xr.Dataset:
    """The per-pixel ISR of a raw in one fused kernel: raw ADU → electrons.

    Same result as :func:`mask_saturation`, :func:`subtract_overscan` (given ``overscan``
    levels), :func:`correct_crosstalk`, :func:`assemble`, :func:`subtract_bias`,
    :func:`apply_linearity`, :func:`apply_gain`, :func:`mask_nans`,
    :func:`mask_defects`, :func:`subtract_dark` and :func:`divide_flat` in sequence
    (to float32 rounding); a ``None`` argument skips its step. Pass ``flat`` only when
    no brighter-fatter correction follows (BF acts on electrons before the flat).
    ``overscan`` is the levels of :func:`overscan_levels`, or ``"median_per_row"`` to
    compute each row's medians in the block that reads the row (the same levels, without
    a pass and tasks of their own).

    Notes
    -----
    Lazy: one task per block of ``chunk_rows`` full rows (crosstalk pairs
    pixels of every amplifier of a row), reading the raw rows, the per-row overscan
    levels and the calibration rows; no halo. The output is chunked ``(chunk_rows, nx)``
    and its three planes are views of one ``(3, rows, nx)`` block (no copies).
    """
    out, steps = _chain_stack(
        raw,
        overscan=overscan,
        crosstalk=crosstalk,
        bias=bias,
        linearity=linearity,
        dark=dark,
        dark_time=dark_time,
        flat=flat,
        defects=defects,
        do_saturation=do_saturation,
        chunk_rows=chunk_rows,
    )
    return _exposure_from_planes(out, raw, steps)


def _local_stack(
    stack: da.Array,
    *,
    flat: xr.Dataset | None,
    bf_kernel: NDArray[np.floating] | None,
    bf_threshold: float,
    bf_radius: int,
    bf_n_iter: int,
    grow: int,
    interp_planes: Sequence[str] | None,
    interp_max_width: int,
    planes: Mapping[str, int],
) -> da.Array:
    """BF, flat, SAT growth and interpolation on a stacked ``(3, ny, nx)`` array, one pass."""
    halo = max(grow, bf_halo(bf_kernel, bf_radius, bf_n_iter) if bf_kernel is not None else 0)
    if bf_kernel is None and flat is None and grow == 0 and not interp_planes:
        return stack
    stack = stack.rechunk({0: 3, 2: -1})
    rows = stack.chunks[1]
    if halo and len(rows) > 1 and min(rows) < halo:
        stack = stack.rechunk({1: _row_chunks(stack.shape[1], max(rows[0], halo), halo)})
        rows = stack.chunks[1]
    bits = np.array(
        [mask_bits(planes, "SAT"), 0, mask_bits(planes, "BAD"), mask_bits(planes, "INTRP")],
        np.int32,
    )
    interp_bits = mask_bits(planes, list(interp_planes)) if interp_planes else 0
    kernel = None if bf_kernel is None else np.asarray(bf_kernel, np.float64)
    padded = (
        da.overlap.overlap(stack, depth={0: 0, 1: halo, 2: 0}, boundary="none") if halo else stack
    )
    n_blocks = len(rows)
    arrays: list[Any] = [padded, "vyx", da.from_array(np.arange(n_blocks), chunks=1), "y"]
    if flat is not None:
        _check_same_shape_arr(stack.shape[1:], flat, "flat")
        arrays += [_dask(flat["image"]).astype(F32).rechunk((rows, -1)), "yx"]

    def block(b: Any, idx: Any, f: Any = None) -> Any:
        i = int(idx[0])
        top = halo if (halo and i > 0) else 0
        bottom = halo if (halo and i < n_blocks - 1) else 0
        return _kernels.isr_local(
            b,
            f,
            top,
            bottom,
            bf_kernel=kernel,
            bf_threshold=bf_threshold,
            bf_radius=bf_radius,
            bf_n_iter=bf_n_iter,
            bits=bits,
            grow=grow,
            interp_bits=interp_bits,
            interp_max_width=interp_max_width,
        )

    return da.blockwise(
        block,
        "vyx",
        *arrays,
        adjust_chunks={"y": rows},
        align_arrays=False,
        concatenate=True,
        dtype=F32,
        meta=np.empty((0, 0, 0), F32),
    )


def _check_same_shape_arr(shape: tuple[int, ...], calib: xr.Dataset, what: str) -> None:
    if tuple(calib["image"].shape) != tuple(shape):
        raise ValueError(f"{what} has shape {calib['image'].shape}, the exposure {tuple(shape)}")


def _stack(exp: xr.Dataset) -> da.Array:
    return da.stack(
        [
            _dask(exp["image"]).astype(F32),
            _dask(exp["variance"]).astype(F32),
            _dask(exp["mask"]).astype(np.int32).view(F32),
        ]
    )


def isr_post_dark(
    exp: xr.Dataset,
    *,
    defects: pd.DataFrame | None = None,
    bf_kernel: NDArray[np.floating] | None = None,
    bf_threshold: float = 10_000.0,
    bf_radius: int = 12,
    bf_n_iter: int = 2,
    flat: xr.Dataset | None = None,
    fringe: xr.Dataset | None = None,
    fringe_n_sigma: float = 3.0,
    saturated_grow: int = 1,
    interpolate_planes: Sequence[str] | None = ("BAD", "SAT", "UNMASKEDNAN"),
    interp_max_width: int = 32,
) -> xr.Dataset:
    """The rest of the ISR after :func:`isr_chain`: defects, BF, flat, fringe, interpolation.

    A ``None`` argument skips its step. Same result as :func:`mask_defects`,
    :func:`correct_brighter_fatter`, :func:`divide_flat`, :func:`remove_fringe`,
    :func:`grow_mask_plane` (SAT) and :func:`interpolate_bad` in sequence.

    Notes
    -----
    Lazy. BF, flat, SAT growth and interpolation run in one ``blockwise`` pass over
    blocks of full rows with a y halo of ``max(saturated_grow, bf_halo)`` rows
    (:func:`bf_halo`; the interpolation runs along whole rows and needs no x halo). A
    fringe frame splits that pass in two around its amplitude fit (one small reduction).
    Chunks: rows as the input's (a chunk shorter than the halo is merged), x one chunk.
    """
    if defects is not None:
        exp = mask_defects(exp, defects)
    steps = list(exp.attrs.get("isr_steps", []))
    planes = mask_planes(exp)
    stack = _stack(exp)
    common: dict[str, Any] = {
        "bf_threshold": bf_threshold,
        "bf_radius": bf_radius,
        "bf_n_iter": bf_n_iter,
        "interp_max_width": interp_max_width,
        "planes": planes,
    }
    steps += ["brighter_fatter"] * (bf_kernel is not None) + ["flat"] * (flat is not None)
    if fringe is not None:
        stack = _local_stack(
            stack, flat=flat, bf_kernel=bf_kernel, grow=0, interp_planes=None, **common
        )
        mid = _exposure_from_stack(stack, exp, steps)
        mid = remove_fringe(mid, fringe, n_sigma=fringe_n_sigma)
        steps = list(mid.attrs["isr_steps"])
        stack = _stack(mid)
        flat, bf_kernel = None, None
    stack = _local_stack(
        stack,
        flat=flat,
        bf_kernel=bf_kernel,
        grow=saturated_grow,
        interp_planes=interpolate_planes,
        **common,
    )
    steps += ["interpolate"] * bool(interpolate_planes)
    return _exposure_from_stack(stack, exp, steps)


def isr_stacked(
    raw: xr.Dataset,
    *,
    overscan: xr.DataArray | str | None = None,
    crosstalk: NDArray[np.floating] | None = None,
    bias: xr.Dataset | None = None,
    linearity: Any = None,
    dark: xr.Dataset | None = None,
    dark_time: float | None = None,
    defects: pd.DataFrame | NDArray[np.integer] | None = None,
    bf_kernel: NDArray[np.floating] | None = None,
    bf_threshold: float = 10_000.0,
    bf_radius: int = 12,
    bf_n_iter: int = 2,
    flat: xr.Dataset | None = None,
    fringe: xr.Dataset | None = None,
    fringe_n_sigma: float = 3.0,
    do_saturation: bool = True,
    saturated_grow: int = 1,
    interpolate_planes: Sequence[str] | None = ("BAD", "SAT", "UNMASKEDNAN"),
    interp_max_width: int = 32,
    chunk_rows: int = DEFAULT_BLOCK_ROWS,
) -> xr.Dataset:
    """The whole ISR in one pass over the pixels; the task's path.

    Same result as :func:`isr_chain` followed by :func:`isr_post_dark`. ``overscan`` as
    in :func:`isr_chain` (levels, or ``"median_per_row"`` computed in each block).

    Notes
    -----
    Lazy: one task per block of ``chunk_rows`` full rows (see :func:`_chain_stack`),
    which reads the chunks of the raw and the calibrations its rows overlap, however they
    are chunked (no rechunking). With BF or SAT growth each task recomputes the row-local
    chain on a halo of ``max(saturated_grow, bf_halo)`` rows of its neighbours' raw rows
    (a short last block is merged into its neighbour so that every block is at least a
    halo high). The flat
    is applied in the same pass; BF then corrects boxes around pixels above
    ``bf_threshold``, on the image times the flat, and divides the pixels it changes
    again. SAT growth and interpolation visit only the rows whose mask calls for them. One
    ``(3, rows, nx)`` buffer per block, lent again once Dask has let go of it. A fringe
    frame adds one reduction (its amplitude) and a second pass for the steps after it.
    The output has no amplifier table (``attrs["amplifiers"]``): it is assembled.
    """
    from lsstlite.data.masks import DEFAULT_MASK_PLANES as planes

    interp_bits = mask_bits(planes, list(interpolate_planes)) if interpolate_planes else 0
    local = {
        "bf_kernel": None if bf_kernel is None else np.asarray(bf_kernel, np.float64),
        "bf_threshold": bf_threshold,
        "bf_radius": bf_radius,
        "bf_n_iter": bf_n_iter,
        "grow": 0 if fringe is not None else saturated_grow,
        "interp_bits": 0 if fringe is not None else interp_bits,
        "interp_max_width": interp_max_width,
    }
    out, steps = _chain_stack(
        raw,
        overscan=overscan,
        crosstalk=crosstalk,
        bias=bias,
        linearity=linearity,
        dark=dark,
        dark_time=dark_time,
        flat=flat,
        defects=defects,
        do_saturation=do_saturation,
        chunk_rows=chunk_rows,
        local=local,
    )
    if fringe is None:
        steps += ["interpolate"] * bool(interpolate_planes)
        return _exposure_from_planes(out, raw, steps, amplifiers=False)
    # the fringe amplitude is a reduction over the detector: a second pass after it
    mid = remove_fringe(_exposure_from_planes(out, raw, steps), fringe, n_sigma=fringe_n_sigma)
    stack = _local_stack(
        _stack(mid),
        flat=None,
        bf_kernel=None,
        bf_threshold=bf_threshold,
        bf_radius=bf_radius,
        bf_n_iter=bf_n_iter,
        grow=saturated_grow,
        interp_planes=interpolate_planes,
        interp_max_width=interp_max_width,
        planes=dict(planes),
    )
    steps = list(mid.attrs["isr_steps"]) + ["interpolate"] * bool(interpolate_planes)
    return _exposure_from_stack(stack, raw, steps, amplifiers=False)
