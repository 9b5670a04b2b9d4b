"""Lazy re-exports for package ``__init__`` modules (PEP 562 module ``__getattr__``).

A package that re-exports names from its submodules imports those submodules only when
one of the names is first looked up, so that importing one submodule of the package (a
kernel module, a config) does not import all the others and their dependencies::

    __getattr__, __dir__ = lazy_exports(__name__, {"ops": ["fit_psf"], "task": ["Task"]})

Type checkers do not see names bound this way: list them again under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, Iterable[str]], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, which re-exports the names ``exports``
    maps each of its submodules (relative name) to, and whose ``submodules`` are
    attributes imported on first access (``package.sub`` without ``import package.sub``).
    A module named from the top package (``lsstlite.data.skymap``) is taken as it is."""
    top = package.split(".")[0] + "."
    origin = {
        name: module if module.startswith(top) else f"{package}.{module}"
        for module, names in exports.items()
        for name in names
    }
    subs = set(submodules)

    def __getattr__(name: str) -> Any:
        if name in subs:
            return importlib.import_module(f"{package}.{name}")
        if name not in origin:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(origin[name]), name)
        # Bind it in the package so that the next lookup is a plain attribute access.
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *origin, *subs})

    return __getattr__, __dir__
