"""Formatters: how each storage class is written to and read from storage.

Each dataset owns a directory ``<root>/runs/<run>/<type>/<data id path>/``
holding its payload (the names below) and ``_dataset.json`` (written last).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr

from ._storage import TRANSFER_MODES, Storage

__all__ = ["TRANSFER_MODES", "read_payload", "write_payload"]

PAYLOAD_NAMES = {"Exposure": "image.zarr", "Table": "table.parquet", "Json": "data.json"}


def _write_exposure(ds: Any, url: str) -> None:
    if not isinstance(ds, xr.Dataset):
        raise TypeError(
            f"storage class 'Exposure' takes an xarray.Dataset, got {type(ds).__name__}"
        )
    try:
        from lsstlite.data import write_exposure_zarr
    except ImportError:  # the data model module is not there yet: plain xarray
        ds.to_zarr(url, mode="w", zarr_format=3, consolidated=False)
    else:
        write_exposure_zarr(ds, url, overwrite=True)


def _open_exposure(url: str) -> xr.Dataset:
    try:
        from lsstlite.data import open_exposure_zarr
    except ImportError:
        return xr.open_zarr(url, consolidated=False, zarr_format=3)
    return open_exposure_zarr(url)


def _table_bytes(obj: Any) -> bytes:
    if isinstance(obj, pd.DataFrame):
        table = pa.Table.from_pandas(obj)
    elif isinstance(obj, pa.Table):
        table = obj
    else:
        raise TypeError(
            "storage class 'Table' takes a pandas.DataFrame or pyarrow.Table, got "
            f"{type(obj).__name__}"
        )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def transfer_file(src: str, dst: str, mode: str) -> None:
    """Transfer a local file into the repository (``copy``/``link``/``symlink``/``move``).

    ``link`` makes a hard link and falls back to a copy across filesystems.
    """
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        os.unlink(dst)
    if mode == "copy":
        shutil.copyfile(src, dst)
    elif mode == "link":
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            shutil.copyfile(src, dst)
    elif mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
    elif mode == "move":
        shutil.move(src, dst)
    else:
        raise ValueError(f"transfer mode {mode!r} is not one of {', '.join(TRANSFER_MODES)}")


def write_payload(
    storage: Storage,
    storage_class: str,
    obj: Any,
    rel_dir: str,
    *,
    transfer: str = "copy",
) -> str:
    """Write ``obj`` into ``rel_dir``; return the payload path stored in the registry.

    The returned path is relative to the repository root, except for raws
    ingested with ``transfer='direct'`` (an absolute path or URL).
    """
    if storage_class == "Exposure":
        rel = f"{rel_dir}/{PAYLOAD_NAMES['Exposure']}"
        _write_exposure(obj, storage.url(rel))
        return rel
    if storage_class == "Table":
        rel = f"{rel_dir}/{PAYLOAD_NAMES['Table']}"
        storage.write_atomic(rel, _table_bytes(obj))
        return rel
    if storage_class == "Json":
        if not isinstance(obj, dict):
            raise TypeError(f"storage class 'Json' takes a dict, got {type(obj).__name__}")
        rel = f"{rel_dir}/{PAYLOAD_NAMES['Json']}"
        storage.write_atomic(rel, json.dumps(obj, sort_keys=True).encode())
        return rel
    if storage_class == "Raw":
        if not isinstance(obj, str | os.PathLike):
            raise TypeError(
                f"storage class 'Raw' takes the path of a raw file, got {type(obj).__name__}"
            )
        src = os.fspath(obj)
        if transfer == "direct":
            return os.path.abspath(src) if "://" not in src else src
        if not storage.is_local:
            if transfer != "copy":
                raise ValueError(f"transfer={transfer!r} needs a local repository; use 'copy'")
            rel = f"{rel_dir}/{os.path.basename(src)}"
            with open(src, "rb") as f:
                storage.write_atomic(rel, f.read())
            return rel
        rel = f"{rel_dir}/{os.path.basename(src)}"
        transfer_file(src, storage.local_path(rel), transfer)
        return rel
    raise ValueError(f"unknown storage class {storage_class!r}")


def payload_url(storage: Storage, path: str) -> str:
    """Absolute location of a payload path from the registry."""
    if path.startswith("/") or "://" in path:
        return path
    return storage.url(path)


def read_payload(
    storage: Storage, storage_class: str, path: str, parameters: dict[str, Any] | None = None
) -> Any:
    """Read a payload. Images are lazy; tables are pandas; raws are a path."""
    parameters = dict(parameters or {})
    url = payload_url(storage, path)
    if storage_class == "Exposure":
        return _open_exposure(url)
    if storage_class == "Table":
        columns = parameters.pop("columns", None)
        if storage.is_local or path.startswith("/"):
            table = pq.read_table(url, columns=columns)
        else:
            table = pq.read_table(io.BytesIO(storage.read_bytes(path)), columns=columns)
        return table.to_pandas()
    if storage_class == "Json":
        if path.startswith("/"):
            with open(path, "rb") as f:
                return json.loads(f.read())
        return json.loads(storage.read_bytes(path))
    if storage_class == "Raw":
        return url
    raise ValueError(f"unknown storage class {storage_class!r}")
