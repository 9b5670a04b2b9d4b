"""Exposure I/O: zarr (chunked, lazy) and multi-extension FITS (for ds9, astropy, humans).

Both formats round-trip exactly: pixels bit for bit, attrs as the same JSON.

FITS layout (what :func:`write_exposure_fits` writes)
------------------------------------------------------
- HDU 0 (no data): readable keywords (INSTRUME, EXPNUM, DETECTOR, FILTER, BAND, EXPTIME,
  MJD-OBS, AIRMASS, BUNIT, MAGZERO) for people and other tools;
- ``IMAGE`` (float32), ``MASK`` (int32, with ``MP_<PLANE> = bit`` keywords as LSST's afw
  writes them), ``VARIANCE`` (float32): each with the WCS shifted to the file's own pixel
  grid (so ds9 and astropy place it right) and ``LTV1``/``LTV2`` giving the parent offset;
- ``METADATA``: the exact attrs as UTF-8 JSON bytes (a 1-D uint8 image), which the reader
  uses so that nothing is lost to FITS keyword rules.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from lsstlite.data._zarr_chunks import local_store_root, open_stored_group
from lsstlite.data.exposure import AB_NJY_ZERO_POINT, validate_exposure
from lsstlite.data.masks import mask_planes

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "DEFAULT_CHUNKS",
    "ExposureReadError",
    "open_exposure_zarr",
    "read_exposure_fits",
    "write_exposure_fits",
    "write_exposure_zarr",
]

#: Default chunk shape (y, x) of stored exposures.
DEFAULT_CHUNKS = (1024, 1024)

#: dtype kinds stored without compression (the rest: zarr's default, zstd). On a calexp
#: of the ``ci`` simulation zstd kept 93% of the image's bytes and 79% of the variance's,
#: and decoding a 1024² float32 chunk took ~4 ms (~1 GB/s): 45% of the time of a coadd
#: that reads each chunk several times. The mask and the coordinates compress ~250×.
UNCOMPRESSED_KINDS = "f"


class ExposureReadError(ValueError):
    """An exposure file could not be read; the message names the file and the problem."""


def _chunk_spec(ds: xr.Dataset, chunks: tuple[int, int] | None) -> dict[str, int]:
    cy, cx = chunks or DEFAULT_CHUNKS
    return {"y": min(cy, ds.sizes["y"]), "x": min(cx, ds.sizes["x"])}


def write_exposure_zarr(
    ds: xr.Dataset,
    store: str | os.PathLike[str] | zarr.Group | Any,
    *,
    path: str | None = None,
    chunks: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> None:
    """Write an exposure to a zarr v3 group (computes the exposure if it is lazy).

    Parameters
    ----------
    ds
        The exposure.
    store
        A directory path, an fsspec URL, or a zarr store.
    path
        Group inside the store (default: the root).
    chunks
        Stored chunk shape ``(y, x)``; default :data:`DEFAULT_CHUNKS` clipped to the image.
    overwrite
        Replace an existing group; otherwise writing over one raises ``FileExistsError``.
    """
    validate_exposure(ds)
    spec = _chunk_spec(ds, chunks)
    out = ds.chunk(spec)
    for name in out.variables:
        # No _FillValue: pixels are never "missing" in zarr's sense (NO_DATA is a mask plane),
        # and xarray would otherwise turn masked ints into floats on read.
        out[name].encoding = {"_FillValue": None}
        if out[name].dtype.kind in UNCOMPRESSED_KINDS:
            out[name].encoding["compressors"] = None
    if isinstance(store, os.PathLike):
        store = os.fspath(store)
    try:
        # the metadata and coordinates now; the planes' chunks below
        writes = out.to_zarr(
            store,
            group=path,
            mode="w" if overwrite else "w-",
            zarr_format=3,
            consolidated=False,
            compute=False,
        )
    except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as exc:
        where = f"{store}" + (f" group {path!r}" if path else "")
        raise FileExistsError(
            f"{where} already holds data; pass overwrite=True to replace it"
        ) from exc
    root = local_store_root(store)
    chunk_writes = None if root is None else _chunk_writes(ds, root / path if path else root)
    if chunk_writes is None:
        writes.compute()
    else:
        import dask

        dask.compute(*chunk_writes)


def _chunk_writes(ds: xr.Dataset, group_dir: Path) -> list[Any] | None:
    """Delayed writes of the planes of ``ds`` into the stored chunks of the group that
    ``to_zarr`` has just laid out at ``group_dir``: one task per stored chunk (all three
    planes), taking the blocks of ``ds`` it overlaps as they are. None when a plane's
    layout is not one :mod:`lsstlite.data._zarr_chunks` writes.

    Through xarray and zarr, each chunk of each plane was a task of its own after a
    rechunk to the stored chunks, and went through zarr's asyncio loop: 185 ms to store a
    computed 4096² exposure on two threads.
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    from lsstlite.data._zarr_chunks import chunk_boxes, stored_array, write_chunk_from_blocks

    names = ("image", "variance", "mask")
    if set(ds.data_vars) != set(names):  # other variables: xarray writes them all
        return None
    found = [stored_array(group_dir / n) for n in names]
    stores = [s for s in found if s is not None]
    if len(stores) != len(names):
        return None
    planes = [ds[n].data for n in names]
    # (an in-memory plane: one block, named without hashing its pixels)
    planes = [p if isinstance(p, da.Array) else da.from_array(p, -1, name=False) for p in planes]
    planes = [p.rechunk(planes[0].chunks) for p in planes]
    ey, ex = (np.cumsum((0, *c)) for c in planes[0].chunks)
    cy, cx = stores[0].chunk_shape
    name = "write-exposure-" + tokenize(str(group_dir), *planes)
    dsk: dict[Any, Any] = {}
    ny, nx = planes[0].shape
    for (si, sj), (box, blocks) in chunk_boxes((ny, nx), (cy, cx), (ey, ex)).items():
        dsk[(name, si, sj)] = (
            write_chunk_from_blocks,
            stores,
            [s.fill for s in stores],
            (si, sj),
            box,
            [(int(ey[i]), int(ex[j]), int(ey[i + 1]), int(ex[j + 1])) for i, j in blocks],
            [(tuple, [(p.name, i, j) for p in planes]) for i, j in blocks],
        )
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=planes)
    return [Delayed(key, graph, layer=name) for key in dsk]


