"""The Butler: get / put / query datasets in a repository."""

from __future__ import annotations

import datetime
import fnmatch
import json
import math
import os
import platform
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from . import _hooks
from ._collections import CollectionManager, CollectionRecord, CollectionType
from ._dataset_types import STANDARD_DATASET_TYPES, DatasetType
from ._dimensions import (
    DIMENSIONS,
    EXPOSURE_FIELDS,
    INT_DIMENSIONS,
    DataId,
    check_collection_name,
    check_dataset_type_name,
    data_id_path,
    escape_segment,
    normalize_data_id,
)
from ._errors import (
    CollectionError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetTypeError,
    RepoError,
)
from ._expressions import compile_expression
from ._formatters import read_payload, write_payload
from ._registry import Registry, RegistryState
from ._storage import Storage, open_storage

__all__ = ["Butler", "DatasetRef", "to_mjd"]

REPO_FORMAT = 1
DATASET_TYPE_DIR = "_registry/dataset_types"
RUNS_DIR = "runs"
META_NAME = "_dataset.json"
_ID_NAMESPACE = uuid.UUID("8f0b8d4e-5c4a-5b8e-9a57-6c7a1d2a3f10")
_IMPLIED_FROM_EXPOSURE = ("band", "physical_filter", "day_obs")


@dataclass(frozen=True)
class DatasetRef:
    """A reference to one dataset.

    Attributes
    ----------
    dataset_type : str
    data_id : DataId
        Values of the dataset type's required dimensions.
    run : str
        The RUN collection holding the dataset.
    id : uuid.UUID
        Deterministic: UUID5 of (dataset type, data ID, run).
    path : str
        Payload location, relative to the repository root (or absolute for
        raws ingested with ``transfer='direct'``).
    storage_class : str
    """

    dataset_type: str
    data_id: DataId
    run: str
    id: uuid.UUID
    path: str
    storage_class: str

    def __repr__(self) -> str:
        return (
            f"DatasetRef({self.dataset_type!r}, {self.data_id!r}, run={self.run!r}, "
            f"id={str(self.id)[:8]}...)"
        )


def dataset_id(dataset_type: str, data_id: Mapping[str, int | str], run: str) -> uuid.UUID:
    """The deterministic UUID5 of a dataset."""
    canon = json.dumps({k: data_id[k] for k in sorted(data_id)}, separators=(",", ":"))
    return uuid.uuid5(_ID_NAMESPACE, f"{dataset_type}\x1f{canon}\x1f{run}")


def to_mjd(value: Any, *, what: str = "time") -> float:
    """Convert a time to MJD (float); None → unbounded (±inf chosen by caller).

    Accepts an MJD number, an ISO date/time string (``"2022-05-26"``,
    ``"2022-05-26T12:00:00"``), a :class:`datetime.datetime`/``date`` or an
    :class:`astropy.time.Time`.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an MJD or ISO time, got {value!r}")
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    from astropy.time import Time

    if isinstance(value, Time):
        return float(value.utc.mjd)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        value = datetime.datetime(value.year, value.month, value.day)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(Time(value, scale="utc").mjd)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"cannot read {what} {value!r}: give an MJD or an ISO date/time "
            "such as '2022-05-26' or '2022-05-26T12:00:00'"
        ) from exc


@lru_cache(maxsize=1)
def software_versions() -> dict[str, str]:
    """Versions of the packages that matter for reproducibility."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("lsstlite", "numpy", "xarray", "zarr", "dask", "pandas", "pyarrow", "astropy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _none_if_na(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, np.integer):
        return int(v)
    return v


