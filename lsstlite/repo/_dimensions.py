"""Dimensions, data IDs, name validation and the escaped on-disk layout.

A data ID maps dimension names to values. ``visit`` is an alias of
``exposure`` (our camera takes one snap per visit): it is accepted on input
and stored as ``exposure``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = [
    "DIMENSIONS",
    "EXPOSURE_FIELDS",
    "INT_DIMENSIONS",
    "STR_DIMENSIONS",
    "DataId",
    "check_collection_name",
    "check_dataset_type_name",
    "escape_segment",
    "normalize_data_id",
]

#: Canonical dimension order (also the order of the data-ID path on disk).
DIMENSIONS: tuple[str, ...] = (
    "instrument",
    "skymap",
    "tract",
    "patch",
    "band",
    "physical_filter",
    "day_obs",
    "exposure",
    "detector",
)
INT_DIMENSIONS = frozenset({"exposure", "detector", "day_obs", "tract", "patch"})
STR_DIMENSIONS = frozenset({"instrument", "band", "physical_filter", "skymap"})
ALIASES = {"visit": "exposure"}

#: Fields of an exposure dimension record (queried as ``exposure.<field>``
#: or ``visit.<field>``), with their kind: "i" int, "f" float, "s" str.
EXPOSURE_FIELDS: dict[str, str] = {
    "day_obs": "i",
    "band": "s",
    "physical_filter": "s",
    "mjd": "f",
    "exptime": "f",
    "obs_type": "s",
    "ra": "f",
    "dec": "f",
}

_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_DATASET_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_MAX_NAME = 200


def escape_segment(text: str) -> str:
    """Escape ``text`` into one safe path segment.

    Characters outside ``[A-Za-z0-9_.-]`` (and a leading ``.``) become
    ``~XX`` (hex of each UTF-8 byte), so ``"SimCam/raw/all"`` becomes
    ``"SimCam~2Fraw~2Fall"``. The mapping is injective.
    """
    out = []
    for i, ch in enumerate(text):
        if ch in _SAFE_CHARS and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"~{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def _check_text(field: str, value: str, *, allow_slash: bool = False) -> None:
    if not value:
        raise ValueError(f"{field} must not be empty")
    if len(value) > _MAX_NAME:
        raise ValueError(f"{field} {value[:40]!r}... is longer than {_MAX_NAME} characters")
    bad = [c for c in value if ord(c) < 32 or c in "\\\x7f"]
    if bad:
        raise ValueError(
            f"{field} {value!r} contains a forbidden character {bad[0]!r} "
            "(control characters, NUL and backslashes are refused)"
        )
    if not allow_slash and "/" in value:
        raise ValueError(f"{field} {value!r} must not contain a path separator '/'")
    parts = value.split("/") if allow_slash else [value]
    for part in parts:
        if part in ("", ".", "..") or part.startswith(".."):
            raise ValueError(
                f"{field} {value!r} is not allowed: it is empty, absolute or contains a "
                "'.'/'..' component that could escape the repository"
            )
        if part != part.strip():
            raise ValueError(f"{field} {value!r} has leading or trailing whitespace")


def check_collection_name(name: Any) -> str:
    """Validate a collection name; ``/`` separates hierarchy levels.

    Raises
    ------
    ValueError
        If the name is empty, absolute, contains ``..`` or ``.`` components,
        glob characters, control characters or backslashes.
    """
    if not isinstance(name, str):
        raise ValueError(f"collection name must be a string, got {name!r}")
    _check_text("collection name", name, allow_slash=True)
    if any(c in name for c in "*?[]"):
        raise ValueError(f"collection name {name!r} must not contain glob characters *?[]")
    return name


def check_dataset_type_name(name: Any) -> str:
    """Validate a dataset type name (``[A-Za-z][A-Za-z0-9_]*``)."""
    if not isinstance(name, str) or not _DATASET_TYPE_RE.match(name) or len(name) > _MAX_NAME:
        raise ValueError(
            f"dataset type name {name!r} is invalid: use letters, digits and '_' and start "
            "with a letter"
        )
    return name


def _coerce_value(dim: str, value: Any) -> int | str:
    if dim in INT_DIMENSIONS:
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise ValueError(
                f"data ID value for {dim!r} must be an integer, got {value!r} "
                f"({type(value).__name__})"
            )
        return int(value)
    if not isinstance(value, str):
        raise ValueError(
            f"data ID value for {dim!r} must be a string, got {value!r} ({type(value).__name__})"
        )
    _check_text(f"data ID value for {dim!r}", value)
    return value


def normalize_data_id(data_id: Mapping[str, Any] | None, **kwargs: Any) -> dict[str, int | str]:
    """Validate and canonicalise a data ID.

    ``visit`` is folded into ``exposure``; values are type-checked (ints for
    exposure/visit/detector/day_obs/tract/patch, safe strings otherwise).

    Raises
    ------
    ValueError
        For unknown dimensions, wrong value types, unsafe strings or
        conflicting ``visit``/``exposure`` values.
    """
    merged: dict[str, Any] = dict(data_id or {})
    merged.update(kwargs)
    out: dict[str, int | str] = {}
    for key, value in merged.items():
        if not isinstance(key, str):
            raise ValueError(f"data ID keys must be strings, got {key!r}")
        dim = ALIASES.get(key, key)
        if dim not in INT_DIMENSIONS and dim not in STR_DIMENSIONS:
            raise ValueError(
                f"unknown dimension {key!r} in data ID; known dimensions: "
                f"{', '.join([*DIMENSIONS, 'visit'])}"
            )
        coerced = _coerce_value(dim, value)
        if dim in out and out[dim] != coerced:
            raise ValueError(
                f"data ID gives two different values for exposure/visit: {out[dim]!r} and "
                f"{coerced!r}"
            )
        out[dim] = coerced
    return {d: out[d] for d in DIMENSIONS if d in out}


def data_id_path(data_id: Mapping[str, int | str], dimensions: tuple[str, ...]) -> str:
    """Relative path of a data ID (``instrument=SimCam/exposure=12/detector=3``)."""
    if not dimensions:
        return "_"
    return "/".join(f"{d}={escape_segment(str(data_id[d]))}" for d in dimensions)


class DataId(Mapping[str, int | str]):
    """An immutable, hashable, canonical data ID.

    Behaves like a read-only ``dict``; ``data_id["visit"]`` returns the
    exposure number (``visit`` aliases ``exposure``).
    """

    __slots__ = ("_hash", "_items")

    def __init__(self, mapping: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self._items = normalize_data_id(mapping, **kwargs)
        self._hash = hash(tuple(self._items.items()))

    @classmethod
    def _trusted(cls, items: dict[str, int | str]) -> DataId:
        obj = cls.__new__(cls)
        obj._items = items
        obj._hash = hash(tuple(items.items()))
        return obj

    def __getitem__(self, key: str) -> int | str:
        return self._items[ALIASES.get(key, key)]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and ALIASES.get(key, key) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DataId):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._items == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in self._items.items()) + "}"

    def to_dict(self) -> dict[str, int | str]:
        """Return a plain ``dict`` copy."""
        return dict(self._items)
