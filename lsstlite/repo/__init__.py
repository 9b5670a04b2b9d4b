"""The repository layer: datasets, collections, queries, ingest and export.

A repository is a directory (or fsspec URL) with a root zarr group. What
exists is recorded in a registry kept in small JSON entry files and Parquet
snapshots (no SQL); images are zarr groups, tables Parquet, small objects
JSON. See ``docs/design/repository.md``.

>>> from lsstlite.repo import Butler
>>> butler = Butler.create("demo_repo", run="demo")      # doctest: +SKIP
>>> butler.put({"a": 1}, "psf", instrument="SimCam", exposure=1, detector=0)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lsstlite._lazy import lazy_exports

if TYPE_CHECKING:
    from ._butler import Butler, DatasetRef, dataset_id, to_mjd
    from ._collections import CollectionType
    from ._dataset_types import STANDARD_DATASET_TYPES, STORAGE_CLASSES, DatasetType
    from ._dimensions import DIMENSIONS, DataId
    from ._errors import (
        CollectionCycleError,
        CollectionError,
        DatasetExistsError,
        DatasetNotFoundError,
        DatasetTypeError,
        ExpressionError,
        MissingCollectionError,
        RepoError,
    )
    from ._export import export
    from .ingest import IngestReport, certify, ingest_raws, ingest_refcat

__all__ = [
    "DIMENSIONS",
    "STANDARD_DATASET_TYPES",
    "STORAGE_CLASSES",
    "Butler",
    "CollectionCycleError",
    "CollectionError",
    "CollectionType",
    "DataId",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DatasetRef",
    "DatasetType",
    "DatasetTypeError",
    "ExpressionError",
    "IngestReport",
    "MissingCollectionError",
    "RepoError",
    "certify",
    "dataset_id",
    "export",
    "ingest_raws",
    "ingest_refcat",
    "to_mjd",
]

# Imported on first use: the command line's sub-commands and the errors they catch are
# registered without loading the registry (pyarrow.parquet) or the exposures (xarray).
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "_butler": ["Butler", "DatasetRef", "dataset_id", "to_mjd"],
        "_collections": ["CollectionType"],
        "_dataset_types": ["STANDARD_DATASET_TYPES", "STORAGE_CLASSES", "DatasetType"],
        "_dimensions": ["DIMENSIONS", "DataId"],
        "_errors": [
            "CollectionCycleError",
            "CollectionError",
            "DatasetExistsError",
            "DatasetNotFoundError",
            "DatasetTypeError",
            "ExpressionError",
            "MissingCollectionError",
            "RepoError",
        ],
        "_export": ["export"],
        "ingest": ["IngestReport", "certify", "ingest_raws", "ingest_refcat"],
    },
)
