"""Export datasets to plain files: FITS for images, Parquet for tables, JSON."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
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
) -> list[Path]:
    """Export matching datasets, one file per dataset named from its data ID.

    Images become multi-extension FITS with WCS
    (:func:`lsstlite.data.write_exposure_fits`), tables Parquet with the
    data ID added as columns, JSON datasets ``.json``, raws a copy of the
    raw file.

    Returns
    -------
    list of Path
        The files written.
    """
    from lsstlite.data import write_exposure_fits

    refs = butler.query_datasets(dataset_type, where, collections=collections, bind=bind)
    assert isinstance(refs, list)
    out_dir = Path(to_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for ref in refs:
        dest = out_dir / export_name(ref)
        if dest.exists() and not overwrite:
            raise FileExistsError(f"{dest} exists; pass overwrite=True to replace it")
        obj = butler.get(ref)
        if ref.storage_class == "Exposure":
            write_exposure_fits(obj, dest, overwrite=overwrite)
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
        written.append(dest)
    return written
