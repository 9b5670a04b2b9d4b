"""Export datasets to plain files: FITS for images, Parquet for tables, JSON."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ._butler import Butler, DatasetRef
from ._dimensions import escape_segment

__all__ = ["export", "export_name"]

_SUFFIX = {"Exposure": ".fits", "Table": ".parquet", "Json": ".json", "Raw": ".fits"}


def export_name(ref: DatasetRef) -> str:
    """File name of an exported dataset, e.g. ``calexp_instrument-SimCam_exposure-12_detector-3.fits``."""
    parts = [ref.dataset_type] + [f"{k}-{escape_segment(str(v))}" for k, v in ref.data_id.items()]
    return "_".join(parts) + _SUFFIX[ref.storage_class]


def export(
    butler: Butler,
    collections: str | Sequence[str],
    dataset_type: str | Sequence[str],
    where: str | None,
    to_dir: str | os.PathLike[str],
    *,
    bind: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    threads: int = 1,
    client: Any | None = None,
) -> list[Path]:
    """Export matching datasets, one file per dataset named from its data ID.

    Images become multi-extension FITS with WCS
    (:func:`lsstlite.data.write_exposure_fits`), tables Parquet with the
    data ID added as columns, JSON datasets ``.json``, raws a copy of the
    raw file.

    Parameters
    ----------
    threads
        Files written at once by threads of this process (FITS export gains little:
        astropy's header and byte-swapping work holds the GIL).
    client
        A ``dask.distributed`` client: the files are written by its workers instead
        (processes, so FITS export scales with them; ``threads`` is then ignored).

    Returns
    -------
    list of Path
        The files written, in the order of the query.

    Raises
    ------
    FileExistsError
        A destination exists and ``overwrite`` is false (checked for every file before
        any is written).
    """
    refs = butler.query_datasets(dataset_type, where, collections=collections, bind=bind)
    assert isinstance(refs, list)
    out_dir = Path(to_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dests = [out_dir / export_name(ref) for ref in refs]
    if not overwrite:
        for dest in dests:
            if dest.exists():
                raise FileExistsError(
                    f"{dest} exists; pass overwrite=True (lsstlite export --overwrite) to "
                    "replace it"
                )
    jobs = list(zip(refs, dests, strict=True))
    if client is not None and jobs:
        futures = client.map(_export_one, [butler] * len(jobs), refs, dests, pure=False)
        return [Path(p) for p in client.gather(futures)]
    if threads <= 1 or len(jobs) <= 1:
        return [_export_one(butler, ref, dest) for ref, dest in jobs]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda job: _export_one(butler, *job), jobs))


def _export_one(butler: Butler, ref: DatasetRef, dest: Path) -> Path:
    """Write one dataset to ``dest`` (replacing it)."""
    from lsstlite.data import write_exposure_fits

    obj = butler.get(ref)
    if ref.storage_class == "Exposure":
        write_exposure_fits(obj, dest, overwrite=True)
    elif ref.storage_class == "Table":
        table = obj.copy()
        for k, v in ref.data_id.items():
            table[k] = v
        tmp = dest.with_name(f".{dest.name}.tmp")
        table.to_parquet(tmp)
        os.replace(tmp, dest)
    elif ref.storage_class == "Json":
        dest.write_text(json.dumps(obj, indent=1, sort_keys=True))
    else:
        shutil.copyfile(str(obj), dest)
    return dest
