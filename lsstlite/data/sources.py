"""The single-visit source table (``src``, and ``icsrc`` before calibration): frozen columns.

One row per detected source of one detector. Column names never change once released;
new columns may be added. Units: positions are 0-based parent-frame pixels (pixel centres
at integers), angles in degrees, moments in pixel², fluxes in nJy in ``src`` (electrons
— the image's units — in ``icsrc``, whose ``ra``/``dec`` are NaN).

Columns (:data:`SRC_COLUMNS` is the machine-readable form):

=====================  ======  ==========================================================
``id``                 int64   unique within the detector (``1..n``, detection order)
``x``, ``y``           f8      windowed centroid (SExtractor's XWIN/YWIN definition)
``x_err``, ``y_err``   f8      1σ centroid errors (pixels)
``ra``, ``dec``        f8      degrees (ICRS) through the fitted WCS
``psf_flux``           f8      PSF-fit flux, aperture-corrected to total flux
``psf_flux_err``       f8      1σ
``ap_flux_<r>``        f8      flux inside a circle of radius ``r`` pixels (not corrected),
                               for ``r`` in :data:`AP_RADII` (3, 5, 8, 12)
``ap_flux_<r>_err``    f8      1σ
``kron_flux``          f8      flux in 2.5 Kron radii (SExtractor FLUX_AUTO)
``kron_flux_err``      f8      1σ
``kron_radius``        f8      Kron radius in units of the isophotal a, b
``ixx``, ``iyy``,      f8      adaptive (Gaussian-weighted, shape-matched) second moments
``ixy``                        of the source, pixel²; for a Gaussian the true moments
``psf_ixx`` …          f8      the same measurement on the PSF model at the source
``footprint_npix``     int32   pixels in the detection footprint
``is_psf_star``        bool    used to fit the PSF model
``is_psf_reserved``    bool    a PSF-quality star held out of the fit (for validation)
``flags``              int64   OR of :data:`SRC_FLAGS` bits
=====================  ======  ==========================================================
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "AP_RADII",
    "SRC_COLUMNS",
    "SRC_FLAGS",
    "ap_flux_column",
    "empty_source_table",
    "flag_names",
    "validate_source_table",
]

#: Aperture radii (pixels) of the ``ap_flux_<r>`` columns.
AP_RADII: tuple[int, ...] = (3, 5, 8, 12)

#: Flag name → bit of the ``flags`` column.
SRC_FLAGS: dict[str, int] = {
    "EDGE": 0,  # footprint touches the image edge, or aperture/PSF stamp off the image
    "SATURATED": 1,  # a footprint pixel is SAT
    "CR": 2,  # a footprint pixel is CR
    "INTERPOLATED": 3,  # a footprint pixel is INTRP
    "BLENDED": 4,  # deblended from a shared parent footprint
    "BAD": 5,  # a footprint pixel is BAD or NO_DATA
    "PSF_FLUX_FAILED": 6,  # PSF flux not measurable
    "MOMENTS_FAILED": 7,  # adaptive moments did not converge (isophotal moments given)
    "KRON_FAILED": 8,  # Kron radius not measurable (min radius used)
    "STREAK": 9,  # a footprint pixel is STREAK
}


def ap_flux_column(radius: float) -> str:
    """Column name of the aperture flux of radius ``radius`` pixels (``ap_flux_12``)."""
    text = f"{radius:g}".replace(".", "_")
    return f"ap_flux_{text}"


def _columns() -> dict[str, str]:
    cols = {
        "id": "int64",
        "x": "float64",
        "y": "float64",
        "x_err": "float64",
        "y_err": "float64",
        "ra": "float64",
        "dec": "float64",
        "psf_flux": "float64",
        "psf_flux_err": "float64",
    }
    for r in AP_RADII:
        cols[ap_flux_column(r)] = "float64"
        cols[ap_flux_column(r) + "_err"] = "float64"
    cols.update(
        {
            "kron_flux": "float64",
            "kron_flux_err": "float64",
            "kron_radius": "float64",
            "ixx": "float64",
            "iyy": "float64",
            "ixy": "float64",
            "psf_ixx": "float64",
            "psf_iyy": "float64",
            "psf_ixy": "float64",
            "footprint_npix": "int32",
            "is_psf_star": "bool",
            "is_psf_reserved": "bool",
            "flags": "int64",
        }
    )
    return cols


#: Column name → dtype, in table order.
SRC_COLUMNS: dict[str, str] = _columns()


def empty_source_table() -> pd.DataFrame:
    """A source table with no rows and every column."""
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in SRC_COLUMNS.items()})


def flag_names(flags: int) -> list[str]:
    """Names of the bits set in a ``flags`` value."""
    return [name for name, bit in SRC_FLAGS.items() if int(flags) >> bit & 1]


def validate_source_table(table: pd.DataFrame, *, what: str = "source table") -> None:
    """Raise ``ValueError`` naming the first missing or mistyped column."""
    for name, dtype in SRC_COLUMNS.items():
        if name not in table.columns:
            raise ValueError(f"{what}: missing column {name!r}")
        if table[name].dtype != np.dtype(dtype):
            raise ValueError(
                f"{what}: column {name!r} has dtype {table[name].dtype}, expected {dtype}"
            )
