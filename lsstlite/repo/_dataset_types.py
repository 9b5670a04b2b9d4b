"""Dataset types: a name, the dimensions of its data IDs and a storage class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._dimensions import ALIASES, DIMENSIONS, check_dataset_type_name

__all__ = ["STANDARD_DATASET_TYPES", "STORAGE_CLASSES", "DatasetType"]

#: Storage classes and what ``get`` returns for them.
STORAGE_CLASSES: dict[str, str] = {
    "Exposure": "xarray.Dataset stored as a zarr group, opened lazily (dask-backed)",
    "Table": "pandas.DataFrame stored as Parquet",
    "Json": "dict stored as JSON",
    "Raw": "path (str) of a raw FITS file, copied/linked into the repository or recorded in place",
}


@dataclass(frozen=True)
class DatasetType:
    """Definition of a dataset type.

    Parameters
    ----------
    name : str
        ``[A-Za-z][A-Za-z0-9_]*``.
    dimensions : tuple of str
        Required dimensions of the data IDs (``visit`` is stored as
        ``exposure``); kept in canonical order.
    storage_class : str
        One of :data:`STORAGE_CLASSES`.
    is_calibration : bool
        Whether datasets of this type may be certified in CALIBRATION
        collections.
    doc : str
        Free text, not part of the identity of the type.
    """

    name: str
    dimensions: tuple[str, ...]
    storage_class: str
    is_calibration: bool = False
    doc: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        check_dataset_type_name(self.name)
        dims = []
        for d in self.dimensions:
            d = ALIASES.get(d, d)
            if d not in DIMENSIONS:
                raise ValueError(
                    f"dataset type {self.name!r}: unknown dimension {d!r}; known dimensions: "
                    f"{', '.join(DIMENSIONS)}"
                )
            dims.append(d)
        object.__setattr__(self, "dimensions", tuple(d for d in DIMENSIONS if d in dims))
        if self.storage_class not in STORAGE_CLASSES:
            raise ValueError(
                f"dataset type {self.name!r}: unknown storage class {self.storage_class!r}; "
                f"choose one of {', '.join(STORAGE_CLASSES)}"
            )

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return {
            "name": self.name,
            "dimensions": list(self.dimensions),
            "storage_class": self.storage_class,
            "is_calibration": self.is_calibration,
            "doc": self.doc,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetType:
        """Inverse of :meth:`to_json`."""
        return cls(
            name=data["name"],
            dimensions=tuple(data["dimensions"]),
            storage_class=data["storage_class"],
            is_calibration=bool(data.get("is_calibration", False)),
            doc=data.get("doc", ""),
        )


_DET = ("instrument", "exposure", "detector")
_VIS = ("instrument", "visit")
_PATCH = ("skymap", "tract", "patch")
_PATCH_BAND = ("skymap", "tract", "patch", "band")

STANDARD_DATASET_TYPES: dict[str, DatasetType] = {
    t.name: t
    for t in [
        DatasetType("raw", _DET, "Raw", doc="raw FITS file of one detector"),
        DatasetType("bias", ("instrument", "detector"), "Exposure", True, "master bias"),
        DatasetType("dark", ("instrument", "detector"), "Exposure", True, "master dark"),
        DatasetType(
            "flat", ("instrument", "detector", "physical_filter"), "Exposure", True, "master flat"
        ),
        DatasetType(
            "fringe",
            ("instrument", "detector", "physical_filter"),
            "Exposure",
            True,
            "fringe frame",
        ),
        DatasetType("defects", ("instrument", "detector"), "Table", True, "defect boxes"),
        DatasetType("post_isr", _DET, "Exposure", doc="exposure after ISR"),
        DatasetType("calexp", _DET, "Exposure", doc="calibrated exposure"),
        DatasetType("src", _DET, "Table", doc="single-visit source table"),
        DatasetType("background", _DET, "Exposure", doc="subtracted background model"),
        DatasetType("psf", _DET, "Json", doc="PSF model"),
        DatasetType("visit_summary", _VIS, "Table", doc="per-visit summary, one row per detector"),
        DatasetType("skymap", ("skymap",), "Json", doc="tract/patch definition"),
        DatasetType("warp", (*_PATCH, "instrument", "visit"), "Exposure", doc="warped visit"),
        DatasetType("coadd", _PATCH_BAND, "Exposure", doc="coadded image"),
        DatasetType("coadd_det", _PATCH_BAND, "Table", doc="detections on a coadd"),
        DatasetType("merged_det", _PATCH, "Table", doc="detections merged across bands"),
        DatasetType("coadd_meas", _PATCH_BAND, "Table", doc="deblended measurements"),
        DatasetType("coadd_deblend", _PATCH_BAND, "Table", doc="pixels of deblended children"),
        DatasetType("coadd_ref", _PATCH, "Table", doc="reference-band measurements"),
        DatasetType("coadd_forced", _PATCH_BAND, "Table", doc="forced photometry"),
        DatasetType("object", ("skymap", "tract"), "Table", doc="multi-band object table"),
        DatasetType("refcat", (), "Table", doc="reference catalog (name = RUN refcats/<name>)"),
    ]
}
