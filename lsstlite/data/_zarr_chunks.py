"""Stored zarr v3 chunks of a local directory store, read straight into a Dask array
(or into a :class:`StoredGroup`, without xarray), and written the way zarr writes them
(:meth:`StoredArray.write`, :func:`create_stored_group`: the coadd command's output).

Why: through xarray's lazily-indexed adapters and zarr's asyncio event loop, reading a
stored chunk cost ~6× the file read and the zstd decode themselves (10 calexps of
2048², 3 planes in 512² chunks: 1.76 s against 0.29 s on one thread), and the coadd
spent ~40% of its task time waiting on that loop. Here one Dask task per stored chunk
reads the file and decodes it; nothing else. Only the layout zarr itself writes by
default is taken (regular chunk grid, ``default``/``v2`` chunk keys, the ``bytes`` codec
optionally followed by ``zstd``, no storage transformers, a numeric fill value); anything
else returns None and the caller keeps zarr's own reader. A chunk that was never written
(zarr skips chunks equal to the fill value) reads as the fill value, as in zarr.

A task that needs parts of several stored chunks (a coadd's output chunk maps to a region
across up to four chunks of each input) can read them itself through
:func:`stored_source` instead of depending on their read tasks: then no chunk is held by
the scheduler between tasks, and a small per-process cache of decoded chunks
(a byte budget the graph carries; default :data:`CHUNK_CACHE_BYTES`, off) keeps
neighbouring tasks from decoding the same chunk again:
a chunk leaves it when the tasks of its graph have read it as often as the graph said,
or, least recently used first, when the budget is full, or after
:data:`CHUNK_CACHE_IDLE_S` without a read; an emptied cache gives the freed heap back to
the system.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CHUNK_CACHE_BYTES",
    "CHUNK_CACHE_IDLE_S",
    "StoredArray",
    "StoredGroup",
    "StoredVariable",
    "cache_budget",
    "create_stored_group",
    "local_store_root",
    "open_stored_group",
    "read_stored_group",
    "stored_array",
    "stored_chunks_array",
    "stored_source",
]

#: Default byte budget of the per-process cache of decoded chunks that tasks reading
#: through :func:`stored_source` share; 0: off (each task decodes what it reads). Dask
#: config ``lsstlite.chunk-cache-bytes`` overrides it when a graph is built; the budget
#: travels with the graph's tasks.
CHUNK_CACHE_BYTES = 0


def local_store_root(store: Any) -> Path | None:
    """The directory of a store given as a local path (or ``file://`` URL), else None."""
    if isinstance(store, os.PathLike):
        store = os.fspath(store)
    if not isinstance(store, str):
        return None
    if store.startswith("file://"):
        store = store[len("file://") :]
    elif "://" in store or "::" in store:
        return None
    root = Path(store)
    return root if root.is_dir() else None


def _fill_value(value: Any, dtype: np.dtype[Any]) -> Any:
    specials = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
    if isinstance(value, str):
        if value not in specials or dtype.kind != "f":
            raise ValueError(f"fill value {value!r}")
        return specials[value]
    if isinstance(value, bool | int | float):
        return dtype.type(value)
    raise ValueError(f"fill value {value!r}")


def _layout(meta: dict[str, Any]) -> tuple[np.dtype[Any], tuple[int, ...], str, bool, Any] | None:
    """``(dtype, chunk_shape, key separator or "v2", zstd, fill)`` if this reader can take
    the array, else None."""
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        return None
    if meta.get("storage_transformers"):
        return None
    grid = meta.get("chunk_grid") or {}
    if grid.get("name") != "regular":
        return None
    chunk_shape = tuple(int(c) for c in grid["configuration"]["chunk_shape"])
    enc = meta.get("chunk_key_encoding") or {}
    sep = (enc.get("configuration") or {}).get("separator")
    if enc.get("name") == "default":
        key = sep or "/"
    elif enc.get("name") == "v2":
        key = "v2:" + (sep or ".")
    else:
        return None
    codecs = meta.get("codecs") or []
    if not codecs or codecs[0].get("name") != "bytes" or len(codecs) > 2:
        return None
    zstd = len(codecs) == 2
    if zstd and codecs[1].get("name") != "zstd":
        return None
    if not isinstance(meta.get("data_type"), str):
        return None
    try:
        dtype = np.dtype(meta["data_type"])
        fill = _fill_value(meta.get("fill_value"), dtype)
    except (TypeError, ValueError):
        return None
    if dtype.kind not in "biuf":
        return None
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    return dtype, chunk_shape, key, zstd, fill


def _chunk_key(index: tuple[int, ...], key: str) -> str:
    if key.startswith("v2:"):
        return key[3:].join(str(i) for i in index) or "0"
    return key.join(("c", *(str(i) for i in index)))


def read_stored_chunk(
    path: str,
    chunk_shape: tuple[int, ...],
    shape: tuple[int, ...],
    dtype: str,
    zstd: bool,
    fill: Any,
    writable: bool = True,
) -> NDArray[Any]:
    """One stored chunk (``shape``: its part inside the array); with ``writable=False``
    a read-only array, and an unwritten chunk a broadcast of its fill value (no memory)."""
    dt = np.dtype(dtype)
    try:
        f = open(path, "rb")  # closed by the with block below
    except FileNotFoundError:
        if not writable:
            return np.broadcast_to(np.array(fill, dtype=dt.newbyteorder("=")), shape)
        return np.full(shape, fill, dtype=dt.newbyteorder("="))
    out = np.empty(chunk_shape, dtype=dt)
    with f:
        if zstd:
            from numcodecs import Zstd

            try:
                Zstd().decode(f.read(), out=out)
            except Exception as exc:  # numcodecs raises RuntimeError/ValueError by version
                raise OSError(f"zarr chunk {path}: cannot decode ({exc})") from exc
        else:  # straight into the array: no intermediate bytes
            n = f.readinto(out.reshape(-1).view(np.uint8).data)
            if n != out.nbytes or f.read(1):
                size = os.fstat(f.fileno()).st_size
                raise OSError(f"zarr chunk {path}: {size} bytes, expected {out.nbytes}")
    if not dt.isnative:
        out = out.astype(dt.newbyteorder("="))
    if tuple(shape) != chunk_shape:
        out = np.ascontiguousarray(out[tuple(slice(0, n) for n in shape)])
    out.flags.writeable = writable
    return out


def stored_array(array_dir: Path) -> StoredArray | None:
    """The zarr v3 array at ``array_dir`` as a :class:`StoredArray` (its chunks read on
    demand; registered for :func:`stored_source`), or None if its layout is not one this
    reader takes (see the module docstring)."""
    from dask.base import tokenize

    meta_path = array_dir / "zarr.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    layout = _layout(meta)
    if layout is None:
        return None
    dtype, chunk_shape, key, zstd, fill = layout
    shape = tuple(int(n) for n in meta["shape"])
    if len(shape) != len(chunk_shape) or 0 in shape:
        return None
    chunks = tuple(
        tuple(min(c, n - k) for k in range(0, n, c))
        for n, c in zip(shape, chunk_shape, strict=True)
    )
    token = tokenize(str(array_dir), meta_path.stat().st_mtime_ns, shape, chunk_shape, str(dtype))
    name = f"zarr-{array_dir.name}-{token}"
    src = _SOURCES[name] = StoredArray(
        name, str(array_dir), chunk_shape, chunks, dtype.str, zstd, fill, key
    )
    return src


def stored_chunks_array(array_dir: Path) -> Any:
    """A Dask array with one task per stored chunk of the zarr v3 array at ``array_dir``,
    or None if its layout is not one this reader takes (see the module docstring)."""
    src = stored_array(array_dir)
    return None if src is None else src.to_dask()


@dataclass(frozen=True)
class StoredArray:
    """Where and how the stored chunks of one array are read."""

    name: str
    directory: str
    chunk_shape: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    dtype: str
    zstd: bool
    fill: Any
    key: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(sum(c) for c in self.chunks)

    @property
    def ndim(self) -> int:
        return len(self.chunks)

    @property
    def native_dtype(self) -> np.dtype[Any]:
        """The dtype of the chunks as read (native byte order)."""
        return np.dtype(self.dtype).newbyteorder("=")

    def to_dask(self) -> Any:
        """A Dask array with one task per stored chunk."""
        import dask.array as da
        from dask.highlevelgraph import HighLevelGraph

        dsk: dict[Any, Any] = {}
        for index in np.ndindex(*(len(c) for c in self.chunks)):
            part = tuple(self.chunks[axis][i] for axis, i in enumerate(index))
            dsk[(self.name, *index)] = (
                read_stored_chunk,
                os.path.join(self.directory, _chunk_key(index, self.key)),
                self.chunk_shape,
                part,
                self.dtype,
                self.zstd,
                self.fill,
            )
        graph = HighLevelGraph.from_collections(self.name, dsk, dependencies=())
        native = self.native_dtype
        return da.Array(
            graph, self.name, self.chunks, dtype=native, meta=np.empty((0,) * self.ndim, native)
        )

    def values(self) -> NDArray[Any]:
        """The whole array, read now."""
        out = np.empty(self.shape, self.native_dtype)
        starts = [np.cumsum((0, *c)) for c in self.chunks]
        for index in np.ndindex(*(len(c) for c in self.chunks)):
            box = tuple(slice(starts[a][i], starts[a][i + 1]) for a, i in enumerate(index))
            out[box] = self.read(index)
        return out

    def write(self, index: tuple[int, ...], block: NDArray[Any]) -> None:
        """Store chunk ``index`` (``block``: its part inside the array), as zarr does: the
        edges padded with the fill value to the whole chunk, and no file (an existing one
        removed) for a chunk that is all fill value."""
        part = tuple(self.chunks[axis][i] for axis, i in enumerate(index))
        if block.shape != part:
            raise ValueError(
                f"{self.directory} chunk {index}: shape {block.shape}, expected {part}"
            )
        path = os.path.join(self.directory, _chunk_key(index, self.key))
        dt = np.dtype(self.dtype)
        fill = np.broadcast_to(np.array(self.fill, dt), part)
        first = (0,) * block.ndim
        # a chunk whose first pixel is not the fill is written without a scan of it
        if (
            block.size
            and np.array_equal(block[first], fill[first], equal_nan=True)
            and (np.array_equal(block, fill, equal_nan=True))
        ):
            if os.path.exists(path):
                os.remove(path)
            return
        if part == self.chunk_shape and block.dtype == dt and block.flags.c_contiguous:
            out = block  # written as it is
        else:
            out = np.full(self.chunk_shape, self.fill, dtype=dt)
            out[tuple(slice(0, n) for n in part)] = block
        data: Any = out.reshape(-1).view(np.uint8).data
        if self.zstd:
            from numcodecs import Zstd

            data = Zstd(level=0).encode(data)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def read(self, index: tuple[int, ...], uses: int = 0, budget: int = 0) -> NDArray[Any]:
        """Chunk ``index`` (read-only) through the shared cache of ``budget`` bytes (0:
        not cached); ``uses``: how many reads the graph makes of it (0: unknown), after
        which it leaves the cache."""
        part = tuple(self.chunks[axis][i] for axis, i in enumerate(index))
        path = os.path.join(self.directory, _chunk_key(index, self.key))
        return _CACHE.get(
            (self.name, index),
            lambda: read_stored_chunk(
                path, self.chunk_shape, part, self.dtype, self.zstd, self.fill, writable=False
            ),
            uses,
            budget,
        )


#: Seconds after which a cached chunk nobody has read leaves the cache: on a cluster
#: each worker sees only some of a graph's reads, so counting them does not empty it,
#: and a finished coadd must not hold a worker's memory into the next task.
CHUNK_CACHE_IDLE_S = 20.0


class _ChunkCache:
    """Decoded chunks within a byte budget, least recently used evicted first, each as
    soon as it has been read as many times as its graph said it would be, and any not
    read for :data:`CHUNK_CACHE_IDLE_S` (a daemon thread looks while the cache holds
    something). A chunk being decoded by one thread is waited for, not decoded again,
    by the others."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Empty, with a new lock and no sweeper (also what a forked child starts with)."""
        self._items: OrderedDict[Any, NDArray[Any]] = OrderedDict()
        self._loading: dict[Any, Future[NDArray[Any]]] = {}
        self._reads: dict[Any, int] = {}
        self._touched: dict[Any, float] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None

    def _drop(self, key: Any) -> None:
        """Remove ``key`` (lock held)."""
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= _cost(old)
        self._reads.pop(key, None)
        self._touched.pop(key, None)

    def expire(self, idle_s: float) -> None:
        """Drop the entries not read for ``idle_s`` seconds."""
        now = time.monotonic()
        with self._lock:
            while self._items:
                key = next(iter(self._items))  # least recently used first
                if now - self._touched.get(key, now) < idle_s:
                    break
                self._drop(key)

    def _sweep(self) -> None:
        while True:
            time.sleep(CHUNK_CACHE_IDLE_S / 4)
            self.expire(CHUNK_CACHE_IDLE_S)
            with self._lock:
                if not self._items:
                    self._sweeper = None
                    break
        _release_freed_memory()

    def _count(self, key: Any, uses: int) -> None:
        """One more read of ``key`` (lock held): evict it when its reads are done. Only
        cached entries with a known number of uses are counted (``_reads`` ⊆ ``_items``)."""
        if not uses or key not in self._items:
            return
        n = self._reads[key] = self._reads.get(key, 0) + 1
        if n >= uses:
            self._drop(key)

    def get(self, key: Any, load: Any, uses: int = 0, budget: int = 0) -> NDArray[Any]:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self._touched[key] = time.monotonic()
                self._count(key, uses)
                return hit
            pending = self._loading.get(key)
            owner = pending is None
            if pending is None:
                pending = self._loading[key] = Future()
        if not owner:
            value = pending.result()
            with self._lock:
                self._count(key, uses)
            return value
        try:
            value = load()  # outside the lock: decoding releases the GIL
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._loading[key]
            if budget > 0 and _cost(value) <= budget:
                self._items[key] = value
                self._touched[key] = time.monotonic()
                self._bytes += _cost(value)
                while self._bytes > budget:
                    self._drop(next(iter(self._items)))
                if self._sweeper is None and self._items:
                    self._sweeper = threading.Thread(
                        target=self._sweep, name="lsstlite-chunk-cache", daemon=True
                    )
                    self._sweeper.start()
            self._reads.pop(key, None)  # a fresh load: its reads count from here
            self._count(key, uses)
        pending.set_result(value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._reads.clear()
            self._touched.clear()
            self._bytes = 0


def _release_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``; nothing
    elsewhere): an emptied cache otherwise leaves its chunks' memory in the worker's RSS,
    scattered between live allocations where the heap cannot shrink by itself."""
    import ctypes

    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own libc
    except OSError:
        return
    if trim is not None:
        trim(0)


def _cost(value: NDArray[Any]) -> int:
    """Bytes an array holds (a broadcast fill value: none)."""
    return 0 if 0 in value.strides else value.nbytes


def cache_budget(value: int | None = None) -> int:
    """``value``, or the Dask config ``lsstlite.chunk-cache-bytes``, or
    :data:`CHUNK_CACHE_BYTES`."""
    if value is not None:
        return int(value)
    import dask

    return int(dask.config.get("lsstlite.chunk-cache-bytes", CHUNK_CACHE_BYTES))


_CACHE = _ChunkCache()
# A forked child starts with an empty cache of its own (no sweeper thread is inherited).
os.register_at_fork(after_in_child=lambda: _CACHE.reset())
_SOURCES: dict[str, StoredArray] = {}


def stored_source(data: Any) -> StoredArray | None:
    """``data`` if it is a :class:`StoredArray`, the one behind a Dask array made by
    :func:`stored_chunks_array` (unchanged since), else None."""
    if isinstance(data, StoredArray):
        return data
    return _SOURCES.get(getattr(data, "name", None) or "")


@dataclass
class StoredVariable:
    """One array of a :class:`StoredGroup`: its dimensions, data and attributes."""

    dims: tuple[str, ...]
    data: StoredArray | NDArray[Any]
    attrs: dict[str, Any]

    @property
    def values(self) -> NDArray[Any]:
        return self.data if isinstance(self.data, np.ndarray) else self.data.values()

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.data.dtype if isinstance(self.data, np.ndarray) else self.data.native_dtype


@dataclass
class StoredGroup:
    """A zarr v3 group of a local directory without xarray: its attributes, its data
    variables as :class:`StoredArray` (read chunk by chunk, on demand) and its dimension
    coordinates as numpy arrays (read at once).

    It answers, for an exposure, what the coadd reads of an ``xarray.Dataset``:
    ``attrs``, ``sizes``, ``variables``, ``ds["x"].values``, ``ds["mask"].attrs``,
    ``ds["image"].data`` (with ``.chunks``). :func:`open_stored_group` makes the Dataset.
    """

    path: Path
    attrs: dict[str, Any]
    variables: dict[str, StoredVariable]

    def __getitem__(self, name: str) -> StoredVariable:
        return self.variables[name]

    def __contains__(self, name: object) -> bool:
        return name in self.variables

    @property
    def sizes(self) -> dict[str, int]:
        return {
            d: n for v in self.variables.values() for d, n in zip(v.dims, v.data.shape, strict=True)
        }


def read_stored_group(group_dir: str | os.PathLike[str]) -> StoredGroup | None:
    """The zarr v3 group at ``group_dir`` (see :class:`StoredGroup`), or None when it holds
    anything this reader does not take (then the caller opens it with xarray): coordinates
    as xarray reads them (``mask_and_scale=False, decode_times=False``), no CF encodings."""
    group_dir = Path(group_dir)
    try:
        meta = json.loads((group_dir / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        return None
    coords: dict[str, StoredVariable] = {}
    data_vars: dict[str, StoredVariable] = {}
    for child in sorted(group_dir.iterdir()):
        if not (child / "zarr.json").is_file():
            continue
        try:
            cmeta = json.loads((child / "zarr.json").read_text())
        except ValueError:
            return None
        if cmeta.get("node_type") != "array":
            continue  # a subgroup: not part of this dataset
        dims = cmeta.get("dimension_names")
        attrs = dict(cmeta.get("attributes") or {})
        if not dims or None in dims or len(dims) != len(cmeta.get("shape", ())):
            return None
        if "coordinates" in attrs or any(k.startswith("_") for k in attrs):
            return None  # CF coordinates or xarray encodings: leave them to xarray
        data = stored_array(child)
        if data is None:
            return None
        if list(dims) == [child.name]:  # a dimension coordinate: read now, as xarray does
            coords[child.name] = StoredVariable(tuple(dims), data.values(), attrs)
        else:
            data_vars[child.name] = StoredVariable(tuple(dims), data, attrs)
    first = [n for n in ("image", "variance", "mask") if n in data_vars]
    order = first + sorted(n for n in data_vars if n not in first)
    variables = {n: data_vars[n] for n in order}
    variables.update(coords)
    return StoredGroup(group_dir, dict(meta.get("attributes") or {}), variables)


def open_stored_group(group_dir: Path) -> Any:
    """The zarr v3 group at ``group_dir`` as an xarray Dataset whose data variables are
    :func:`stored_chunks_array` arrays and whose dimension coordinates are read at once
    (as ``xr.open_zarr(..., mask_and_scale=False, decode_times=False)`` gives them, less
    its ``encoding``), or None when :func:`read_stored_group` does not take the group."""
    import xarray as xr

    group = read_stored_group(group_dir)
    if group is None:
        return None
    data_vars: dict[str, Any] = {}
    coords: dict[str, Any] = {}
    for name, v in group.variables.items():
        if isinstance(v.data, StoredArray):
            data_vars[name] = (v.dims, v.data.to_dask(), v.attrs)
        else:
            coords[name] = (v.dims, v.data, v.attrs)
    return xr.Dataset(data_vars, coords=coords, attrs=group.attrs)


def write_chunk_from_blocks(
    stores: list[StoredArray],
    fills: list[Any],
    index: tuple[int, int],
    box: tuple[int, int, int, int],
    block_boxes: list[tuple[int, int, int, int]],
    blocks: list[tuple[NDArray[Any], ...] | None],
) -> None:
    """Assemble stored chunk ``index`` (``box``: y0, x0, y1, x1) of each of ``stores``
    from the computed blocks it overlaps (``blocks[b][k]``: plane ``k`` of the block at
    ``block_boxes[b]``; None: the block is ``fills[k]`` everywhere) and write it."""
    y0, x0, y1, x1 = box
    for k, (store, fill) in enumerate(zip(stores, fills, strict=True)):
        if len(blocks) == 1 and blocks[0] is not None:
            by0, bx0, by1, bx1 = block_boxes[0]
            if by0 <= y0 and bx0 <= x0 and by1 >= y1 and bx1 >= x1:  # one block holds it
                part = blocks[0][k][y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
                store.write(index, np.ascontiguousarray(part, dtype=store.native_dtype))
                continue
        out = np.full((y1 - y0, x1 - x0), fill, dtype=store.native_dtype)
        for (by0, bx0, by1, bx1), block in zip(block_boxes, blocks, strict=True):
            if block is None:
                continue
            oy0, ox0 = max(by0, y0), max(bx0, x0)
            oy1, ox1 = min(by1, y1), min(bx1, x1)
            out[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] = block[k][
                oy0 - by0 : oy1 - by0, ox0 - bx0 : ox1 - bx0
            ]
        store.write(index, out)


def chunk_boxes(
    shape: tuple[int, int], chunk_shape: tuple[int, int], edges: tuple[NDArray[Any], NDArray[Any]]
) -> dict[tuple[int, int], tuple[tuple[int, int, int, int], list[tuple[int, int]]]]:
    """For each stored chunk ``(si, sj)`` of an array of ``shape`` in ``chunk_shape``
    chunks, its box ``(y0, x0, y1, x1)`` and the blocks ``(i, j)`` it overlaps, the blocks
    being cut at ``edges`` (the cumulative block boundaries along y and x, from 0)."""
    (ny, nx), (cy, cx) = shape, chunk_shape
    ey, ex = edges
    out = {}
    for si, y0 in enumerate(range(0, ny, cy)):
        for sj, x0 in enumerate(range(0, nx, cx)):
            y1, x1 = min(y0 + cy, ny), min(x0 + cx, nx)
            blocks = []
            for i in range(int(np.searchsorted(ey, y0, "right")) - 1, len(ey) - 1):
                if ey[i] >= y1:
                    break
                for j in range(int(np.searchsorted(ex, x0, "right")) - 1, len(ex) - 1):
                    if ex[j] >= x1:
                        break
                    blocks.append((i, j))
            out[si, sj] = ((y0, x0, y1, x1), blocks)
    return out


def create_stored_group(
    group_dir: Path,
    attrs: dict[str, Any],
    arrays: dict[str, tuple[tuple[str, ...], NDArray[Any] | tuple[tuple[int, ...], Any, Any]]],
    chunk_shape: tuple[int, ...],
) -> dict[str, StoredArray]:
    """A new zarr v3 group at ``group_dir`` (which must not exist), laid out as xarray's
    ``to_zarr`` lays out a Dataset without ``_FillValue`` encodings: ``arrays`` maps each
    name to ``(dims, values)`` for a dimension coordinate (written now, one chunk) or to
    ``(dims, (shape, dtype, attrs))`` for a data variable whose chunks (``chunk_shape``,
    clipped to the shape) are written later with :meth:`StoredArray.write`; a float
    variable's fill value is NaN, any other 0; compression as
    :func:`~lsstlite.data.write_exposure_zarr` chooses it. Returns the data variables."""
    import zarr

    from lsstlite.data.io import UNCOMPRESSED_KINDS as uncompressed_kinds

    if group_dir.exists():
        raise FileExistsError(f"{group_dir} exists")
    group = zarr.open_group(str(group_dir), mode="w-", zarr_format=3, attributes=attrs)
    out: dict[str, StoredArray] = {}
    for name, (dims, spec) in arrays.items():
        if isinstance(spec, np.ndarray):
            group.create_array(name, data=spec, dimension_names=dims, attributes={}, fill_value=0)
            continue
        shape, dtype, vattrs = spec
        dt = np.dtype(dtype)
        group.create_array(
            name,
            shape=shape,
            dtype=dt,
            chunks=tuple(min(c, n) for c, n in zip(chunk_shape, shape, strict=True)),
            fill_value=np.nan if dt.kind == "f" else 0,
            dimension_names=dims,
            attributes=vattrs,
            compressors=None if dt.kind in uncompressed_kinds else "auto",
        )
        src = stored_array(group_dir / name)
        if src is None:
            raise RuntimeError(f"{group_dir / name}: zarr wrote a layout this module cannot write")
        out[name] = src
    return out
