"""Spatial joins for the graph builder: which calexps go into which patch.

Used by the ``group_quanta`` hooks of the warp and coadd tasks. Regions come from an
existing calexp's WCS (its zarr metadata only) or, for a calexp the same pipeline will
produce, from the raw's header WCS (good to a few arcseconds, hence a margin).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from lsstlite.data.skymap import SkyMap
from lsstlite.data.wcs import wcs_from_cards, wcs_to_cards
from lsstlite.stages.skymap.ops import exposure_corners

__all__ = ["calexp_region", "load_skymap", "plan_patch_quanta"]

log = logging.getLogger(__name__)

#: Margin (pixels) around a raw's header WCS footprint: header pointing errors are ~1–2″.
RAW_MARGIN_PX = 50


def load_skymap(butler: Any, name: str, collections: Sequence[str]) -> SkyMap:
    """The sky map ``name`` from the repository's ``skymap`` Json dataset.

    Raises
    ------
    LookupError
        Naming the sky map and the collections searched.
    """
    try:
        data = butler.get("skymap", {"skymap": name}, collections=list(collections))
    except Exception as exc:  # the Butler raises its own lookup errors
        raise LookupError(
            f"no sky map {name!r} in collections {list(collections)}; build one with "
            f"'lsstlite make-skymap REPO --name {name}': {exc}"
        ) from exc
    return SkyMap.from_dict(data)


def _raw_region(path: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    header = fits.getheader(path, 0)
    nx, ny = (int(v) for v in str(header["DETSIZE"]).strip("[]").replace(":", ",").split(",")[1::2])
    wcs = wcs_from_cards(wcs_to_cards(header))
    m = RAW_MARGIN_PX
    xs = np.array([-m, nx / 2, nx + m, nx + m, nx + m, nx / 2, -m, -m], dtype=float)
    ys = np.array([-m, -m, -m, ny / 2, ny + m, ny + m, ny + m, ny / 2], dtype=float)
    ra, dec = wcs.all_pix2world(xs, ys, 0)
    return np.asarray(ra), np.asarray(dec)


def calexp_region(
    record: Mapping[str, Any], *, butler: Any, collections: Sequence[str]
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """Sky vertices (deg) of a calexp record's footprint, or None (logged) if unknown."""
    did = {k: record[k] for k in ("instrument", "exposure", "detector") if k in record}
    try:
        ref = record.get("_ref")
        if ref is not None:
            return exposure_corners(butler.get(ref), n_per_side=3)
        refs = butler.query_datasets("raw", collections=list(collections), data_id=did)
        if not refs:
            log.warning("no calexp or raw for %s: cannot place it on the sky map", did)
            return None
        return _raw_region(str(butler.get(refs[0])))
    except (ValueError, KeyError, OSError) as exc:
        log.warning("calexp %s left out of the spatial join: %s", did, exc)
        return None


def plan_patch_quanta(
    records: Sequence[Mapping[str, Any]],
    *,
    input_name: str,
    skymap: SkyMap,
    butler: Any,
    collections: Sequence[str],
    split_by: Sequence[str],
) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]]:
    """Quantum plans ``(data_id, implied, {input_name: records})``: calexps × patches.

    Each calexp record goes to every patch (outer box) its footprint overlaps; quanta are
    further split by the record fields in ``split_by`` (``("band",)`` for coadds,
    ``("instrument", "exposure")`` for per-visit warps).
    """
    plans: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rec in records:
        region = calexp_region(rec, butler=butler, collections=collections)
        if region is None:
            continue
        for tract_id, patches in skymap.find_patches(*region).items():
            for patch in patches:
                key = (tract_id, patch.id, *(rec.get(k) for k in split_by))
                plans.setdefault(key, []).append(dict(rec))
    out = []
    for key in sorted(plans, key=lambda k: tuple(str(v) for v in k)):
        tract_id, patch_id, *rest = key
        extra = dict(zip(split_by, rest, strict=True))
        data_id = {"skymap": skymap.name, "tract": tract_id, "patch": patch_id, **extra}
        if "exposure" in extra:
            data_id["visit"] = extra["exposure"]
        implied = {k: v for k, v in extra.items() if k == "band"}
        out.append((data_id, implied, {input_name: plans[key]}))
    return out
