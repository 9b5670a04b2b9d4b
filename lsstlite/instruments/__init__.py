"""Camera descriptions and raw readers.

An :class:`Instrument` knows how one camera writes its raw files: which header keys carry
the observation metadata, how the amplifiers are laid out, which physical filter maps to
which abstract band. Instruments are found by name (:func:`get_instrument`) or from a raw
header (:func:`instrument_for_header`). Third-party cameras plug in through the
``lsstlite.instruments`` entry-point group (``Name = "package.module:Class"``); the
built-in ones are registered directly so that a source checkout works without
installation metadata.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import xarray as xr

__all__ = [
    "METADATA_KEYS",
    "Instrument",
    "RawReadError",
    "get_instrument",
    "instrument_for_header",
    "known_instruments",
]

#: Instruments shipped with lsstlite: name → "module:Class" (imported lazily).
_BUILTIN = {"SimCam": "lsstlite.instruments.simcam:SimCam"}

#: Keys every ``read_raw_metadata`` result carries.
METADATA_KEYS = (
    "instrument",
    "exposure",
    "detector",
    "band",
    "physical_filter",
    "day_obs",
    "obs_type",
    "mjd",
    "exptime",
    "ra",
    "dec",
    "airmass",
    "rot_angle",
)


class RawReadError(ValueError):
    """A raw file cannot be read: truncated, not FITS, or missing a required header key."""


class Instrument:
    """Base class of camera descriptions.

    Subclasses set :attr:`name` (the value of the raw header's ``INSTRUME`` key) and
    :attr:`filter_to_band`, and implement :meth:`read_raw_metadata` and :meth:`read_raw`.
    """

    #: Instrument name, as in the ``INSTRUME`` header key and the ``instrument`` dimension.
    name: ClassVar[str] = "base"
    #: Physical filter name → abstract band.
    filter_to_band: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Instrument:
        """The instrument configured for a raw file with this primary header.

        The default ignores the header; cameras with several configurations override it.
        """
        return cls()

    def band_for_filter(self, physical_filter: str) -> str:
        """Abstract band (``"r"``) of a physical filter (``"SIM-r"``).

        Raises
        ------
        KeyError
            If the filter is not one of this camera's filters.
        """
        try:
            return self.filter_to_band[physical_filter]
        except KeyError:
            raise KeyError(
                f"{self.name} has no physical filter {physical_filter!r}; "
                f"known filters: {sorted(self.filter_to_band)}"
            ) from None

    def read_raw_metadata(self, path: str | Path) -> dict[str, Any]:
        """Observation metadata of one raw file (keys: see ``METADATA_KEYS``)."""
        raise NotImplementedError

    def read_raw(self, path: str | Path) -> xr.Dataset:
        """The untrimmed raw frame of one raw file, with amplifier geometry in attrs."""
        raise NotImplementedError


def _load(target: str) -> type[Instrument]:
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Instrument)):
        raise TypeError(f"{target!r} is not an lsstlite Instrument subclass")
    return cls


@functools.lru_cache(maxsize=1)
def _plugins() -> tuple[tuple[str, str], ...]:
    """The ``lsstlite.instruments`` entry points, scanned once per process (a scan of
    the installed distributions takes ~20 ms, and every raw read looked its camera up)."""
    return tuple((ep.name, ep.value) for ep in entry_points(group="lsstlite.instruments"))


def _registry() -> dict[str, str]:
    """Name → "module:Class" for built-in and plug-in instruments (plug-ins win; a
    plug-in installed after the first lookup needs a new process)."""
    found = dict(_BUILTIN)
    found.update(_plugins())
    return found


def known_instruments() -> list[str]:
    """Names of every instrument available (built-in and plug-ins)."""
    return sorted(_registry())


def get_instrument(name: str) -> Instrument:
    """The instrument called ``name`` (its default configuration).

    Raises
    ------
    KeyError
        If no built-in or plug-in instrument has that name.
    """
    registry = _registry()
    if name not in registry:
        raise KeyError(f"unknown instrument {name!r}; known instruments: {sorted(registry)}")
    return _load(registry[name])()


def instrument_for_header(header: Mapping[str, Any]) -> Instrument:
    """The instrument that wrote a raw file, from its primary header's ``INSTRUME`` key.

    Raises
    ------
    KeyError
        If the header has no ``INSTRUME`` or names an unknown instrument.
    """
    if "INSTRUME" not in header:
        raise KeyError("header has no INSTRUME key: cannot tell which camera wrote it")
    name = str(header["INSTRUME"]).strip()
    registry = _registry()
    if name not in registry:
        raise KeyError(f"unknown instrument {name!r}; known instruments: {sorted(registry)}")
    return _load(registry[name]).from_header(header)
