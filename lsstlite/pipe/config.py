"""Task configurations: frozen, typed, validated on construction, JSON/YAML round trips.

A config is a pydantic model that rejects unknown keys; nested configs are fields whose
type is another :class:`Config`. Errors name the full dotted key and what was wrong::

    isr.n_sigma: expected a number, got 'ten'
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["Config", "ConfigError", "apply_overrides", "config_diff"]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


_EXPECTED = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "extra_forbidden": "unknown key",
    "missing": "missing required key",
    "literal_error": "expected one of the allowed values",
}


def _format_errors(exc: ValidationError, prefix: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        kind = err["type"]
        what = _EXPECTED.get(kind, err["msg"])
        if kind == "literal_error":
            what = err["msg"].replace("Input should be", "expected")
        if kind in ("extra_forbidden", "missing"):
            lines.append(f"{loc}: {what}")
        else:
            lines.append(f"{loc}: {what}, got {err['input']!r}")
    return "; ".join(lines)


class Config(BaseModel):
    """Base class of every task configuration.

    Subclasses declare typed fields with defaults (and ``Field(description=...)``); a
    config is immutable after construction. Use :meth:`with_overrides` for a changed copy.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    @classmethod
    def build(cls, values: Mapping[str, Any] | None = None, *, label: str = "") -> Self:
        """Construct from a mapping; raise :class:`ConfigError` naming ``label.key`` on error."""
        try:
            return cls.model_validate(dict(values or {}))
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, label)) from None

    def with_overrides(self, overrides: Mapping[str, Any], *, label: str = "") -> Self:
        """A copy with ``overrides`` applied; keys may be dotted (``"background.mesh_size"``)."""
        merged = apply_overrides(self.model_dump(), overrides)
        return self.build(merged, label=label)

    def to_dict(self) -> dict[str, Any]:
        """The full config (every key, defaults included) as JSON-compatible data."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path_or_text: str | Path, *, label: str = "") -> Self:
        """Load from a YAML file path or YAML text."""
        text = Path(path_or_text).read_text() if isinstance(path_or_text, Path) else path_or_text
        if (
            isinstance(path_or_text, str)
            and "\n" not in path_or_text
            and Path(path_or_text).is_file()
        ):
            text = Path(path_or_text).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{label or cls.__name__}: YAML must be a mapping, got {type(data).__name__}"
            )
        return cls.build(data, label=label)


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``overrides`` (nested mappings or dotted keys) into a copy of ``base``."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(
                        f"{'.'.join(parts[:-1])}: is not a nested config, cannot set {key}"
                    )
                node[part] = child
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = apply_overrides(node[leaf], value)
        else:
            node[leaf] = value
    return out


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (recursively)."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for key in keys:
        name = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out.extend(config_diff(va, vb, prefix=f"{name}."))
        elif va != vb:
            out.append(name)
    return out
