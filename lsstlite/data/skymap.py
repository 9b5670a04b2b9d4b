"""Sky maps: tracts (TAN projections of one pixel grid) cut into overlapping patches.

A *tract* is a TAN projection centred on ``(ra_deg, dec_deg)``, north up and east left,
with square pixels of ``pixel_scale_arcsec``. Its pixel grid (0-based, pixel centres at
integers) is ``n_patches_x × patch_inner + 2 × patch_border`` pixels wide, so that every
patch's *outer* box (inner box grown by the border on each side) lies inside the tract.
Patch ``(ix, iy)`` has the sequential id ``iy × n_patches_x + ix`` (the ``patch``
dimension of data IDs); its inner box starts at ``patch_border + ix × patch_inner``.

Two kinds of sky map, both serialised to plain JSON by :meth:`SkyMap.to_dict`:

- ``discrete``: an explicit list of tracts (e.g. one tract enclosing a set of calexps, as
  LSST's ``makeDiscreteSkyMap``);
- ``rings``: the whole sky, tracts on declination rings plus two polar caps (as LSST's
  ``RingsSkyMap``). Only the parameters are stored; tracts are regenerated on demand.

Nothing here touches pixels: these are the geometry objects the warp and coadd ops use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from astropy.wcs import WCS
from numpy.typing import ArrayLike, NDArray

from lsstlite.data.wcs import WcsCards, make_tan_wcs, wcs_from_cards, wcs_to_cards

__all__ = [
    "PatchGeometry",
    "PatchInfo",
    "SkyMap",
    "TractInfo",
]

_KINDS = ("discrete", "rings")


@dataclass(frozen=True)
class PatchGeometry:
    """A pixel grid on the sky: where a warp or a coadd is computed.

    Attributes
    ----------
    wcs_cards
        FITS cards of the parent frame's WCS (the tract's).
    shape
        ``(ny, nx)`` of the grid.
    xy0
        Parent-frame pixel index ``(x0, y0)`` of the first pixel.
    """

    wcs_cards: WcsCards
    shape: tuple[int, int]
    xy0: tuple[int, int] = (0, 0)

    def wcs(self) -> WCS:
        """A fresh astropy WCS (not thread-safe: build one per thread or block)."""
        return wcs_from_cards(self.wcs_cards)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` in the parent frame, end exclusive."""
        x0, y0 = self.xy0
        return (x0, y0, x0 + self.shape[1], y0 + self.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {"wcs": dict(self.wcs_cards), "shape": list(self.shape), "xy0": list(self.xy0)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchGeometry:
        return cls(dict(data["wcs"]), tuple(data["shape"]), tuple(data["xy0"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class PatchInfo:
    """One patch of a tract: its index, sequential id and inner/outer boxes."""

    tract: int
    index: tuple[int, int]
    id: int
    inner_bbox: tuple[int, int, int, int]
    outer_bbox: tuple[int, int, int, int]
    wcs_cards: WcsCards = field(repr=False, compare=False)

    @property
    def geometry(self) -> PatchGeometry:
        """The outer box as a :class:`PatchGeometry` (what a coadd of the patch covers)."""
        x0, y0, x1, y1 = self.outer_bbox
        return PatchGeometry(self.wcs_cards, (y1 - y0, x1 - x0), (x0, y0))

    @property
    def inner_geometry(self) -> PatchGeometry:
        x0, y0, x1, y1 = self.inner_bbox
        return PatchGeometry(self.wcs_cards, (y1 - y0, x1 - x0), (x0, y0))


@dataclass(frozen=True)
class TractInfo:
    """One tract: a TAN projection and its patch grid."""

    id: int
    ra_deg: float
    dec_deg: float
    pixel_scale_arcsec: float
    n_patches: tuple[int, int]
    patch_inner: int
    patch_border: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the tract's pixel grid."""
        nxp, nyp = self.n_patches
        return (
            nyp * self.patch_inner + 2 * self.patch_border,
            nxp * self.patch_inner + 2 * self.patch_border,
        )

    @cached_property
    def wcs_cards(self) -> WcsCards:
        ny, nx = self.shape
        wcs = make_tan_wcs(
            self.ra_deg, self.dec_deg, ((nx - 1) / 2.0, (ny - 1) / 2.0), self.pixel_scale_arcsec
        )
        return wcs_to_cards(wcs)

    def wcs(self) -> WCS:
        """A fresh astropy WCS of the tract (0-based pixels)."""
        return wcs_from_cards(self.wcs_cards)

    def sky_to_pixel(
        self, ra: ArrayLike, dec: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Tract pixel ``(x, y)`` of sky positions (deg); NaN on the far hemisphere."""
        ra_a, dec_a = np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)
        # The TAN projection folds the far hemisphere onto the near one: mask it.
        near = _angular_cos(ra_a, dec_a, self.ra_deg, self.dec_deg) > 0.05
        x, y = self.wcs().wcs_world2pix(ra_a, dec_a, 0)
        return np.where(near, x, np.nan), np.where(near, y, np.nan)

    def patch(self, patch: int | tuple[int, int]) -> PatchInfo:
        """The patch with sequential id ``patch`` or index ``(ix, iy)``."""
        nxp, nyp = self.n_patches
        if isinstance(patch, tuple):
            ix, iy = patch
        else:
            ix, iy = int(patch) % nxp, int(patch) // nxp
        if not (0 <= ix < nxp and 0 <= iy < nyp):
            raise KeyError(f"tract {self.id} has {nxp}×{nyp} patches; no patch {patch!r}")
        b, n = self.patch_border, self.patch_inner
        inner = (b + ix * n, b + iy * n, b + (ix + 1) * n, b + (iy + 1) * n)
        outer = (inner[0] - b, inner[1] - b, inner[2] + b, inner[3] + b)
        return PatchInfo(self.id, (ix, iy), iy * nxp + ix, inner, outer, self.wcs_cards)

    def patches(self) -> list[PatchInfo]:
        nxp, nyp = self.n_patches
        return [self.patch((ix, iy)) for iy in range(nyp) for ix in range(nxp)]

    def patch_at(self, x: float, y: float) -> PatchInfo | None:
        """The patch whose inner box contains tract pixel ``(x, y)``, or None."""
        b, n = self.patch_border, self.patch_inner
        ix, iy = math.floor((x + 0.5 - b) / n), math.floor((y + 0.5 - b) / n)
        nxp, nyp = self.n_patches
        if 0 <= ix < nxp and 0 <= iy < nyp:
            return self.patch((ix, iy))
        return None

    def patches_overlapping(self, x: ArrayLike, y: ArrayLike) -> list[PatchInfo]:
        """Patches whose outer box overlaps the bounding box of tract pixels ``(x, y)``."""
        xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if xa.size == 0 or not np.all(np.isfinite(xa)) or not np.all(np.isfinite(ya)):
            return []
        return [
            p
            for p in self.patches()
            if _boxes_overlap(p.outer_bbox, (xa.min(), ya.min(), xa.max() + 1, ya.max() + 1))
        ]

    def contains(self, ra: float, dec: float) -> bool:
        """Whether a sky position falls inside the tract's pixel grid."""
        x, y = self.sky_to_pixel(ra, dec)
        ny, nx = self.shape
        return bool(-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ra_deg": self.ra_deg,
            "dec_deg": self.dec_deg,
            "pixel_scale_arcsec": self.pixel_scale_arcsec,
            "n_patches": list(self.n_patches),
            "patch_inner": self.patch_inner,
            "patch_border": self.patch_border,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TractInfo:
        return cls(
            int(data["id"]),
            float(data["ra_deg"]),
            float(data["dec_deg"]),
            float(data["pixel_scale_arcsec"]),
            (int(data["n_patches"][0]), int(data["n_patches"][1])),
            int(data["patch_inner"]),
            int(data["patch_border"]),
        )


def _boxes_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _angular_cos(
    ra: NDArray[np.float64], dec: NDArray[np.float64], ra0: float, dec0: float
) -> NDArray[np.float64]:
    r, d, r0, d0 = np.radians(ra), np.radians(dec), math.radians(ra0), math.radians(dec0)
    return np.sin(d) * math.sin(d0) + np.cos(d) * math.cos(d0) * np.cos(r - r0)


def tract_enclosing(
    tract_id: int,
    ra_deg: float,
    dec_deg: float,
    ra: ArrayLike,
    dec: ArrayLike,
    *,
    pixel_scale_arcsec: float,
    patch_inner: int,
    patch_border: int,
    margin_px: float = 0.0,
) -> TractInfo:
    """A tract centred on ``(ra_deg, dec_deg)`` whose patch inner boxes cover all points.

    The tract is symmetric about its centre: the half-size is the largest projected offset
    of the points plus ``margin_px``, rounded up to whole patches.
    """
    probe = TractInfo(tract_id, ra_deg, dec_deg, pixel_scale_arcsec, (1, 1), 1, 0)
    x, y = probe.sky_to_pixel(ra, dec)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(
            f"tract {tract_id}: points more than ~87° from the centre ({ra_deg}, {dec_deg}) "
            "cannot be projected"
        )
    # probe has a 1×1 grid centred on pixel 0: x, y are offsets from the centre.
    half_x = float(np.max(np.abs(x))) + margin_px + 0.5
    half_y = float(np.max(np.abs(y))) + margin_px + 0.5
    nxp = max(1, math.ceil(2.0 * half_x / patch_inner))
    nyp = max(1, math.ceil(2.0 * half_y / patch_inner))
    return TractInfo(
        tract_id, ra_deg, dec_deg, pixel_scale_arcsec, (nxp, nyp), patch_inner, patch_border
    )


@dataclass(frozen=True)
class SkyMap:
    """A sky map: how the sky is cut into tracts and patches.

    Build one with :meth:`discrete` or :meth:`rings` (or
    :func:`lsstlite.stages.skymap.make_skymap`); round-trip with :meth:`to_dict` /
    :meth:`from_dict`.
    """

    name: str
    kind: str
    pixel_scale_arcsec: float
    patch_inner: int
    patch_border: int
    #: discrete: the tracts; rings: empty (generated from the parameters below).
    explicit_tracts: tuple[TractInfo, ...] = ()
    n_rings: int = 0
    tract_overlap_deg: float = 0.0
    ra_start_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(
                f"sky map {self.name!r}: kind must be one of {_KINDS}, got {self.kind!r}"
            )
        if self.patch_inner <= 0 or self.patch_border < 0:
            raise ValueError(
                f"sky map {self.name!r}: patch_inner must be > 0 and patch_border >= 0, got "
                f"{self.patch_inner}, {self.patch_border}"
            )
        if self.kind == "rings" and self.n_rings < 1:
            raise ValueError(f"sky map {self.name!r}: n_rings must be >= 1, got {self.n_rings}")

    # -- construction -----------------------------------------------------------------
    @classmethod
    def discrete(
        cls,
        name: str,
        tracts: Iterable[TractInfo],
    ) -> SkyMap:
        tr = tuple(tracts)
        if not tr:
            raise ValueError(f"sky map {name!r}: a discrete sky map needs at least one tract")
        t0 = tr[0]
        return cls(name, "discrete", t0.pixel_scale_arcsec, t0.patch_inner, t0.patch_border, tr)

    @classmethod
    def rings(
        cls,
        name: str,
        *,
        n_rings: int = 120,
        pixel_scale_arcsec: float = 0.2,
        patch_inner: int = 4000,
        patch_border: int = 100,
        tract_overlap_deg: float = 1.0 / 60.0,
        ra_start_deg: float = 0.0,
    ) -> SkyMap:
        return cls(
            name,
            "rings",
            pixel_scale_arcsec,
            patch_inner,
            patch_border,
            n_rings=n_rings,
            tract_overlap_deg=tract_overlap_deg,
            ra_start_deg=ra_start_deg,
        )

    # -- rings geometry -----------------------------------------------------------------
    @property
    def _ring_size_deg(self) -> float:
        return 180.0 / (self.n_rings + 1)

    @cached_property
    def _ring_counts(self) -> tuple[int, ...]:
        """Number of tracts in each ring (south to north)."""
        size = self._ring_size_deg
        counts = []
        for i in range(self.n_rings):
            lo = -90.0 + size * (i + 0.5)
            hi = lo + size
            widest = 0.0 if lo < 0.0 < hi else min(abs(lo), abs(hi))
            counts.append(max(1, math.ceil(360.0 * math.cos(math.radians(widest)) / size)))
        return tuple(counts)

    @property
    def n_tracts(self) -> int:
        if self.kind == "discrete":
            return len(self.explicit_tracts)
        return sum(self._ring_counts) + 2

    def _ring_tract(self, tract_id: int) -> TractInfo:
        size = self._ring_size_deg
        overlap = self.tract_overlap_deg
        n = self.n_tracts
        if not 0 <= tract_id < n:
            raise KeyError(f"sky map {self.name!r} has tracts 0..{n - 1}; no tract {tract_id}")
        if tract_id in (0, n - 1):
            dec_c = -90.0 if tract_id == 0 else 90.0
            edge = abs(dec_c) - size / 2.0 - overlap
            ra = np.linspace(0.0, 360.0, 73)
            return tract_enclosing(
                tract_id,
                0.0,
                dec_c,
                ra,
                np.full_like(ra, math.copysign(edge, dec_c)),
                pixel_scale_arcsec=self.pixel_scale_arcsec,
                patch_inner=self.patch_inner,
                patch_border=self.patch_border,
            )
        ring, j = 0, tract_id - 1
        while j >= self._ring_counts[ring]:
            j -= self._ring_counts[ring]
            ring += 1
        n_ring = self._ring_counts[ring]
        d_ra = 360.0 / n_ring
        ra_c = (self.ra_start_deg + j * d_ra) % 360.0
        lo = -90.0 + size * (ring + 0.5) - overlap
        hi = lo + size + 2.0 * overlap
        dec_c = (lo + hi) / 2.0  # centre of the (grown) ring cell
        half_ra = d_ra / 2.0 + overlap / max(math.cos(math.radians(max(abs(lo), abs(hi)))), 1e-3)
        t = np.linspace(-1.0, 1.0, 9)
        ras = np.concatenate(
            [
                ra_c + t * half_ra,
                ra_c + t * half_ra,
                np.full(9, ra_c - half_ra),
                np.full(9, ra_c + half_ra),
            ]
        )
        decs = np.concatenate(
            [
                np.full(9, lo),
                np.full(9, hi),
                lo + (t + 1) / 2 * (hi - lo),
                lo + (t + 1) / 2 * (hi - lo),
            ]
        )
        return tract_enclosing(
            tract_id,
            ra_c,
            dec_c,
            ras,
            decs,
            pixel_scale_arcsec=self.pixel_scale_arcsec,
            patch_inner=self.patch_inner,
            patch_border=self.patch_border,
        )

    # -- lookup -------------------------------------------------------------------------
    def tract(self, tract_id: int) -> TractInfo:
        """The tract with id ``tract_id``."""
        if self.kind == "discrete":
            for t in self.explicit_tracts:
                if t.id == tract_id:
                    return t
            raise KeyError(
                f"sky map {self.name!r} has tracts {[t.id for t in self.explicit_tracts]}; "
                f"no tract {tract_id}"
            )
        return self._ring_tract(tract_id)

    def tracts(self) -> list[TractInfo]:
        if self.kind == "discrete":
            return list(self.explicit_tracts)
        return [self._ring_tract(i) for i in range(self.n_tracts)]

    def _candidate_tract_ids(self, ra: float, dec: float) -> list[int]:
        """Tracts that may contain (ra, dec): the owner and its ring neighbours."""
        if self.kind == "discrete":
            return [t.id for t in self.explicit_tracts]
        size = self._ring_size_deg
        ring_f = (dec + 90.0 - size / 2.0) / size
        ids: list[int] = []
        for ring in {math.floor(ring_f) - 1, math.floor(ring_f), math.floor(ring_f) + 1}:
            if ring < 0:
                ids.append(0)
                continue
            if ring >= self.n_rings:
                ids.append(self.n_tracts - 1)
                continue
            n_ring = self._ring_counts[ring]
            first = 1 + sum(self._ring_counts[:ring])
            j = round(((ra - self.ra_start_deg) % 360.0) / (360.0 / n_ring)) % n_ring
            ids.extend(first + (j + k) % n_ring for k in (-1, 0, 1))
        return sorted(set(ids))

    def find_tract(self, ra: float, dec: float) -> TractInfo:
        """The tract that owns a sky position: the one whose centre is nearest (rings), or the
        first tract containing it (discrete).

        Raises
        ------
        LookupError
            If no tract contains the position (possible only for discrete sky maps).
        """
        containing = self.find_tracts(ra, dec)
        if not containing:
            raise LookupError(f"sky map {self.name!r}: no tract contains (ra, dec) = ({ra}, {dec})")
        if self.kind == "discrete":
            return containing[0]
        cos = [
            float(_angular_cos(np.array(ra), np.array(dec), t.ra_deg, t.dec_deg))
            for t in containing
        ]
        return containing[int(np.argmax(cos))]

    def find_tracts(self, ra: float, dec: float) -> list[TractInfo]:
        """Every tract whose pixel grid contains a sky position (tracts overlap)."""
        out = []
        for tid in self._candidate_tract_ids(ra, dec):
            t = self.tract(tid)
            if t.contains(ra, dec):
                out.append(t)
        return out

    def find_patch(self, ra: float, dec: float) -> tuple[TractInfo, PatchInfo]:
        """The owning tract and the patch whose inner box contains a sky position."""
        tract = self.find_tract(ra, dec)
        x, y = tract.sky_to_pixel(ra, dec)
        patch = tract.patch_at(float(x), float(y))
        if patch is None:
            raise LookupError(
                f"sky map {self.name!r}: (ra, dec) = ({ra}, {dec}) falls in the border of tract "
                f"{tract.id}, outside every patch's inner box"
            )
        return tract, patch

    def find_patches(self, ra: ArrayLike, dec: ArrayLike) -> dict[int, list[PatchInfo]]:
        """Tract id → patches whose outer boxes overlap the region with these corners.

        ``ra``/``dec`` are the vertices (deg) of a small convex region (e.g. a calexp's
        corners); the region's bounding box in each tract's pixels is what is tested.
        """
        ra_a, dec_a = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
        ids: set[int] = set()
        for r, d in zip(ra_a, dec_a, strict=True):
            ids.update(self._candidate_tract_ids(float(r), float(d)))
        out: dict[int, list[PatchInfo]] = {}
        for tid in sorted(ids):
            tract = self.tract(tid)
            x, y = tract.sky_to_pixel(ra_a, dec_a)
            ny, nx = tract.shape
            if not (
                np.all(np.isfinite(x))
                and _boxes_overlap(
                    (0, 0, nx, ny), (np.min(x), np.min(y), np.max(x) + 1, np.max(y) + 1)
                )
            ):
                continue
            patches = tract.patches_overlapping(x, y)
            if patches:
                out[tid] = patches
        return out

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (what the repository's ``skymap`` Json dataset holds)."""
        data: dict[str, Any] = {
            "lsstlite_kind": "skymap",
            "schema_version": 1,
            "name": self.name,
            "kind": self.kind,
            "pixel_scale_arcsec": self.pixel_scale_arcsec,
            "patch_inner": self.patch_inner,
            "patch_border": self.patch_border,
        }
        if self.kind == "discrete":
            data["tracts"] = [t.to_dict() for t in self.explicit_tracts]
        else:
            data.update(
                n_rings=self.n_rings,
                tract_overlap_deg=self.tract_overlap_deg,
                ra_start_deg=self.ra_start_deg,
            )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkyMap:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            If ``data`` is not a sky map written by :meth:`to_dict`.
        """
        if data.get("lsstlite_kind") != "skymap":
            raise ValueError(
                f"not a sky map: lsstlite_kind is {data.get('lsstlite_kind')!r}, expected 'skymap'"
            )
        common = (
            str(data["name"]),
            str(data["kind"]),
            float(data["pixel_scale_arcsec"]),
            int(data["patch_inner"]),
            int(data["patch_border"]),
        )
        if data["kind"] == "discrete":
            return cls(*common, tuple(TractInfo.from_dict(t) for t in data["tracts"]))
        return cls(
            *common,
            n_rings=int(data["n_rings"]),
            tract_overlap_deg=float(data["tract_overlap_deg"]),
            ra_start_deg=float(data["ra_start_deg"]),
        )
