"""Frozen column names of the multi-band tables: detections, measurements and objects.

Every table of the multi-band processing (DMTN-023 ``multiBandDriver``) is a pandas
DataFrame stored as Parquet. Its columns are fixed here and documented once; code that
writes or reads these tables uses these names, never string literals of its own.
Fluxes are in nJy, positions in the parent (tract) pixel frame of the coadd (0-based,
pixel centres at integers) and in degrees (ICRS), second moments in pixel².

Tables and their keys
---------------------
``coadd_det`` (skymap, tract, patch, band)
    Detections on one coadd (written by the coadd stage). Required columns:
    :data:`DETECTION_COLUMNS`. The band the table belongs to must be in a ``band``
    column (tasks receive tables without their data IDs).
``merged_det`` (skymap, tract, patch)
    One row per merged peak: :data:`MERGED_DETECTION_COLUMNS`.
``coadd_meas``, ``coadd_ref``, ``coadd_forced`` (… band / patch / … band)
    One row per object of the patch, parents of blends included, **same ids in the same
    order** in every band and in all three tables: :func:`measurement_columns`.
    ``coadd_ref`` adds ``ref_band``.
``object`` (skymap, tract)
    One row per primary object (deblended children and isolated objects, inside the inner
    region of their patch): :func:`object_columns`.

Object ids
----------
An object id is a pure function of the peak's sky position (:func:`object_id`): RA and
Dec are quantised to 2^31 and 2^30 steps (0.6 mas) and packed into 61 bits, so ids are
unique across patches and tracts without any bookkeeping and identical in every band.
The parent record of a blend has the id of its brightest peak with bit
:data:`PARENT_ID_BIT` set. ``parent_id`` is 0 for isolated objects and for parents.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "APERTURE_RADII_PX",
    "DETECTION_COLUMNS",
    "FLAG_COLUMNS",
    "MERGED_DETECTION_COLUMNS",
    "OBJECT_REFERENCE_COLUMNS",
    "PARENT_ID_BIT",
    "aperture_column",
    "band_flux_columns",
    "measurement_columns",
    "object_columns",
    "object_id",
]

#: Bit set in the id of the parent record of a blend.
PARENT_ID_BIT = 1 << 61

#: Default radii (pixels) of the circular aperture fluxes.
APERTURE_RADII_PX: tuple[int, ...] = (3, 6, 9, 12)

#: Columns ``coadd_det`` must have (plus ``band``): position of the detection (pixels,
#: parent frame; degrees), its flux and peak value (image units, nJy on coadds) and the
#: label of its footprint in the band's segmentation map (0 = none).
DETECTION_COLUMNS: dict[str, str] = {
    "x": "float64",
    "y": "float64",
    "ra": "float64",
    "dec": "float64",
    "flux": "float64",
    "peak": "float64",
    "footprint_id": "int64",
    "band": "str",
}

#: ``merged_det``: one row per merged peak. ``fp_y``, ``fp_x0``, ``fp_x1`` are the spans
#: (row, first column, last column + 1, parent frame) of the merged footprint, repeated on
#: every peak of that footprint; ``detected_bands`` lists the bands that detected the
#: peak, in priority order, comma-separated; ``first_band`` is the first of them (its
#: position is the one kept).
MERGED_DETECTION_COLUMNS: dict[str, str] = {
    "id": "int64",
    "parent_id": "int64",
    "footprint_id": "int64",
    "n_peaks": "int64",
    "x": "float64",
    "y": "float64",
    "ra": "float64",
    "dec": "float64",
    "peak": "float64",
    "first_band": "str",
    "detected_bands": "str",
    "fp_y": "list<int32>",
    "fp_x0": "list<int32>",
    "fp_x1": "list<int32>",
}

#: Boolean flags of a measurement (True = that measurement is unreliable):
FLAG_COLUMNS: dict[str, str] = {
    "flag_edge": "footprint touches the coadd boundary or NO_DATA pixels",
    "flag_masked": "pixels without data (NO_DATA, BAD) within 2 PSF FWHM of the centroid",
    "flag_saturated": "SAT pixels within 2 PSF FWHM of the centroid: saturated in visits "
    "carrying > 10% of the weight (without data where in all)",
    "flag_inexact_psf": "INEXACT_PSF within 1 px of the centroid: an input covering the "
    "centre was left out (saturated, masked, clipped, rejected) or at its sensor edge",
    "flag_centroid": "centroid did not converge; the peak position is reported",
    "flag_shape": "adaptive moments did not converge; PSF moments are reported",
    "flag_psf_flux": "PSF flux failed (no usable pixel)",
    "flag_kron": "Kron radius undefined; the Kron flux is NaN",
    "flag_cmodel": "galaxy model fit failed or was not run",
    "flag_deblend_skipped": "the footprint had too many peaks: flux split by distance only",
}


def aperture_column(radius_px: int) -> str:
    """Name of the aperture-flux column of a radius in pixels: ``ap_flux_<r>px``."""
    return f"ap_flux_{int(radius_px)}px"


def band_flux_columns(radii_px: Sequence[int] = APERTURE_RADII_PX) -> list[str]:
    """Flux columns (nJy) measured in every band, in table order."""
    cols = ["psf_flux", "psf_flux_err"]
    for r in radii_px:
        cols += [aperture_column(r), f"{aperture_column(r)}_err"]
    cols += ["kron_flux", "kron_flux_err", "cmodel_flux", "cmodel_flux_err", "footprint_flux"]
    return cols


def measurement_columns(radii_px: Sequence[int] = APERTURE_RADII_PX) -> dict[str, str]:
    """Columns of ``coadd_meas`` / ``coadd_forced`` (and ``coadd_ref`` minus ``ref_band``).

    =====================  =========================================================
    ``id``, ``parent_id``  object id and its parent's (0 if none), see module docs
    ``deblend_n_child``    number of children (parents of blends only, else 0)
    ``band``               band of the measurement
    ``x``, ``y``           centroid (pixels, parent frame); forced: the reference one
    ``x_err``, ``y_err``   centroid uncertainty (pixels)
    ``ra``, ``dec``        centroid on the sky (degrees)
    ``ixx, iyy, ixy``      adaptive (Gaussian-weighted) second moments, pixel²
    ``ixx_psf`` …          the PSF's adaptive moments at the centroid, pixel²
    ``psf_flux``           amplitude of the PSF model fitted at the centroid
    ``ap_flux_<r>px``      flux in a circle of radius r pixels (exact pixel overlap)
    ``kron_radius``        first-moment radius (pixels, along the moments' ellipse)
    ``kron_flux``          flux in the ellipse of 2.5 Kron radii (≥ 3.5 px)
    ``cmodel_flux``        exponential + de Vaucouleurs model (PSF-convolved) flux
    ``cmodel_frac_dev``    fraction of the model flux in the de Vaucouleurs part
                           (0.5 when both templates are the PSF: undetermined)
    ``cmodel_exp_radius``  half-light radius of the fitted exponential (pixels)
    ``cmodel_dev_radius``  half-light radius of the fitted de Vaucouleurs (pixels)
    ``footprint_flux``     sum of the (deblended) pixels of the footprint
    ``edge_distance``      distance (pixels) from the centroid to the coadd's boundary
    ``flag_*``             see :data:`FLAG_COLUMNS`
    =====================  =========================================================

    Every flux has an ``_err`` (1 σ, from the variance plane) except ``footprint_flux``.
    """
    cols: dict[str, str] = {
        "id": "int64",
        "parent_id": "int64",
        "deblend_n_child": "int64",
        "band": "str",
        "x": "float64",
        "y": "float64",
        "x_err": "float64",
        "y_err": "float64",
        "ra": "float64",
        "dec": "float64",
        "ixx": "float64",
        "iyy": "float64",
        "ixy": "float64",
        "ixx_psf": "float64",
        "iyy_psf": "float64",
        "ixy_psf": "float64",
        "kron_radius": "float64",
        "cmodel_frac_dev": "float64",
        "cmodel_exp_radius": "float64",
        "cmodel_dev_radius": "float64",
        "edge_distance": "float64",
    }
    for name in band_flux_columns(radii_px):
        cols[name] = "float64"
    for name in FLAG_COLUMNS:
        cols[name] = "bool"
    return cols


#: Columns of the object table that come from the reference measurement (band-free).
OBJECT_REFERENCE_COLUMNS: tuple[str, ...] = (
    "id",
    "parent_id",
    "ra",
    "dec",
    "ref_band",
    "x",
    "y",
    "x_err",
    "y_err",
    "ixx",
    "iyy",
    "ixy",
    "ixx_psf",
    "iyy_psf",
    "ixy_psf",
    "kron_radius",
    "cmodel_frac_dev",
    *FLAG_COLUMNS,
)


def object_columns(bands: Sequence[str], radii_px: Sequence[int] = APERTURE_RADII_PX) -> list[str]:
    """Columns of the ``object`` table, in order.

    The reference columns (:data:`OBJECT_REFERENCE_COLUMNS`: ``id, parent_id, ra, dec,
    ref_band``, the reference centroid, moments and flags) come first, then for every
    band ``<band>_<flux column>`` for each of :func:`band_flux_columns` (forced
    photometry at the reference position and shape, nJy) and ``<band>_flag`` (any
    forced-measurement flag set in that band).
    """
    cols = list(OBJECT_REFERENCE_COLUMNS)
    for band in bands:
        cols += [f"{band}_{c}" for c in band_flux_columns(radii_px)]
        cols.append(f"{band}_flag")
    return cols


def object_id(ra: ArrayLike, dec: ArrayLike) -> NDArray[np.int64]:
    """Ids of objects at ``ra``, ``dec`` (degrees): 31 + 30 bits of quantised position."""
    ra_index = np.floor(np.mod(np.asarray(ra, float), 360.0) / 360.0 * 2.0**31).astype(np.int64)
    dec_index = np.floor((np.asarray(dec, float) + 90.0) / 180.0 * 2.0**30).astype(np.int64)
    dec_index = np.clip(dec_index, 0, 2**30 - 1)
    return np.asarray((ra_index << 30) | dec_index, dtype=np.int64)
