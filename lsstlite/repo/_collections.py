"""Collection definitions, stored one JSON file per collection.

``_registry/collections/<escaped name>.json`` holds ``{"name", "type",
"children", "doc"}``. Files are created with an exclusive link (so two
processes registering the same name agree) and replaced atomically when a
chain is redefined. Membership of TAGGED and CALIBRATION collections lives in
the registry log (``associations`` table), not here.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from ._dimensions import check_collection_name, escape_segment
from ._errors import CollectionCycleError, CollectionError, MissingCollectionError
from ._storage import Storage

__all__ = ["CollectionManager", "CollectionType"]

COLL_DIR = "_registry/collections"


class CollectionType(enum.Enum):
    """Kinds of collections."""

    RUN = "RUN"
    """Holds datasets; every dataset belongs to exactly one run."""
    CHAINED = "CHAINED"
    """An ordered search path over other collections (which may be chains)."""
    TAGGED = "TAGGED"
    """A named selection of existing datasets."""
    CALIBRATION = "CALIBRATION"
    """Datasets certified for validity ranges ``[begin, end)`` in time (MJD)."""


@dataclass(frozen=True)
class CollectionRecord:
    """Definition of one collection."""

    name: str
    type: CollectionType
    children: tuple[str, ...] = ()
    doc: str = field(default="", compare=False)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "name": self.name,
                "type": self.type.value,
                "children": list(self.children),
                "doc": self.doc,
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> CollectionRecord:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            data["name"], CollectionType(data["type"]), tuple(data["children"]), data.get("doc", "")
        )


class CollectionManager:
    """Reads and writes collection definitions, with an mtime-checked cache."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._cache: dict[str, tuple[float, CollectionRecord]] = {}
        self._lock = threading.Lock()

    def _file(self, name: str) -> str:
        return f"{COLL_DIR}/{escape_segment(name)}.json"

    def all(self) -> dict[str, CollectionRecord]:
        """All collection definitions, by name."""
        with self._lock:
            listing = {
                n: m
                for n, m in self.storage.list_dir(COLL_DIR)
                if n.endswith(".json") and not n.startswith(".")
            }
            for fname in list(self._cache):
                if fname not in listing:
                    del self._cache[fname]
            for fname, mtime in listing.items():
                cached = self._cache.get(fname)
                if cached is None or cached[0] != mtime:
                    try:
                        rec = CollectionRecord.from_json(
                            self.storage.read_bytes(f"{COLL_DIR}/{fname}")
                        )
                    except FileNotFoundError:
                        continue
                    self._cache[fname] = (mtime, rec)
            return {rec.name: rec for _, rec in self._cache.values()}

    def get(self, name: str) -> CollectionRecord:
        check_collection_name(name)
        try:
            raw = self.storage.read_bytes(self._file(name))
        except FileNotFoundError:
            raise MissingCollectionError(f"collection {name!r} does not exist") from None
        return CollectionRecord.from_json(raw)

    def find(self, name: str) -> CollectionRecord | None:
        try:
            return self.get(name)
        except MissingCollectionError:
            return None

    def register(self, name: str, ctype: CollectionType, doc: str = "") -> bool:
        """Create a collection; return False if it already exists with this type."""
        check_collection_name(name)
        rec = CollectionRecord(name, ctype, (), doc)
        if self.storage.create_exclusive(self._file(name), rec.to_json()):
            return True
        existing = self.get(name)
        if existing.type is not ctype:
            raise CollectionError(
                f"collection {name!r} already exists with type {existing.type.value}, "
                f"not {ctype.value}"
            )
        return False

    def set_chain(self, name: str, children: list[str], doc: str = "") -> None:
        """Define (or redefine) the CHAINED collection ``name``."""
        check_collection_name(name)
        existing = self.find(name)
        if existing is not None and existing.type is not CollectionType.CHAINED:
            raise CollectionError(
                f"collection {name!r} is a {existing.type.value} collection, not CHAINED"
            )
        defs = self.all()
        for child in children:
            check_collection_name(child)
            if child not in defs and child != name:
                raise MissingCollectionError(
                    f"cannot put {child!r} in chain {name!r}: collection {child!r} does not exist"
                )
        # cycle detection on the would-be graph
        graph = {n: list(r.children) for n, r in defs.items()}
        graph[name] = list(children)
        path = self._find_cycle(name, graph)
        if path:
            raise CollectionCycleError(
                f"chain {name!r} -> {children} would create a cycle: {' -> '.join(path)}"
            )
        rec = CollectionRecord(name, CollectionType.CHAINED, tuple(children), doc)
        self.storage.write_atomic(self._file(name), rec.to_json())

    @staticmethod
    def _find_cycle(start: str, graph: dict[str, list[str]]) -> list[str]:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for child in graph.get(node, []):
                if child == start:
                    return [*path, child]
                if child not in path:
                    stack.append((child, [*path, child]))
        return []

    def remove(self, name: str) -> None:
        self.get(name)
        self.storage.remove_file(self._file(name))

    def flatten(self, names: list[str]) -> list[CollectionRecord]:
        """Expand chains depth-first, keeping the first occurrence of each collection."""
        out: list[CollectionRecord] = []
        seen: set[str] = set()
        defs = self.all()

        def visit(name: str, depth: int) -> None:
            if depth > 100:
                raise CollectionCycleError(f"collection chain through {name!r} is too deep")
            rec = defs.get(name)
            if rec is None:
                check_collection_name(name)
                raise MissingCollectionError(f"collection {name!r} does not exist")
            if rec.type is CollectionType.CHAINED:
                for child in rec.children:
                    visit(child, depth + 1)
            elif name not in seen:
                seen.add(name)
                out.append(rec)

        for n in names:
            visit(n, 0)
        return out

    def query(
        self, pattern: str = "*", types: set[CollectionType] | None = None
    ) -> list[CollectionRecord]:
        return sorted(
            (
                r
                for n, r in self.all().items()
                if fnmatch.fnmatchcase(n, pattern) and (types is None or r.type in types)
            ),
            key=lambda r: r.name,
        )