def open_exposure_zarr(
    store: str | os.PathLike[str] | zarr.Group | Any,
    *,
    path: str | None = None,
    chunks: Mapping[str, int] | None = None,
) -> xr.Dataset:
    """Open an exposure written by :func:`write_exposure_zarr`, lazily (dask-backed).

    ``chunks`` defaults to the stored chunks; then an exposure in a local directory is
    opened without xarray's zarr backend and its planes are read one stored chunk per
    task straight from their files (``lsstlite.data._zarr_chunks``; the same dataset).
    """
    if isinstance(store, os.PathLike):
        store = os.fspath(store)
    root = local_store_root(store) if chunks is None else None
    # A local directory in zarr's default layout: planes read one stored chunk per task
    # straight from their files (see _zarr_chunks), the dataset built without xarray's
    # backend (same variables, attrs and values; a fraction of the cost). Else xarray.
    ds = open_stored_group(root / path if path else root) if root is not None else None
    if ds is None:
        try:
            import xarray as xr

            ds = xr.open_zarr(
                store,
                group=path,
                consolidated=False,
                zarr_format=3,
                chunks=dict(chunks) if chunks is not None else {},
                mask_and_scale=False,
                decode_times=False,
            )
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as exc:
            where = f"{store}" + (f" group {path!r}" if path else "")
            raise ExposureReadError(f"no exposure at {where}: {exc}") from exc
        for name in ds.variables:
            ds[name].attrs.pop("_FillValue", None)
    validate_exposure(ds, what=f"exposure at {store}")
    return ds


def _shifted_wcs_header(cards: Mapping[str, Any], x0: int, y0: int) -> fits.Header:
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    for axis, offset in ((1, x0), (2, y0)):
        key = f"CRPIX{axis}"
        if key in header and offset:
            header[key] = float(header[key]) - offset
    if x0 or y0:
        header["LTV1"] = (-x0, "parent x of this file's pixel 0 is -LTV1")
        header["LTV2"] = (-y0, "parent y of this file's pixel 0 is -LTV2")
    return header


