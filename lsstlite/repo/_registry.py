"""The registry: which datasets exist, kept safe for many concurrent writers.

Layout under ``<root>/_registry/``::

    log/<time_ns>-<pid>-<rand>.json     immutable entries, one per write call
    snapshots/<gen>.json                manifest of a consolidated snapshot
    snapshots/<gen>-<rand>-<table>.parquet   the snapshot's tables
    compact.lock                        held while compacting (O_CREAT|O_EXCL)

Writers never coordinate: each write is one new uniquely named entry file
(written to a temp name, then renamed). Every record carries ``seq`` (wall
clock ns); the state of a key is its record with the largest ``seq``, so
replaying an entry twice is harmless and entries can be applied in any order.
Deletions are tombstones (``removed=True``); removing a whole run is one
``run_removals`` record hiding every older dataset of that run.

Compaction folds the snapshot and all entries into snapshot ``gen + 1``. The
manifest is created with an exclusive link, so of two concurrent compactors
only one succeeds (the other discards its work); only the winner deletes the
entries it folded in. Readers read the newest manifest, list the log, then
check the newest manifest again and retry if it changed, so an entry is
always seen either in the log or in the snapshot.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ._storage import Storage

__all__ = ["Registry"]

REGISTRY_DIR = "_registry"
LOG_DIR = f"{REGISTRY_DIR}/log"
SNAP_DIR = f"{REGISTRY_DIR}/snapshots"
LOCK_FILE = f"{REGISTRY_DIR}/compact.lock"

_STR = "string"
_INT = "Int64"
TABLES: dict[str, dict[str, str]] = {
    "datasets": {
        "id": _STR,
        "dataset_type": _STR,
        "run": _STR,
        "storage_class": _STR,
        "path": _STR,
        "key": _STR,
        "instrument": _STR,
        "skymap": _STR,
        "tract": _INT,
        "patch": _INT,
        "band": _STR,
        "physical_filter": _STR,
        "day_obs": _INT,
        "exposure": _INT,
        "detector": _INT,
        "extra": _STR,
        "seq": "int64",
        "removed": "bool",
    },
    "exposures": {
        "instrument": _STR,
        "exposure": _INT,
        "day_obs": _INT,
        "band": _STR,
        "physical_filter": _STR,
        "mjd": "float64",
        "exptime": "float64",
        "obs_type": _STR,
        "ra": "float64",
        "dec": "float64",
        "seq": "int64",
    },
    "associations": {
        "collection": _STR,
        "dataset_id": _STR,
        "begin": "float64",
        "end": "float64",
        "seq": "int64",
        "removed": "bool",
    },
    "run_removals": {"run": _STR, "seq": "int64"},
}
KEYS = {
    "datasets": ["id"],
    "exposures": ["instrument", "exposure"],
    "associations": ["collection", "dataset_id", "begin", "end"],
    "run_removals": ["run"],
}
#: Tombstones older than this are dropped at compaction (no entry can be older).
TOMBSTONE_TTL_NS = 24 * 3600 * 10**9
STALE_LOCK_S = 120.0
STALE_TMP_S = 3600.0


def empty_frame(table: str) -> pd.DataFrame:
    cols = TABLES[table]
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in cols.items()})


def records_to_frame(table: str, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Build a typed frame from record dicts (missing keys become NA)."""
    if not records:
        return empty_frame(table)
    cols = TABLES[table]
    data = {c: [r.get(c) for r in records] for c in cols}
    out = {}
    for c, t in cols.items():
        if t == "bool":
            out[c] = pd.Series([bool(v) for v in data[c]], dtype=bool)
        elif t == "float64":
            out[c] = pd.Series([np.nan if v is None else v for v in data[c]], dtype="float64")
        elif t == "int64":
            out[c] = pd.Series(data[c], dtype="int64")
        else:
            out[c] = pd.Series(data[c], dtype=t)
    return pd.DataFrame(out)


def _coerce(table: str, df: pd.DataFrame) -> pd.DataFrame:
    cols = TABLES[table]
    for c, t in cols.items():
        if c not in df.columns:
            df[c] = pd.Series([None] * len(df), dtype=t) if t not in ("bool",) else False
    df = df[list(cols)]
    if any(str(df[c].dtype) != t for c, t in cols.items()):
        df = df.astype(cols)
    return df


def _resolve(table: str, df: pd.DataFrame) -> pd.DataFrame:
    """Keep, per key, the record with the largest seq."""
    if df.empty:
        return df
    df = df.sort_values("seq", kind="stable")
    return df.drop_duplicates(subset=KEYS[table], keep="last").reset_index(drop=True)


@dataclass
class RegistryState:
    """Resolved registry tables (tombstones removed)."""

    datasets: pd.DataFrame
    exposures: pd.DataFrame
    associations: pd.DataFrame
    version: int
    full: dict[str, pd.DataFrame] = field(default_factory=dict)


class _Retry(Exception):
    pass