class Butler:
    """Read and write datasets in a repository.

    Parameters
    ----------
    path : str or os.PathLike
        Repository root: a local directory or an fsspec URL.
    collections : str or sequence of str, optional
        Default collections searched by ``get``/``exists``/queries, in order.
    run : str, optional
        Default RUN collection for ``put``. If ``collections`` is not given,
        the run is also the default search path.
    storage_options : dict, optional
        Passed to fsspec for URL roots.

    Notes
    -----
    A Butler is cheap to create and can be pickled (to Dask workers): it
    carries only the root, collections and run.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        collections: str | Sequence[str] | None = None,
        run: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self._root_arg = os.fspath(path)
        self._storage_options = dict(storage_options or {})
        self.storage: Storage = open_storage(self._root_arg, **self._storage_options)
        try:
            root_meta = json.loads(self.storage.read_bytes("zarr.json"))
        except FileNotFoundError:
            raise RepoError(
                f"{self._root_arg!r} is not an lsstlite repository (no zarr.json at its root); "
                "create one with Butler.create(path) or `lsstlite repo create PATH`"
            ) from None
        info = root_meta.get("attributes", {}).get("lsstlite")
        if not info:
            raise RepoError(f"{self._root_arg!r} is a zarr group but not an lsstlite repository")
        self.config: dict[str, Any] = dict(info)
        self.run = check_collection_name(run) if run is not None else None
        self.collections: list[str] | None = self._as_list(collections)
        self.registry = Registry(
            self.storage, compact_threshold=int(self.config.get("compact_threshold", 1000))
        )
        self._collections = CollectionManager(self.storage)
        self._dataset_types: dict[str, DatasetType] = {}
        self._known_runs: set[str] = set()
        self._index_lock = threading.Lock()
        self._index_version = -1
        self._run_index: dict[tuple[str, str, str], int] = {}
        self._type_key_index: dict[tuple[str, str], list[int]] = {}
        self._frame_version = -1
        self._frame: pd.DataFrame | None = None
        if self.run is not None:
            self._ensure_run(self.run)

    # ------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        exist_ok: bool = False,
        storage_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Butler:
        """Create a new repository (root zarr group + standard dataset types).

        Raises
        ------
        RepoError
            If a repository exists there and ``exist_ok`` is false.
        """
        import zarr

        storage = open_storage(path, **(storage_options or {}))
        if storage.exists("zarr.json"):
            if not exist_ok:
                raise RepoError(f"a repository already exists at {os.fspath(path)!r}")
        else:
            if storage.is_local:
                os.makedirs(storage.local_path(""), exist_ok=True)
            attrs: dict[str, Any] = {
                "lsstlite": {
                    "repo_format": REPO_FORMAT,
                    "created": datetime.datetime.now(datetime.UTC).isoformat(),
                    "layout": "runs/<run>/<dataset_type>/<dim>=<value>/...",
                    "compact_threshold": 1000,
                }
            }
            if storage.is_local:
                zarr.open_group(storage.local_path(""), mode="w-", zarr_format=3, attributes=attrs)
            else:
                zarr.open_group(
                    storage.url(""),
                    mode="w-",
                    zarr_format=3,
                    attributes=attrs,
                    storage_options=storage_options or None,
                )
            for d in ("_registry/log", "_registry/snapshots", "_registry/collections", RUNS_DIR):
                storage.makedirs(d)
        butler = cls(path, storage_options=storage_options, **kwargs)
        for dt in STANDARD_DATASET_TYPES.values():
            butler.register_dataset_type(dt)
        return butler

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_butler,
            (self._root_arg, self.collections, self.run, self._storage_options),
        )

    def __repr__(self) -> str:
        return f"Butler({self._root_arg!r}, collections={self.collections!r}, run={self.run!r})"

    @staticmethod
    def _as_list(collections: str | Sequence[str] | None) -> list[str] | None:
        if collections is None:
            return None
        if isinstance(collections, str):
            return [check_collection_name(collections)]
        return [check_collection_name(c) for c in collections]

    # --------------------------------------------------------- dataset types
    def register_dataset_type(
        self,
        dataset_type: DatasetType | str,
        dimensions: Sequence[str] | None = None,
        storage_class: str | None = None,
        *,
        is_calibration: bool = False,
        doc: str = "",
    ) -> bool:
        """Register a dataset type; return False if already registered identically.

        Raises
        ------
        DatasetTypeError
            If the name is registered with a different definition.
        """
        if not isinstance(dataset_type, DatasetType):
            if dimensions is None or storage_class is None:
                raise ValueError("give a DatasetType, or a name with dimensions and storage_class")
            dataset_type = DatasetType(
                dataset_type, tuple(dimensions), storage_class, is_calibration, doc
            )
        rel = f"{DATASET_TYPE_DIR}/{dataset_type.name}.json"
        created = self.storage.create_exclusive(rel, json.dumps(dataset_type.to_json()).encode())
        if not created:
            existing = DatasetType.from_json(json.loads(self.storage.read_bytes(rel)))
            if existing != dataset_type:
                raise DatasetTypeError(
                    f"dataset type {dataset_type.name!r} is already registered as "
                    f"dimensions={existing.dimensions}, storage_class={existing.storage_class!r}, "
                    f"is_calibration={existing.is_calibration}; cannot register it as "
                    f"dimensions={dataset_type.dimensions}, "
                    f"storage_class={dataset_type.storage_class!r}, "
                    f"is_calibration={dataset_type.is_calibration}"
                )
            dataset_type = existing
        self._dataset_types[dataset_type.name] = dataset_type
        return created

    def get_dataset_type(self, name: str) -> DatasetType:
        """Return a registered dataset type (standard types register on first use)."""
        dt = self._dataset_types.get(name)
        if dt is not None:
            return dt
        check_dataset_type_name(name)
        rel = f"{DATASET_TYPE_DIR}/{name}.json"
        try:
            dt = DatasetType.from_json(json.loads(self.storage.read_bytes(rel)))
        except FileNotFoundError:
            if name in STANDARD_DATASET_TYPES:
                self.register_dataset_type(STANDARD_DATASET_TYPES[name])
                return self._dataset_types[name]
            raise DatasetTypeError(
                f"dataset type {name!r} is not registered; register it with "
                "butler.register_dataset_type(name, dimensions, storage_class)"
            ) from None
        self._dataset_types[name] = dt
        return dt

    def query_dataset_types(self, pattern: str = "*") -> list[DatasetType]:
        """Registered dataset types whose name matches the glob ``pattern``."""
        out = []
        for name, _ in self.storage.list_dir(DATASET_TYPE_DIR):
            if name.endswith(".json") and not name.startswith("."):
                stem = name[:-5]
                if fnmatch.fnmatchcase(stem, pattern):
                    out.append(self.get_dataset_type(stem))
        return sorted(out, key=lambda d: d.name)

    # ------------------------------------------------------------ collections
    def register_run(self, name: str, doc: str = "") -> bool:
        """Create a RUN collection; return False if it exists."""
        created = self._collections.register(name, CollectionType.RUN, doc)
        self._known_runs.add(name)
        return created

    def register_collection(self, name: str, type: CollectionType | str, doc: str = "") -> bool:
        """Create a collection of any type (CHAINED ones start empty)."""
        ctype = CollectionType(type.upper() if isinstance(type, str) else type)
        return self._collections.register(name, ctype, doc)

    def set_chain(self, name: str, children: str | Sequence[str], doc: str = "") -> None:
        """Define or redefine the CHAINED collection ``name`` (cycles are refused)."""
        self._collections.set_chain(name, self._as_list(children) or [], doc)

    def get_chain(self, name: str) -> list[str]:
        """The children of a CHAINED collection."""
        rec = self._collections.get(name)
        if rec.type is not CollectionType.CHAINED:
            raise CollectionError(f"collection {name!r} is {rec.type.value}, not CHAINED")
        return list(rec.children)

    def collection_type(self, name: str) -> CollectionType:
        """The type of an existing collection."""
        return self._collections.get(name).type

    def query_collections(
        self,
        pattern: str = "*",
        *,
        types: Iterable[CollectionType | str] | None = None,
        flatten_chains: bool = False,
    ) -> list[str]:
        """Names of collections matching the glob ``pattern``, sorted.

        With ``flatten_chains=True``, matching chains are replaced by the
        collections they search (in search order).
        """
        tset = None if types is None else {CollectionType(t) for t in types}
        recs = self._collections.query(pattern, None if flatten_chains else tset)
        if not flatten_chains:
            return [r.name for r in recs]
        flat = [r.name for r in self._collections.flatten([r.name for r in recs])]
        if tset is not None:
            defs = self._collections.all()
            flat = [n for n in flat if defs[n].type in tset]
        return flat

    def remove_collection(self, name: str) -> None:
        """Remove a CHAINED or TAGGED/CALIBRATION collection definition.

        Datasets are not touched; use :meth:`remove_runs` for RUN collections.
        """
        rec = self._collections.get(name)
        if rec.type is CollectionType.RUN:
            raise CollectionError(f"{name!r} is a RUN collection; use remove_runs([{name!r}])")
        self._collections.remove(name)

    def associate(self, collection: str, refs: Iterable[DatasetRef]) -> None:
        """Add existing datasets to a TAGGED collection (created if missing)."""
        self._collections.register(collection, CollectionType.TAGGED)
        rows = [
            {"collection": collection, "dataset_id": str(r.id), "begin": -np.inf, "end": np.inf}
            for r in refs
        ]
        self.registry.append({"associations": rows})

    def disassociate(self, collection: str, refs: Iterable[DatasetRef]) -> None:
        """Remove datasets from a TAGGED collection."""
        rec = self._collections.get(collection)
        if rec.type is not CollectionType.TAGGED:
            raise CollectionError(f"collection {collection!r} is {rec.type.value}, not TAGGED")
        rows = [
            {
                "collection": collection,
                "dataset_id": str(r.id),
                "begin": -np.inf,
                "end": np.inf,
                "removed": True,
            }
            for r in refs
        ]
        self.registry.append({"associations": rows})

    def certify(
        self,
        collection: str,
        refs: Iterable[DatasetRef],
        begin: Any = None,
        end: Any = None,
    ) -> None:
        """Certify calibration datasets in a CALIBRATION collection for ``[begin, end)``.

        ``begin``/``end`` are MJDs, ISO dates/times or ``None`` (unbounded).

        Raises
        ------
        CollectionError
            If a dataset with the same type and data ID is already certified
            in ``collection`` for an overlapping range, or a dataset type is
            not a calibration type.
        """
        b = -np.inf if begin is None else to_mjd(begin, what="begin")
        e = np.inf if end is None else to_mjd(end, what="end")
        if not b < e:
            raise ValueError(f"validity range is empty: begin {begin!r} is not before end {end!r}")
        refs = list(refs)
        self._collections.register(collection, CollectionType.CALIBRATION)
        for ref in refs:
            if not self.get_dataset_type(ref.dataset_type).is_calibration:
                raise CollectionError(
                    f"dataset type {ref.dataset_type!r} is not a calibration type; only "
                    "calibration types can be certified"
                )
        existing = self._calib_rows(collection)
        for ref in refs:
            key = data_id_path(ref.data_id, tuple(ref.data_id))
            clash = existing[
                (existing["dataset_type"] == ref.dataset_type).to_numpy(dtype=bool)
                & (existing["key"] == key).to_numpy(dtype=bool)
                & (existing["begin"].to_numpy() < e)
                & (existing["end"].to_numpy() > b)
            ]
            if len(clash):
                raise CollectionError(
                    f"{ref.dataset_type} {ref.data_id} is already certified in {collection!r} "
                    f"for MJD [{clash['begin'].iloc[0]}, {clash['end'].iloc[0]}), which overlaps "
                    f"[{b}, {e})"
                )
        self.registry.append(
            {
                "associations": [
                    {"collection": collection, "dataset_id": str(r.id), "begin": b, "end": e}
                    for r in refs
                ]
            }
        )

    def _calib_rows(self, collection: str) -> pd.DataFrame:
        state = self.registry.refresh()
        assoc = state.associations[(state.associations["collection"] == collection).to_numpy(bool)]
        return assoc.merge(
            state.datasets[["id", "dataset_type", "key", "run", "path", "storage_class"]],
            left_on="dataset_id",
            right_on="id",
            how="inner",
        )

    # ------------------------------------------------------------- data IDs
    def register_exposures(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Register exposure dimension records (day_obs, band, mjd, exptime...).

        Each record needs ``instrument`` and ``exposure``; other keys among
        ``day_obs, band, physical_filter, mjd, exptime, obs_type, ra, dec``.
        """
        rows = []
        for rec in records:
            row: dict[str, Any] = {}
            did = normalize_data_id(
                {k: rec[k] for k in ("instrument", "exposure", "visit") if k in rec}
            )
            if "instrument" not in did or "exposure" not in did:
                raise ValueError(f"exposure record {dict(rec)!r} needs instrument and exposure")
            row.update(did)
            for f, kind in EXPOSURE_FIELDS.items():
                v = rec.get(f)
                if v is None:
                    continue
                if kind == "f":
                    row[f] = float(v)
                elif kind == "i":
                    row[f] = normalize_data_id({f: v})[f] if f in INT_DIMENSIONS else int(v)
                else:
                    row[f] = str(normalize_data_id({f: v})[f]) if f in DIMENSIONS else str(v)
            rows.append(row)
        self.registry.append({"exposures": rows})

    def _expand(self, did: dict[str, int | str], state: RegistryState) -> dict[str, Any]:
        """Add band/physical_filter/day_obs (and mjd) implied by the exposure."""
        if "exposure" not in did or "instrument" not in did:
            return dict(did)
        ex = state.exposures
        hit = ex[
            (ex["instrument"] == did["instrument"]).to_numpy(dtype=bool)
            & (ex["exposure"] == did["exposure"]).to_numpy(dtype=bool)
        ]
        out: dict[str, Any] = dict(did)
        if len(hit):
            row = hit.iloc[-1]
            for f in (*_IMPLIED_FROM_EXPOSURE, "mjd"):
                v = _none_if_na(row[f])
                if v is not None and f not in out:
                    out[f] = v
        return out

    # ------------------------------------------------------------------- put
    def _dataset_dir(self, dataset_type: str, run: str, key: str) -> str:
        return f"{RUNS_DIR}/{escape_segment(run)}/{dataset_type}/{key}"

    def _ensure_run(self, run: str) -> None:
        if run in self._known_runs and self.storage.exists(self._collections._file(run)):
            return
        rec = self._collections.find(run)
        if rec is None:
            self._collections.register(run, CollectionType.RUN)
        elif rec.type is not CollectionType.RUN:
            raise CollectionError(
                f"cannot put into {run!r}: it is a {rec.type.value} collection, not a RUN"
            )
        self._known_runs.add(run)

    def _split_data_id(
        self, dt: DatasetType, data_id: Mapping[str, Any] | None, kwargs: Mapping[str, Any]
    ) -> tuple[dict[str, int | str], dict[str, int | str]]:
        did = normalize_data_id(data_id, **kwargs)
        missing = [d for d in dt.dimensions if d not in did]
        if missing:
            raise ValueError(
                f"data ID {did} for dataset type {dt.name!r} lacks required dimension(s) "
                f"{', '.join(missing)} (needs {', '.join(dt.dimensions) or 'none'})"
            )
        required = {d: did[d] for d in dt.dimensions}
        return required, did

    def put(
        self,
        obj: Any,
        dataset_type: str,
        data_id: Mapping[str, Any] | None = None,
        *,
        run: str | None = None,
        replace: bool = False,
        provenance: Mapping[str, Any] | None = None,
        transfer: str = "copy",
        _exposure_record: Mapping[str, Any] | None = None,
        _extra: Mapping[str, Any] | None = None,
        _defer_registry: dict[str, list[dict[str, Any]]] | None = None,
        **kwargs: Any,
    ) -> DatasetRef:
        """Write a dataset.

        Parameters
        ----------
        obj
            xarray Dataset (Exposure), pandas DataFrame / pyarrow Table
            (Table), dict (Json) or a file path (Raw).
        dataset_type : str
        data_id : mapping, optional
            Must give the type's dimensions; extra dimensions (e.g. ``band``)
            are stored as implied metadata and can be queried. Keyword
            arguments are merged in.
        run : str, optional
            Defaults to the Butler's ``run``.
        replace : bool
            Overwrite an existing dataset instead of raising.
        provenance : mapping, optional
            Task config etc., stored (with software versions) in the
            dataset's metadata.
        transfer : str
            For Raw only: ``copy``, ``link``, ``symlink``, ``move`` or ``direct``.

        Returns
        -------
        DatasetRef

        Raises
        ------
        DatasetExistsError
            If the dataset exists and ``replace`` is false.
        ValueError
            For invalid or unsafe names and data ID values.
        """
        dt = self.get_dataset_type(dataset_type)
        run = run if run is not None else self.run
        if run is None:
            raise ValueError("put needs a run: pass run=... or create the Butler with run=...")
        check_collection_name(run)
        required, did = self._split_data_id(dt, data_id, kwargs)
        key = data_id_path(required, dt.dimensions)
        ref_id = dataset_id(dt.name, required, run)
        rel_dir = self._dataset_dir(dt.name, run, key)
        meta_rel = f"{rel_dir}/{META_NAME}"
        self._ensure_run(run)
        if self.storage.exists(rel_dir):
            state = self.registry.refresh()
            registered = self._lookup_run(state, dt.name, run, key) is not None
            if registered and not replace:
                raise DatasetExistsError(
                    f"dataset {dt.name!r} with data ID {DataId._trusted(required)} already exists "
                    f"in run {run!r}; pass replace=True to overwrite it"
                )
            # replace, or a leftover of an interrupted put: clear it
            self.storage.remove_tree(rel_dir)
        path = write_payload(self.storage, dt.storage_class, obj, rel_dir, transfer=transfer)
        if _hooks.before_commit is not None:
            _hooks.before_commit(dt.name, required, run)
        implied = {k: v for k, v in did.items() if k not in required}
        meta = {
            "id": str(ref_id),
            "dataset_type": dt.name,
            "storage_class": dt.storage_class,
            "run": run,
            "data_id": required,
            "implied": implied,
            "path": path,
            "created": datetime.datetime.now(datetime.UTC).isoformat(),
            "provenance": dict(provenance or {}),
            "software": software_versions(),
            "extra": dict(_extra or {}),
        }
        self.storage.write_atomic(meta_rel, json.dumps(meta, default=str).encode())
        row: dict[str, Any] = {
            "id": str(ref_id),
            "dataset_type": dt.name,
            "run": run,
            "storage_class": dt.storage_class,
            "path": path,
            "key": key,
            "extra": json.dumps(dict(_extra or {})) if _extra else None,
            **did,
        }
        records: dict[str, list[dict[str, Any]]] = {"datasets": [row]}
        if _exposure_record is not None:
            records["exposures"] = [dict(_exposure_record)]
        if _defer_registry is not None:  # caller appends many records in one entry
            _defer_registry.update(records)
        else:
            self.registry.append(records)
        return DatasetRef(dt.name, DataId._trusted(required), run, ref_id, path, dt.storage_class)

    # ------------------------------------------------------------- indexes
    def _state(self) -> RegistryState:
        state = self.registry.refresh()
        if state.version != self._index_version:
            with self._index_lock:
                if state.version != self._index_version:
                    ds = state.datasets
                    types = ds["dataset_type"].to_numpy(dtype=object)
                    runs = ds["run"].to_numpy(dtype=object)
                    keys = ds["key"].to_numpy(dtype=object)
                    self._run_index = {
                        (t, r, k): i
                        for i, (t, r, k) in enumerate(zip(types, runs, keys, strict=True))
                    }
                    tk: dict[tuple[str, str], list[int]] = {}
                    for i, (t, k) in enumerate(zip(types, keys, strict=True)):
                        tk.setdefault((t, k), []).append(i)
                    self._type_key_index = tk
                    self._index_version = state.version
        return state

    def _lookup_run(
        self, state: RegistryState, dataset_type: str, run: str, key: str
    ) -> int | None:
        if state.version != self._index_version:
            state = self._state()
        return self._run_index.get((dataset_type, run, key))

    def _ref_from_row(self, state: RegistryState, i: int) -> DatasetRef:
        ds = state.datasets
        t = str(ds["dataset_type"].iat[i])
        dt = self.get_dataset_type(t)
        did = {d: _none_if_na(ds[d].iat[i]) for d in dt.dimensions}
        return DatasetRef(
            t,
            DataId._trusted({d: v for d, v in did.items()}),
            str(ds["run"].iat[i]),
            uuid.UUID(str(ds["id"].iat[i])),
            str(ds["path"].iat[i]),
            str(ds["storage_class"].iat[i]),
        )

    # ------------------------------------------------------------- find/get
    def _search_path(self, collections: str | Sequence[str] | None) -> list[CollectionRecord]:
        names = self._as_list(collections)
        if names is None:
            names = (
                self.collections
                if self.collections is not None
                else ([self.run] if self.run else None)
            )
        if names is None:
            raise ValueError(
                "no collections to search: pass collections=... or create the Butler with "
                "collections=... or run=..."
            )
        return self._collections.flatten(list(names))

    def find_dataset(
        self,
        dataset_type: str,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: str | Sequence[str] | None = None,
        mjd: float | None = None,
        timespan: tuple[Any, Any] | None = None,
        **kwargs: Any,
    ) -> DatasetRef | None:
        """Find the first matching dataset in the search path, or None."""
        dt = self.get_dataset_type(dataset_type)
        did = normalize_data_id(data_id, **kwargs)
        search = self._search_path(collections)
        state = self._state()
        if any(d not in did for d in dt.dimensions):
            did = {**self._expand(did, state), **did}
        missing = [d for d in dt.dimensions if d not in did]
        if missing:
            raise ValueError(
                f"data ID {did} for dataset type {dt.name!r} lacks required dimension(s) "
                f"{', '.join(missing)} (needs {', '.join(dt.dimensions) or 'none'})"
            )
        required = {d: did[d] for d in dt.dimensions}
        key = data_id_path(required, dt.dimensions)
        for rec in search:
            if rec.type is CollectionType.RUN:
                i = self._run_index.get((dt.name, rec.name, key))
                if i is not None:
                    return self._ref_from_row(state, i)
                continue
            rows = self._type_key_index.get((dt.name, key), [])
            if not rows:
                continue
            ids = state.datasets["id"].to_numpy(dtype=object)[rows]
            assoc = state.associations
            sel = assoc[
                (assoc["collection"] == rec.name).to_numpy(dtype=bool)
                & assoc["dataset_id"].isin(list(ids)).to_numpy(dtype=bool)
            ]
            if rec.type is CollectionType.CALIBRATION and len(sel):
                t0, t1 = self._calib_time(did, state, mjd, timespan, dt.name, rec.name)
                begin, end = sel["begin"].to_numpy(), sel["end"].to_numpy()
                if t0 == t1:  # an instant: valid when begin <= t < end
                    sel = sel[(begin <= t0) & (end > t0)]
                else:  # a timespan: the validity range overlaps it
                    sel = sel[(begin < t1) & (end > t0)]
            if len(sel):
                hit = str(sel["dataset_id"].iloc[-1])
                i = rows[list(ids).index(hit)]
                return self._ref_from_row(state, i)
        return None

    def _calib_time(
        self,
        did: Mapping[str, Any],
        state: RegistryState,
        mjd: float | None,
        timespan: tuple[Any, Any] | None,
        dataset_type: str,
        collection: str,
    ) -> tuple[float, float]:
        if timespan is not None:
            b = -np.inf if timespan[0] is None else to_mjd(timespan[0], what="timespan begin")
            e = np.inf if timespan[1] is None else to_mjd(timespan[1], what="timespan end")
            return b, e
        if mjd is not None:
            t = to_mjd(mjd, what="mjd")
            return t, t
        expanded = self._expand(dict(did), state)
        if "mjd" in expanded:
            t = float(expanded["mjd"])
            return t, t
        raise DatasetNotFoundError(
            f"cannot look up calibration {dataset_type!r} in CALIBRATION collection "
            f"{collection!r} without a time: pass mjd=... or timespan=..., or a data ID with an "
            f"exposure whose raw has been ingested (got {dict(did)})"
        )

    def get(
        self,
        dataset_type: str | DatasetRef,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: str | Sequence[str] | None = None,
        mjd: float | None = None,
        timespan: tuple[Any, Any] | None = None,
        parameters: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Read a dataset.

        Returns a lazy ``xarray.Dataset`` (Exposure), a ``pandas.DataFrame``
        (Table; ``parameters={"columns": [...]}`` reads a subset), a
        ``dict`` (Json) or the raw file's path (Raw).

        Collections are searched in order and the first match is returned.
        For CALIBRATION collections the validity time comes from ``mjd``,
        ``timespan`` or the exposure named in the data ID.

        Raises
        ------
        DatasetNotFoundError
            (a ``LookupError``) naming the type, data ID and collections.
        """
        if isinstance(dataset_type, DatasetRef):
            ref = dataset_type
        else:
            found = self.find_dataset(
                dataset_type,
                data_id,
                collections=collections,
                mjd=mjd,
                timespan=timespan,
                **kwargs,
            )
            if found is None:
                raise DatasetNotFoundError(
                    self._not_found_message(dataset_type, data_id, kwargs, collections)
                )
            ref = found
        return read_payload(self.storage, ref.storage_class, ref.path, parameters)

    def _not_found_message(
        self,
        dataset_type: str,
        data_id: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
        collections: str | Sequence[str] | None,
    ) -> str:
        names = self._as_list(collections) or self.collections or ([self.run] if self.run else [])
        flat = [r.name for r in self._search_path(collections)]
        did = DataId(normalize_data_id(data_id, **kwargs))
        extra = f" (expanded to {flat})" if flat != names else ""
        return (
            f"dataset {dataset_type!r} with data ID {did} was not found in collections "
            f"{names}{extra}"
        )

    def exists(
        self,
        dataset_type: str | DatasetRef,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> bool:
        """Whether a dataset is findable (and, for a ref, still registered)."""
        if isinstance(dataset_type, DatasetRef):
            ref = dataset_type
            state = self._state()
            i = self._run_index.get(
                (ref.dataset_type, ref.run, data_id_path(ref.data_id, tuple(ref.data_id)))
            )
            return i is not None and str(state.datasets["id"].iat[i]) == str(ref.id)
        try:
            return (
                self.find_dataset(dataset_type, data_id, collections=collections, **kwargs)
                is not None
            )
        except DatasetNotFoundError:
            return False

    def get_uri(self, ref: DatasetRef) -> str:
        """Absolute location (path or URL) of a dataset's payload."""
        from ._formatters import payload_url

        return payload_url(self.storage, ref.path)

    def get_metadata(self, ref: DatasetRef) -> dict[str, Any]:
        """The dataset's ``_dataset.json`` (ids, provenance, software versions)."""
        key = data_id_path(ref.data_id, tuple(ref.data_id))
        rel = f"{self._dataset_dir(ref.dataset_type, ref.run, key)}/{META_NAME}"
        return dict(json.loads(self.storage.read_bytes(rel)))

    # --------------------------------------------------------------- queries
    def _query_frame(self, state: RegistryState) -> pd.DataFrame:
        if self._frame is not None and self._frame_version == state.version:
            return self._frame
        ds = state.datasets
        ex = state.exposures
        if len(ex):
            ex = ex[["instrument", "exposure", *EXPOSURE_FIELDS]].rename(
                columns={f: f"exposure.{f}" for f in EXPOSURE_FIELDS}
            )
            frame = ds.merge(ex, on=["instrument", "exposure"], how="left")
            for f in _IMPLIED_FROM_EXPOSURE:
                frame[f] = frame[f].fillna(frame[f"exposure.{f}"])
        else:
            frame = ds.copy()
            for f, kind in EXPOSURE_FIELDS.items():
                dtype = {"i": "Int64", "f": "float64", "s": "string"}[kind]
                frame[f"exposure.{f}"] = pd.Series([None] * len(ds), dtype=dtype)
        frame["_row"] = np.arange(len(frame))
        self._frame, self._frame_version = frame, state.version
        return frame

    @staticmethod
    def _expression_columns() -> dict[str, tuple[str, str]]:
        cols: dict[str, tuple[str, str]] = {
            d: (d, "i" if d in INT_DIMENSIONS else "s") for d in DIMENSIONS
        }
        cols["visit"] = ("exposure", "i")
        for prefix in ("exposure", "visit"):
            for f, kind in EXPOSURE_FIELDS.items():
                cols[f"{prefix}.{f}"] = (f"exposure.{f}", kind)
        return cols

    def _select(
        self,
        dataset_type: str | Sequence[str] | None,
        where: str | None,
        collections: str | Sequence[str] | None,
        bind: Mapping[str, Any] | None,
        data_id: Mapping[str, Any] | None,
        find_first: bool,
        mjd: float | None = None,
    ) -> tuple[RegistryState, pd.DataFrame]:
        predicate = compile_expression(where, self._expression_columns(), bind)
        state = self._state()
        frame = self._query_frame(state)
        if dataset_type is None or dataset_type == "*":
            types = None
        else:
            names = [dataset_type] if isinstance(dataset_type, str) else list(dataset_type)
            types = []
            for n in names:
                if any(c in n for c in "*?["):
                    types += [d.name for d in self.query_dataset_types(n)]
                else:
                    types.append(self.get_dataset_type(n).name)
        if types is not None:
            frame = frame[frame["dataset_type"].isin(types).to_numpy(dtype=bool)]
        if data_id:
            for k, v in normalize_data_id(data_id).items():
                frame = frame[(frame[k] == v).to_numpy(dtype=bool)]
        if collections is None and self.collections is None and self.run is None:
            search = [r for r in self._collections.all().values() if r.type is CollectionType.RUN]
        else:
            search = self._search_path(collections)
        parts = []
        for rank, rec in enumerate(search):
            if rec.type is CollectionType.RUN:
                part = frame[(frame["run"] == rec.name).to_numpy(dtype=bool)]
            else:
                assoc = state.associations
                assoc = assoc[(assoc["collection"] == rec.name).to_numpy(dtype=bool)]
                if rec.type is CollectionType.CALIBRATION and mjd is not None:
                    t = to_mjd(mjd)
                    assoc = assoc[(assoc["begin"].to_numpy() <= t) & (assoc["end"].to_numpy() > t)]
                part = frame[frame["id"].isin(assoc["dataset_id"]).to_numpy(dtype=bool)]
            if len(part):
                parts.append(part.assign(_rank=rank))
        if not parts:
            return state, frame.iloc[0:0]
        sel = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        sel = sel[predicate(sel)]
        if find_first and len(parts) > 1:
            sel = sel.sort_values("_rank", kind="stable").drop_duplicates(
                subset=["dataset_type", "key"], keep="first"
            )
        elif len(parts) > 1:
            sel = sel.drop_duplicates(subset=["id"], keep="first")
        return state, sel

    def query_datasets(
        self,
        dataset_type: str | Sequence[str] | None = None,
        where: str | None = None,
        *,
        collections: str | Sequence[str] | None = None,
        bind: Mapping[str, Any] | None = None,
        data_id: Mapping[str, Any] | None = None,
        find_first: bool = True,
        mjd: float | None = None,
        as_frame: bool = False,
    ) -> list[DatasetRef] | pd.DataFrame:
        """Find datasets by type, collections and expression.

        Parameters
        ----------
        dataset_type : str, list of str or None
            Names or glob patterns; None or ``"*"`` for all types.
        where : str, optional
            LSST-style (``band='r' AND visit IN (1..5)``) or data-ID style
            (``visit=1..9:2^12 detector=0^3``) expression.
        collections : str or list, optional
            Search path; defaults to the Butler's, else every RUN.
        bind : mapping, optional
            Values of names used in ``where``.
        data_id : mapping, optional
            Extra equality constraints.
        find_first : bool
            Keep only the first match per (type, data ID) along the search path.
        mjd : float, optional
            Restrict CALIBRATION collections to datasets valid at this time.
        as_frame : bool
            Return the matching registry rows as a DataFrame instead of refs.

        Returns
        -------
        list of DatasetRef (sorted by type, then data ID) or DataFrame
        """
        _, sel = self._select(dataset_type, where, collections, bind, data_id, find_first, mjd)
        sel = sel.sort_values(["dataset_type", *DIMENSIONS, "run"], kind="stable")
        if as_frame:
            return sel.drop(columns=["_row", "_rank"], errors="ignore").reset_index(drop=True)
        return self._refs_from_frame(sel)

    def _refs_from_frame(self, sel: pd.DataFrame) -> list[DatasetRef]:
        out: list[DatasetRef] = []
        for t, group in sel.groupby("dataset_type", sort=True):
            dt = self.get_dataset_type(str(t))
            dims = list(dt.dimensions)
            vals = [group[d].to_numpy(dtype=object) for d in dims]
            cols = zip(
                group["run"].to_numpy(dtype=object),
                group["id"].to_numpy(dtype=object),
                group["path"].to_numpy(dtype=object),
                *vals,
                strict=True,
            )
            for run, id_, path, *dv in cols:
                items = {
                    d: (int(v) if d in INT_DIMENSIONS else v) for d, v in zip(dims, dv, strict=True)
                }
                out.append(
                    DatasetRef(
                        dt.name, DataId._trusted(items), run, uuid.UUID(id_), path, dt.storage_class
                    )
                )
        return out

    def query_data_ids(
        self,
        dimensions: str | Sequence[str],
        *,
        datasets: str | Sequence[str] | None = None,
        where: str | None = None,
        collections: str | Sequence[str] | None = None,
        bind: Mapping[str, Any] | None = None,
        data_id: Mapping[str, Any] | None = None,
    ) -> list[DataId]:
        """Distinct data IDs over ``dimensions`` among existing datasets.

        With ``datasets`` the IDs come from datasets of those types in
        ``collections``; without, from every dataset (any collection unless
        ``collections`` is given). Implied dimensions (band, day_obs...) come
        from the exposure records.
        """
        dims_in = [dimensions] if isinstance(dimensions, str) else list(dimensions)
        dims = []
        for d in dims_in:
            d = "exposure" if d == "visit" else d
            if d not in DIMENSIONS:
                raise ValueError(f"unknown dimension {d!r}; known: {', '.join(DIMENSIONS)}")
            dims.append(d)
        dims = [d for d in DIMENSIONS if d in dims]
        _, sel = self._select(datasets, where, collections, bind, data_id, find_first=False)
        sub = sel[dims].dropna().drop_duplicates()
        sub = sub.sort_values(dims, kind="stable")
        out = []
        for row in sub.itertuples(index=False, name=None):
            out.append(
                DataId._trusted(
                    {
                        d: (int(v) if d in INT_DIMENSIONS else str(v))
                        for d, v in zip(dims, row, strict=True)
                    }
                )
            )
        return out

    # --------------------------------------------------------------- removal
    def prune(
        self, refs: Iterable[DatasetRef], *, purge: bool = True, disassociate: bool = True
    ) -> int:
        """Remove datasets.

        Parameters
        ----------
        refs : iterable of DatasetRef
        purge : bool
            Delete the datasets and their files (tombstone first, then files).
        disassociate : bool
            Also drop them from TAGGED/CALIBRATION collections.

        Returns
        -------
        int
            Number of datasets processed.
        """
        refs = list(refs)
        if not refs:
            return 0
        records: dict[str, list[dict[str, Any]]] = {}
        if disassociate:
            state = self._state()
            ids = {str(r.id) for r in refs}
            assoc = state.associations
            hit = assoc[assoc["dataset_id"].isin(list(ids)).to_numpy(dtype=bool)]
            records["associations"] = [
                {"collection": c, "dataset_id": i, "begin": b, "end": e, "removed": True}
                for c, i, b, e in zip(
                    hit["collection"], hit["dataset_id"], hit["begin"], hit["end"], strict=True
                )
            ]
        if purge:
            records["datasets"] = [
                {
                    "id": str(r.id),
                    "dataset_type": r.dataset_type,
                    "run": r.run,
                    "storage_class": r.storage_class,
                    "path": r.path,
                    "key": data_id_path(r.data_id, tuple(r.data_id)),
                    "removed": True,
                    **r.data_id.to_dict(),
                }
                for r in refs
            ]
        self.registry.append(records)
        if purge:
            for r in refs:
                key = data_id_path(r.data_id, tuple(r.data_id))
                self.storage.remove_tree(self._dataset_dir(r.dataset_type, r.run, key))
        return len(refs)

    def remove(self, refs: Iterable[DatasetRef]) -> int:
        """Delete datasets and their files (same as ``prune(refs, purge=True)``)."""
        return self.prune(refs, purge=True)

    def remove_runs(self, names: str | Iterable[str], *, unlink_from_chains: bool = True) -> None:
        """Delete RUN collections with all their datasets and files.

        Files of raws ingested with ``transfer='direct'`` live outside the
        repository and are left alone.
        """
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            rec = self._collections.get(name)
            if rec.type is not CollectionType.RUN:
                raise CollectionError(f"{name!r} is a {rec.type.value} collection, not a RUN")
        self.registry.append({"run_removals": [{"run": n} for n in names]})
        for name in names:
            if unlink_from_chains:
                for chain in self._collections.query("*", {CollectionType.CHAINED}):
                    if name in chain.children:
                        self._collections.set_chain(
                            chain.name, [c for c in chain.children if c != name], chain.doc
                        )
            self._collections.remove(name)
            self._known_runs.discard(name)
            self.storage.remove_tree(f"{RUNS_DIR}/{escape_segment(name)}")

    def compact(self) -> bool:
        """Fold the registry log into a new snapshot (done automatically, too)."""
        return self.registry.compact(blocking=True)

    # ----------------------------------------------------------- bulk (internal)
    def _bulk_register(self, rows: pd.DataFrame) -> None:
        """Register many dataset rows at once, straight into a snapshot.

        Internal API for benchmarks and migrations: rows need ``dataset_type``,
        ``run`` and the dimension columns; ``id``, ``key``, ``path`` and
        ``storage_class`` are derived. No payload is written.
        """
        rows = rows.copy()
        out = []
        for t, group in rows.groupby("dataset_type", sort=False):
            dt = self.get_dataset_type(str(t))
            dims = list(dt.dimensions)
            keys, ids, paths = [], [], []
            for run, *vals in zip(group["run"], *[group[d] for d in dims], strict=True):
                if run not in self._known_runs:
                    self._ensure_run(str(run))
                did = {
                    d: (int(v) if d in INT_DIMENSIONS else str(v))
                    for d, v in zip(dims, vals, strict=True)
                }
                key = data_id_path(did, dt.dimensions)
                keys.append(key)
                ids.append(str(dataset_id(dt.name, did, str(run))))
                paths.append(f"{self._dataset_dir(dt.name, str(run), key)}/")
            group = group.assign(key=keys, id=ids, path=paths, storage_class=dt.storage_class)
            out.append(group)
        frame = pd.concat(out, ignore_index=True)
        frame["seq"] = time.time_ns()
        frame["removed"] = False
        self.registry.compact(extra={"datasets": frame})


def _rebuild_butler(
    root: str, collections: list[str] | None, run: str | None, storage_options: dict[str, Any]
) -> Butler:
    return Butler(root, collections=collections, run=run, storage_options=storage_options)