def _primary_header(attrs: Mapping[str, Any]) -> fits.Header:
    header = fits.Header()
    vi = attrs.get("visit_info") or {}
    keys = {
        "INSTRUME": "instrument",
        "EXPNUM": "exposure",
        "VISIT": "visit",
        "DETECTOR": "detector",
        "FILTER": "physical_filter",
        "BAND": "band",
        "OBSTYPE": "obs_type",
        "EXPTIME": "exptime",
        "MJD-OBS": "mjd",
        "AIRMASS": "airmass",
    }
    for card, field in keys.items():
        if vi.get(field) is not None:
            header[card] = vi[field]
    header["BUNIT"] = attrs.get("units", "")
    pc = attrs.get("photo_calib")
    if pc:
        # counts → nJy scale as an AB zero point of one count
        header["MAGZERO"] = (
            AB_NJY_ZERO_POINT - 2.5 * np.log10(pc["njy_per_count"]),
            "AB mag of one count",
        )
    header["ORIGIN"] = "lsstlite"
    return header


def write_exposure_fits(
    ds: xr.Dataset, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write an exposure as multi-extension FITS (IMAGE, MASK, VARIANCE, METADATA).

    The file is written to a temporary name and renamed, so a crash never leaves a
    truncated file under ``path``. Computes lazy exposures.
    """
    validate_exposure(ds)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    x0, y0 = int(ds["x"].values[0]), int(ds["y"].values[0])
    wcs_header = _shifted_wcs_header(ds.attrs.get("wcs") or {}, x0, y0)
    hdus: list[Any] = [fits.PrimaryHDU(header=_primary_header(ds.attrs))]
    for name in ("image", "mask", "variance"):
        header = wcs_header.copy()
        if name == "mask":
            for plane, bit in sorted(mask_planes(ds).items(), key=lambda kv: kv[1]):
                key = f"MP_{plane}"
                # Names longer than 8 characters need the HIERARCH convention (as afw writes).
                header[key if len(key) <= 8 else f"HIERARCH {key}"] = bit
        hdus.append(fits.ImageHDU(np.asarray(ds[name].values), header=header, name=name.upper()))
    metadata = {
        "attrs": ds.attrs,
        "variable_attrs": {name: ds[name].attrs for name in ("image", "mask", "variance")},
        "xy0": [x0, y0],
    }
    payload = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    hdus.append(fits.ImageHDU(payload, name="METADATA"))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(tmp, overwrite=True)
    os.replace(tmp, path)
    return path


def read_exposure_fits(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read an exposure written by :func:`write_exposure_fits` (eagerly, into memory).

    Raises
    ------
    ExposureReadError
        Naming the file and the missing or unreadable part.
    """
    from lsstlite.data.exposure import make_exposure

    path = Path(path)
    try:
        # astropy only *warns* about a truncated file and returns partial data: record the
        # warnings (raising inside fits.open would leak the open file) and fail on them.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AstropyUserWarning)
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                names = [h.name for h in hdul]
                arrays = {
                    ext: np.array(hdul[ext].data)
                    for ext in ("IMAGE", "MASK", "VARIANCE")
                    if ext in names
                }
                raw_meta = (
                    bytes(np.asarray(hdul["METADATA"].data, dtype=np.uint8))
                    if "METADATA" in names
                    else b""
                )
    except (OSError, ValueError, TypeError) as exc:
        raise ExposureReadError(f"{path}: not a readable FITS exposure ({exc})") from exc
    for w in caught:
        if issubclass(w.category, AstropyUserWarning) and "truncated" in str(w.message):
            raise ExposureReadError(f"{path}: truncated FITS file ({w.message})")
    for ext in ("IMAGE", "MASK", "VARIANCE", "METADATA"):
        if ext not in names:
            raise ExposureReadError(f"{path}: missing extension {ext!r} (has {names})")
    try:
        meta = json.loads(raw_meta.decode("utf-8"))
    except ValueError as exc:
        raise ExposureReadError(f"{path}: METADATA extension is not valid JSON ({exc})") from exc
    attrs = dict(meta["attrs"])
    var_attrs = meta["variable_attrs"]
    ds = make_exposure(
        arrays["IMAGE"],
        mask=arrays["MASK"],
        variance=arrays["VARIANCE"],
        units=attrs.get("units", "electron"),
        xy0=(int(meta["xy0"][0]), int(meta["xy0"][1])),
        mask_planes=var_attrs["mask"]["planes"],
    )
    ds.attrs = attrs
    for name in ("image", "mask", "variance"):
        ds[name].attrs = var_attrs[name]
    return ds