class Registry:
    """Append-only log + snapshot registry; one instance per Butler.

    Thread-safe: refreshes are serialised by a lock; appends need none.
    """

    def __init__(self, storage: Storage, *, compact_threshold: int = 1000) -> None:
        self.storage = storage
        self.compact_threshold = compact_threshold
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self._gen = -1
        self._base: dict[str, pd.DataFrame] = {t: empty_frame(t) for t in TABLES}
        self._entries: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._signature: tuple[int, frozenset[str]] | None = None
        self._state: RegistryState | None = None
        self._version = 0
        self._pid = os.getpid()

    # ------------------------------------------------------------------ write
    def append(self, records: Mapping[str, Iterable[Mapping[str, Any]]]) -> str:
        """Append one immutable entry holding ``records`` (table -> rows).

        Returns the entry name. Records without ``seq`` get the current time.
        """
        now = time.time_ns()
        payload: dict[str, list[dict[str, Any]]] = {}
        for table, rows in records.items():
            if table not in TABLES:
                raise ValueError(f"unknown registry table {table!r}")
            rows_out = []
            for row in rows:
                r = dict(row)
                r.setdefault("seq", now)
                rows_out.append(r)
            if rows_out:
                payload[table] = rows_out
        if not payload:
            return ""
        name = f"{now:020d}-{os.getpid()}-{uuid.uuid4().hex[:16]}.json"
        self.storage.write_atomic(f"{LOG_DIR}/{name}", json.dumps(payload).encode())
        return name

    # ------------------------------------------------------------------- read
    def _latest_gen(self) -> tuple[int, str | None]:
        best, best_name = -1, None
        for name, _ in self.storage.list_dir(SNAP_DIR):
            if name.endswith(".json") and not name.startswith("."):
                stem = name[: -len(".json")]
                if stem.isdigit() and int(stem) > best:
                    best, best_name = int(stem), name
        return best, best_name

    def _load_snapshot(self, gen: int, name: str | None) -> None:
        if name is None:
            self._base = {t: empty_frame(t) for t in TABLES}
        else:
            try:
                manifest = json.loads(self.storage.read_bytes(f"{SNAP_DIR}/{name}"))
                base = {}
                for table in TABLES:
                    fname = manifest["tables"].get(table)
                    if fname is None:
                        base[table] = empty_frame(table)
                        continue
                    raw = self.storage.read_bytes(f"{SNAP_DIR}/{fname}")
                    tab = pq.read_table(pa.BufferReader(raw))
                    base[table] = _coerce(table, tab.to_pandas())
            except FileNotFoundError as exc:
                raise _Retry from exc
            self._base = base
        self._gen = gen

    def _log_names(self) -> list[str]:
        return sorted(
            n for n, _ in self.storage.list_dir(LOG_DIR) if n.endswith(".json") and n[0] != "."
        )

    def refresh(self, *, allow_compact: bool = True) -> RegistryState:
        """Return the current state, reading only what changed since last time."""
        with self._lock:
            if self._pid != os.getpid():  # forked: start afresh
                self._reset()
            for _attempt in range(50):
                try:
                    state = self._refresh_once()
                    break
                except _Retry:
                    time.sleep(0.01)
            else:  # pragma: no cover - pathological churn
                raise RuntimeError("registry kept changing while being read; try again")
        if allow_compact and len(self._entries) >= self.compact_threshold:
            self.compact(blocking=False)
            with self._lock:
                state = self._refresh_once_retrying()
        return state

    def _refresh_once_retrying(self) -> RegistryState:
        for _attempt in range(50):
            try:
                return self._refresh_once()
            except _Retry:
                time.sleep(0.01)
        raise RuntimeError("registry kept changing while being read; try again")

    def _refresh_once(self) -> RegistryState:
        gen, gen_name = self._latest_gen()
        if gen != self._gen:
            self._load_snapshot(gen, gen_name)
            self._signature = None
        names = self._log_names()
        for name in names:
            if name not in self._entries:
                try:
                    self._entries[name] = json.loads(self.storage.read_bytes(f"{LOG_DIR}/{name}"))
                except FileNotFoundError as exc:
                    raise _Retry from exc
        if self._latest_gen()[0] != gen:
            raise _Retry
        current = set(names)
        for name in list(self._entries):
            if name not in current:
                del self._entries[name]
        signature = (gen, frozenset(current))
        if signature != self._signature or self._state is None:
            self._state = self._build()
            self._signature = signature
        return self._state

    def _build(self) -> RegistryState:
        full: dict[str, pd.DataFrame] = {}
        for table in TABLES:
            rows = [r for e in self._entries.values() for r in e.get(table, ())]
            base = self._base[table]
            if rows:
                delta = records_to_frame(table, rows)
                frame = pd.concat([base, delta], ignore_index=True) if len(base) else delta
                frame = _resolve(table, frame)
            else:
                frame = base
            full[table] = frame
        datasets = full["datasets"]
        visible = ~datasets["removed"].to_numpy(dtype=bool)
        removals = full["run_removals"]
        if len(removals):
            removal_seq = dict(zip(removals["run"], removals["seq"], strict=True))
            cut = datasets["run"].map(removal_seq).astype("float64").fillna(-1).to_numpy()
            visible &= datasets["seq"].to_numpy() > cut
        ds_visible = datasets[visible].reset_index(drop=True) if not visible.all() else datasets
        assoc = full["associations"]
        assoc = assoc[~assoc["removed"].to_numpy(dtype=bool)].reset_index(drop=True)
        self._version += 1
        return RegistryState(ds_visible, full["exposures"], assoc, self._version, full)

    # ------------------------------------------------------------- compaction
    def _acquire_lock(self, blocking: bool, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        info = json.dumps({"pid": os.getpid(), "time": time.time()}).encode()
        while True:
            if self.storage.create_exclusive(LOCK_FILE, info):
                return True
            # stale-lock recovery: a compactor that died leaves an old lock
            for name, mtime in self.storage.list_dir(REGISTRY_DIR):
                if name == "compact.lock" and time.time() - mtime > STALE_LOCK_S:
                    self.storage.remove_file(LOCK_FILE)
            if not blocking or time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def compact(
        self, *, blocking: bool = True, extra: Mapping[str, pd.DataFrame] | None = None
    ) -> bool:
        """Fold all log entries (and ``extra`` rows) into a new snapshot.

        Returns False when another process holds the compaction lock
        (``blocking=False``) or won the race for the next generation.
        """
        if not self._acquire_lock(blocking):
            return False
        try:
            for _attempt in range(20):
                with self._lock:
                    state = self._refresh_once_retrying()
                    gen = self._gen
                    folded = list(self._entries)
                    full = dict(state.full)
                now = time.time_ns()
                if extra:
                    for table, frame in extra.items():
                        merged = pd.concat([full[table], _coerce(table, frame.copy())])
                        full[table] = _resolve(table, merged.reset_index(drop=True))
                full = self._prune(full, now)
                if self._write_snapshot(gen + 1, full):
                    for name in folded:
                        self.storage.remove_file(f"{LOG_DIR}/{name}")
                    self._cleanup(gen + 1)
                    return True
                if not extra:
                    return False
            return False  # pragma: no cover
        finally:
            self.storage.remove_file(LOCK_FILE)

    def _prune(self, full: dict[str, pd.DataFrame], now: int) -> dict[str, pd.DataFrame]:
        ds = full["datasets"]
        removals = full["run_removals"]
        keep = np.ones(len(ds), bool)
        if len(removals):
            removal_seq = dict(zip(removals["run"], removals["seq"], strict=True))
            cut = ds["run"].map(removal_seq).astype("float64").fillna(-1).to_numpy()
            keep &= ds["seq"].to_numpy() > cut
        old = (now - ds["seq"].to_numpy()) > TOMBSTONE_TTL_NS
        keep &= ~(ds["removed"].to_numpy(dtype=bool) & old)
        full["datasets"] = ds[keep].reset_index(drop=True)
        assoc = full["associations"]
        old_a = (now - assoc["seq"].to_numpy()) > TOMBSTONE_TTL_NS
        full["associations"] = assoc[~(assoc["removed"].to_numpy(dtype=bool) & old_a)].reset_index(
            drop=True
        )
        full["run_removals"] = removals[
            (now - removals["seq"].to_numpy()) <= TOMBSTONE_TTL_NS
        ].reset_index(drop=True)
        return full

    def _write_snapshot(self, gen: int, full: Mapping[str, pd.DataFrame]) -> bool:
        token = uuid.uuid4().hex[:12]
        files = {}
        for table, frame in full.items():
            fname = f"{gen:012d}-{token}-{table}.parquet"
            sink = pa.BufferOutputStream()
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
            self.storage.write_atomic(f"{SNAP_DIR}/{fname}", sink.getvalue().to_pybytes())
            files[table] = fname
        manifest = {"generation": gen, "tables": files, "created_ns": time.time_ns()}
        if self.storage.create_exclusive(
            f"{SNAP_DIR}/{gen:012d}.json", json.dumps(manifest).encode()
        ):
            return True
        for fname in files.values():
            self.storage.remove_file(f"{SNAP_DIR}/{fname}")
        return False

    def _cleanup(self, gen: int) -> None:
        """Delete generations older than ``gen - 1`` and stale temp files."""
        now = time.time()
        for name, _ in self.storage.list_dir(SNAP_DIR):
            head = name.split("-", 1)[0].split(".", 1)[0]
            if head.isdigit() and int(head) < gen - 1:
                self.storage.remove_file(f"{SNAP_DIR}/{name}")
        for d in (LOG_DIR, SNAP_DIR):
            for name, mtime in self.storage.list_dir(d):
                if name.startswith(".tmp-") and now - mtime > STALE_TMP_S:
                    self.storage.remove_file(f"{d}/{name}")

    def n_pending_entries(self) -> int:
        """Number of log entries not yet folded into a snapshot (as last seen)."""
        return len(self._entries)


def new_seq() -> int:
    """A registry sequence number (wall clock, ns)."""
    return time.time_ns()
