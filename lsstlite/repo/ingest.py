"""Bringing external files into a repository: raws, reference catalogs, calibrations."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._butler import Butler, DatasetRef
from ._dataset_types import STANDARD_DATASET_TYPES
from ._dimensions import data_id_path, escape_segment, normalize_data_id
from ._errors import DatasetExistsError, RepoError
from ._formatters import TRANSFER_MODES, payload_url

__all__ = ["IngestReport", "certify", "ingest_raws", "ingest_refcat"]

_FITS_SUFFIXES = (".fits", ".fit", ".fits.fz", ".fits.gz", ".fz")
_REQUIRED_KEYS = ("instrument", "exposure", "detector")
_BATCH = 200


class InstrumentLike(Protocol):
    """What ingest needs from an instrument (see :mod:`lsstlite.instruments`)."""

    name: str

    def read_raw_metadata(self, path: str) -> dict[str, Any]: ...


@dataclass
class IngestReport:
    """What :func:`ingest_raws` did.

    Attributes
    ----------
    ingested : list of DatasetRef
        Newly ingested raws.
    skipped : list of (path, reason)
        Files already in the repository (no-op).
    failed : list of (path, reason)
        Files not ingested, with the reason (unreadable, missing keys,
        conflicting with a different file already ingested...).
    quarantined : dict
        Original path → new path of unreadable files moved to ``quarantine``.
    """

    ingested: list[DatasetRef] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"ingested {len(self.ingested)}, skipped {len(self.skipped)} (already present), "
            f"failed {len(self.failed)}"
        ]
        lines += [f"  failed: {p}: {r}" for p, r in self.failed]
        lines += [f"  skipped: {p}: {r}" for p, r in self.skipped[:10]]
        if len(self.skipped) > 10:
            lines.append(f"  ... and {len(self.skipped) - 10} more skipped")
        return "\n".join(lines)


def _find_files(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    out: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                out += [
                    os.path.join(dirpath, f)
                    for f in sorted(filenames)
                    if not f.startswith(".") and f.lower().endswith(_FITS_SUFFIXES)
                ]
        else:
            out.append(p)
    return out


def _resolve_instrument(instrument: Any, path: str) -> Any:
    if instrument is not None and not isinstance(instrument, str):
        return instrument
    import lsstlite.instruments as instruments

    if isinstance(instrument, str):
        return instruments.get_instrument(instrument)  # type: ignore[attr-defined]
    from astropy.io import fits

    header = fits.getheader(path)
    return instruments.instrument_for_header(header)  # type: ignore[attr-defined]


def _checksum(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _same_file(a: str, b: str) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        if os.path.getsize(a) != os.path.getsize(b):
            return False
    except OSError:
        return False
    return _checksum(a) == _checksum(b)


def _quarantine(path: str, qdir: str) -> str:
    os.makedirs(qdir, exist_ok=True)
    base = os.path.basename(path)
    dest = os.path.join(qdir, base)
    n = 1
    while os.path.lexists(dest):
        dest = os.path.join(qdir, f"{base}.{n}")
        n += 1
    shutil.move(path, dest)
    return dest


def ingest_raws(
    butler: Butler,
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    transfer: str = "link",
    run: str | None = None,
    quarantine: str | os.PathLike[str] | None = None,
    instrument: Any = None,
) -> IngestReport:
    """Ingest raw FITS files (or directories of them) as ``raw`` datasets.

    Parameters
    ----------
    butler : Butler
    paths : path or sequence of paths
        Files, or directories searched recursively for ``*.fits`` (``.fit``,
        ``.fits.fz``, ``.fits.gz``).
    transfer : {"link", "copy", "move", "symlink", "direct"}
        ``link``: hard link, falling back to a copy across filesystems;
        ``direct``: record the absolute path, copy nothing.
    run : str, optional
        Default ``<instrument>/raw/all``.
    quarantine : path, optional
        Directory where unreadable files are moved.
    instrument : Instrument or str, optional
        Default: identified from each file's primary header through
        :func:`lsstlite.instruments.instrument_for_header`.

    Returns
    -------
    IngestReport
        Files that cannot be read are not ingested but listed with the
        reason; re-ingesting a file already present is a reported no-op.

    Notes
    -----
    Exposure dimension records (day_obs, band, physical_filter, mjd,
    exptime, obs_type, ra, dec) are registered alongside, so queries such as
    ``exposure.day_obs = 20220526`` and calibration lookups by time work.
    """
    if transfer not in TRANSFER_MODES:
        raise ValueError(f"transfer={transfer!r} is not one of {', '.join(TRANSFER_MODES)}")
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    report = IngestReport()
    files = _find_files(paths)
    state = butler._state()
    seen: dict[tuple[str, str], str] = {}
    pending: list[dict[str, list[dict[str, Any]]]] = []

    def flush() -> None:
        if pending:
            merged: dict[str, list[dict[str, Any]]] = {"datasets": [], "exposures": []}
            for rec in pending:
                for k, v in rec.items():
                    merged[k] += v
            butler.registry.append(merged)
            pending.clear()

    for path in files:
        try:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no such file")
            inst = _resolve_instrument(instrument, path)
            meta = dict(inst.read_raw_metadata(path))
            missing = [k for k in _REQUIRED_KEYS if meta.get(k) is None]
            if missing:
                raise ValueError(f"{path}: header lacks {', '.join(missing)}")
            did = normalize_data_id({k: meta[k] for k in _REQUIRED_KEYS})
            implied = normalize_data_id(
                {
                    k: meta[k]
                    for k in ("band", "physical_filter", "day_obs")
                    if meta.get(k) is not None
                }
            )
        except (ValueError, OSError, KeyError, TypeError, ImportError, RepoError) as exc:
            reason = str(exc) if str(exc) else type(exc).__name__
            if path not in reason:
                reason = f"{path}: {reason}"
            report.failed.append((path, reason))
            if quarantine is not None and os.path.isfile(path):
                report.quarantined[path] = _quarantine(path, os.fspath(quarantine))
            continue
        this_run = run or f"{did['instrument']}/raw/all"
        key = data_id_path(did, STANDARD_DATASET_TYPES["raw"].dimensions)
        i = butler._lookup_run(state, "raw", this_run, key)
        if (this_run, key) in seen:
            other = seen[(this_run, key)]
            if _same_file(other, path):
                report.skipped.append((path, f"same file as {other} (already ingested)"))
            else:
                report.failed.append(
                    (path, f"{path}: data ID {did} is also given by {other} in this ingest")
                )
            continue
        if i is not None:
            existing = payload_url(butler.storage, str(state.datasets["path"].iat[i]))
            if _same_file(existing, path):
                report.skipped.append((path, f"already ingested as raw {did} in {this_run!r}"))
            else:
                report.failed.append(
                    (
                        path,
                        f"{path}: a different file is already ingested for raw {did} in run "
                        f"{this_run!r} ({existing}); remove that run first to re-ingest",
                    )
                )
            continue
        seen[(this_run, key)] = path
        exposure_record = {
            "instrument": did["instrument"],
            "exposure": did["exposure"],
            **implied,
            **{k: meta[k] for k in ("mjd", "exptime", "obs_type", "ra", "dec") if k in meta},
        }
        st = os.stat(path)
        extra = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "original_path": os.path.abspath(path),
        }
        records: dict[str, list[dict[str, Any]]] = {}
        try:
            ref = butler.put(
                path,
                "raw",
                {**did, **implied},
                run=this_run,
                transfer=transfer,
                _exposure_record=exposure_record,
                _extra=extra,
                _defer_registry=records,
            )
        except (OSError, ValueError, RepoError) as exc:
            report.failed.append((path, f"{path}: could not transfer into the repository: {exc}"))
            continue
        pending.append(records)
        report.ingested.append(ref)
        if len(pending) >= _BATCH:
            flush()
    flush()
    return report


def _check_refcat(table: Any, path: str) -> None:
    """A reference catalog calibration can use: rows, numeric ``ra`` and ``dec``, and at
    least one numeric ``<band>_flux`` column (a ValueError naming the file otherwise)."""
    import numpy as np

    columns = list(table.column_names if hasattr(table, "column_names") else table.columns)

    def numeric(col: str) -> bool:
        values = table.column(col) if hasattr(table, "column") else table[col]
        return bool(np.issubdtype(np.asarray(values).dtype, np.number))

    problems = [
        f"column {c!r} is missing" if c not in columns else f"column {c!r} is not numeric"
        for c in ("ra", "dec")
        if c not in columns or not numeric(c)
    ]
    fluxes = [c for c in columns if c.endswith("_flux")]
    if not any(numeric(c) for c in fluxes):
        problems.append(
            "no numeric <band>_flux column (nJy)"
            + (f": {fluxes} are not numbers" if fluxes else "")
        )
    n_rows = table.num_rows if hasattr(table, "num_rows") else len(table)
    if n_rows == 0:
        problems.append("it has no rows")
    if problems:
        raise ValueError(
            f"reference catalog {path}: " + "; ".join(problems) + f" (columns: {columns})"
        )


def ingest_refcat(
    butler: Butler,
    file: str | os.PathLike[str],
    name: str,
    *,
    run: str | None = None,
) -> DatasetRef:
    """Ingest a reference catalog (Parquet or FITS table) as a ``refcat`` dataset.

    The catalog goes in RUN ``refcats/<name>`` (or ``run``), and the chained
    collection ``refcats`` is extended to search it.
    """
    path = os.fspath(file)
    if not name or any(c in name for c in "/\\\x00") or name in (".", ".."):
        raise ValueError(f"refcat name {name!r} must be a plain name without path separators")
    lower = path.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            table: Any = pq.read_table(path)
        elif lower.endswith(_FITS_SUFFIXES):
            from astropy.table import Table

            table = Table.read(path, format="fits").to_pandas()
        else:
            raise ValueError("expected a .parquet or .fits file")
    except FileNotFoundError:
        raise FileNotFoundError(f"reference catalog {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read reference catalog {path}: {exc}") from exc
    _check_refcat(table, path)
    run = run or f"refcats/{escape_segment(name)}"
    try:
        ref = butler.put(
            table, "refcat", {}, run=run, provenance={"source": os.path.abspath(path), "name": name}
        )
    except DatasetExistsError:
        raise DatasetExistsError(
            f"a reference catalog named {name!r} is already in run {run!r}: ingest this one "
            f"under another name, or remove that run first (lsstlite remove-runs)"
        ) from None
    try:
        chain = butler.get_chain("refcats")
    except LookupError:
        chain = []
    if run not in chain:
        butler.set_chain("refcats", [*chain, run])
    return ref


def certify(
    butler: Butler,
    input_run: str,
    collection: str,
    begin: Any = None,
    end: Any = None,
    dataset_types: Sequence[str] | None = None,
) -> list[DatasetRef]:
    """Certify the calibrations of ``input_run`` in CALIBRATION ``collection``.

    Parameters
    ----------
    begin, end
        Validity range ``[begin, end)`` as MJDs, ISO dates/times or None
        (unbounded).
    dataset_types : sequence of str, optional
        Default: every calibration dataset type found in ``input_run``.

    Returns
    -------
    list of DatasetRef
        The certified datasets.
    """
    types = (
        list(dataset_types)
        if dataset_types
        else [d.name for d in butler.query_dataset_types() if d.is_calibration]
    )
    refs = butler.query_datasets(types, collections=input_run)
    assert isinstance(refs, list)
    if not refs:
        raise LookupError(
            f"no calibration datasets of types {types} in run {input_run!r} to certify"
        )
    butler.certify(collection, refs, begin, end)
    return refs
