"""Exports: colour PNGs of patches and object tables to Parquet and FITS."""

from lsstlite.stages.export.ops import (
    export_object_table,
    export_rgb,
    make_rgb,
    write_rgb_png,
    write_table,
)

__all__ = ["export_object_table", "export_rgb", "make_rgb", "write_rgb_png", "write_table"]
