"""Warping: resample an exposure onto a patch grid, lazily, one output chunk at a time.

Each output chunk is one task that reads only the input region it maps to: the mapping
output pixel → sky → input pixel is evaluated exactly with the WCS on a coarse grid
when the graph is built (metadata only, no pixels), which gives each chunk's input box;
the kernel interpolates the grid bilinearly for every pixel.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from astropy.wcs import WCS
from dask.base import tokenize
from numpy.typing import NDArray

from lsstlite.data._zarr_chunks import StoredArray, cache_budget, stored_source
from lsstlite.data.exposure import make_exposure, validate_exposure
from lsstlite.data.masks import mask_bits, mask_planes
from lsstlite.data.psf import GaussianPsf, psf_from_dict
from lsstlite.data.skymap import PatchGeometry
from lsstlite.data.wcs import wcs_from_cards
from lsstlite.stages.warp._kernels import KERNEL_RADIUS, kernel_table, taps6_table, warp_block
from lsstlite.stages.warp.psf import WarpedPsf

if TYPE_CHECKING:
    import dask.array as da
    import xarray as xr

    from lsstlite.data.exposure import ExposureLike

__all__ = [
    "BlockMapping",
    "WarpError",
    "data_id_of",
    "map_block",
    "matching_kernel",
    "psf_match_warp",
    "warp_arrays",
    "warp_exposure",
]

#: Default output chunk shape (y, x).
DEFAULT_WARP_CHUNKS = (512, 512)

COVARIANCE_NOTE = (
    "resampling correlates neighbouring pixels; variance holds only the diagonal "
    "(sum of squared kernel weights), so it underestimates the noise of sums over pixels"
)


class WarpError(ValueError):
    """An exposure cannot be warped (e.g. its WCS is broken); the message names its data ID."""


def data_id_of(exposure: ExposureLike) -> dict[str, Any]:
    """The data ID fields known from an exposure's ``visit_info`` (instrument, visit, detector)."""
    vi = exposure.attrs.get("visit_info") or {}
    out = {k: vi[k] for k in ("instrument", "visit", "detector") if vi.get(k) is not None}
    if "visit" not in out and vi.get("exposure") is not None:
        out["visit"] = vi["exposure"]
    return out


@dataclass(frozen=True)
class BlockMapping:
    """Where one output block comes from in one input.

    ``gx``/``gy``: input parent coordinates at output positions ``(grid_x0 + i step,
    grid_y0 + j step)``; ``region``: the input box ``(x0, y0, x1, y1)`` (parent frame, end
    exclusive, clipped to the detector) the block reads, or None if it reads nothing.
    """

    gx: NDArray[np.float64]
    gy: NDArray[np.float64]
    grid_x0: float
    grid_y0: float
    step: float
    region: tuple[int, int, int, int] | None


def input_wcs(exposure: ExposureLike) -> WCS:
    """The exposure's WCS, checked: raises :class:`WarpError` naming the data ID if broken."""
    cards = exposure.attrs.get("wcs")
    if not cards:
        raise WarpError(f"exposure {data_id_of(exposure)}: no WCS in attrs")
    try:
        wcs = wcs_from_cards(cards)
        x = float(exposure["x"].values.mean())
        y = float(exposure["y"].values.mean())
        ra, dec = wcs.all_pix2world([x, x + 10.0], [y, y + 10.0], 0)
        back = wcs.all_world2pix(ra, dec, 0, tolerance=1e-8, quiet=True)
    except Exception as exc:  # astropy raises many types for malformed WCS cards
        raise WarpError(f"exposure {data_id_of(exposure)}: broken WCS: {exc}") from exc
    ok = np.all(np.isfinite(ra)) and np.all(np.isfinite(dec)) and np.all(np.isfinite(back))
    if not ok or abs(back[0][0] - x) > 0.01 or abs(ra[0] - ra[1]) + abs(dec[0] - dec[1]) == 0:
        raise WarpError(
            f"exposure {data_id_of(exposure)}: broken WCS (non-finite or non-invertible at the "
            "image centre)"
        )
    return wcs


def detector_box(exposure: ExposureLike) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of an exposure's pixels in its parent frame (end exclusive)."""
    x, y = exposure["x"].values, exposure["y"].values
    return int(x[0]), int(y[0]), int(x[-1]) + 1, int(y[-1]) + 1


@dataclass(frozen=True)
class MappingGrid:
    """Exact input coordinates at output positions ``(x0 + i step, y0 + j step)``."""

    gx: NDArray[np.float64]
    gy: NDArray[np.float64]
    x0: float
    y0: float
    step: float


def mapping_grid(
    wcs_out: WCS,
    wcs_in: WCS,
    box: tuple[int, int, int, int],
    *,
    step: int = 16,
    within: tuple[float, float, float, float] | None = None,
) -> MappingGrid:
    """Evaluate the output → input pixel mapping exactly on a coarse grid covering ``box``.

    The grid is anchored on multiples of ``step`` in the parent frame and evaluated in one
    call for the whole target: astropy's iterative inversion (SIP, TPV) iterates a batch
    until every point converges, so the same point evaluated in different batches can
    differ in the last bits, and per-block grids made results depend on the chunking.

    ``within`` (output parent frame ``x0, y0, x1, y1``): only the grid points inside it
    are evaluated, the others are "nowhere" (off the input). Give it the input's outline
    on the output grid grown by a margin of a few grid steps: an output pixel in a grid
    cell with a "nowhere" corner maps far off the input. For an input covering part of
    the output (a detector on a patch) most of the inversions, and the slowest (far from
    the detector, where SIP and TPV converge slowly or not at all), are not made.
    """
    x0, y0, x1, y1 = box
    gx0 = step * math.floor(x0 / step)
    gy0 = step * math.floor(y0 / step)
    nxg = max(2, math.ceil((x1 - 1 - gx0) / step) + 1)
    nyg = max(2, math.ceil((y1 - 1 - gy0) / step) + 1)
    xs = gx0 + step * np.arange(nxg, dtype=np.float64)
    ys = gy0 + step * np.arange(nyg, dtype=np.float64)
    ix, iy = slice(0, nxg), slice(0, nyg)
    if within is not None:
        wx0, wy0, wx1, wy1 = within
        ix = slice(int(np.searchsorted(xs, wx0)), int(np.searchsorted(xs, wx1, "right")))
        iy = slice(int(np.searchsorted(ys, wy0)), int(np.searchsorted(ys, wy1, "right")))
    gx = np.full((nyg, nxg), -1e9)
    gy = np.full((nyg, nxg), -1e9)
    xx, yy = np.meshgrid(xs[ix], ys[iy])
    if xx.size:
        ra, dec = wcs_out.all_pix2world(xx.ravel(), yy.ravel(), 0)
        px, py = wcs_in.all_world2pix(ra, dec, 0, tolerance=1e-8, maxiter=50, quiet=True)
        gx[iy, ix] = np.asarray(px, dtype=np.float64).reshape(xx.shape)
        gy[iy, ix] = np.asarray(py, dtype=np.float64).reshape(xx.shape)
    # Far from the detector the iterative inversion may diverge: such points are "nowhere".
    bad = ~(np.isfinite(gx) & np.isfinite(gy))
    gx[bad] = -1e9
    gy[bad] = -1e9
    return MappingGrid(gx, gy, float(gx0), float(gy0), float(step))


def block_mapping(
    grid: MappingGrid,
    out_box: tuple[int, int, int, int],
    det_box: tuple[int, int, int, int],
    *,
    radius: int = 3,
) -> BlockMapping:
    """The part of ``grid`` covering ``out_box`` and the input region it reads."""
    x0, y0, x1, y1 = out_box
    step = grid.step
    i0 = math.floor((x0 - grid.x0) / step)
    j0 = math.floor((y0 - grid.y0) / step)
    i1 = max(i0 + 2, math.ceil((x1 - 1 - grid.x0) / step) + 1)
    j1 = max(j0 + 2, math.ceil((y1 - 1 - grid.y0) / step) + 1)
    if i0 < 0 or j0 < 0 or i1 > grid.gx.shape[1] or j1 > grid.gx.shape[0]:
        raise ValueError(f"block {out_box} is not inside the mapping grid")
    gx = grid.gx[j0:j1, i0:i1]
    gy = grid.gy[j0:j1, i0:i1]
    dx0, dy0, dx1, dy1 = det_box
    good = gx > -1e8
    region = None
    if good.any():
        rx0 = max(dx0, math.floor(gx[good].min()) - radius - 1)
        ry0 = max(dy0, math.floor(gy[good].min()) - radius - 1)
        rx1 = min(dx1, math.ceil(gx[good].max()) + radius + 2)
        ry1 = min(dy1, math.ceil(gy[good].max()) + radius + 2)
        if rx0 < rx1 and ry0 < ry1:
            region = (rx0, ry0, rx1, ry1)
    return BlockMapping(gx, gy, grid.x0 + i0 * step, grid.y0 + j0 * step, step, region)


def map_block(
    wcs_out: WCS,
    wcs_in: WCS,
    out_box: tuple[int, int, int, int],
    det_box: tuple[int, int, int, int],
    *,
    step: int = 16,
    radius: int = 3,
) -> BlockMapping:
    """:func:`mapping_grid` and :func:`block_mapping` for one block.

    ``step`` sets the grid spacing (output pixels); bilinear interpolation between grid
    points is good to ~``step² |∂²x/∂u²| / 8`` (< 1e-4 px for step 16 on survey WCSs).
    """
    return block_mapping(
        mapping_grid(wcs_out, wcs_in, out_box, step=step), out_box, det_box, radius=radius
    )


def warp_arrays(
    img: NDArray[np.float32],
    var: NDArray[np.float32],
    msk: NDArray[np.int32],
    mapping: BlockMapping,
    det_box: tuple[int, int, int, int],
    out_box: tuple[int, int, int, int],
    *,
    kernel: str,
    no_data: int,
    sensor_edge: int,
    out: tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int32]] | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int32]]:
    """Warp one block from numpy input arrays covering ``mapping.region`` (the numpy core),
    into ``out`` (C-contiguous image, variance, mask of the block's shape) if given."""
    x0, y0, x1, y1 = out_box
    shape = (y1 - y0, x1 - x0)
    if out is None:
        out = (np.empty(shape, np.float32), np.empty(shape, np.float32), np.empty(shape, np.int32))
    out_img, out_var, out_msk = out
    for a, dt in zip(out, (np.float32, np.float32, np.int32), strict=True):
        if a.shape != shape or a.dtype != dt or not a.flags.c_contiguous:
            raise ValueError(f"warp_arrays: out must be C-contiguous {shape} of {dt.__name__}")
    assert mapping.region is not None
    dx0, dy0, dx1, dy1 = det_box
    warp_block(
        np.ascontiguousarray(img, dtype=np.float32),
        np.ascontiguousarray(var, dtype=np.float32),
        np.ascontiguousarray(msk, dtype=np.int32),
        mapping.region[0],
        mapping.region[1],
        (dx0 - 0.5, dy0 - 0.5, dx1 - 0.5, dy1 - 0.5),
        mapping.gx,
        mapping.gy,
        mapping.grid_x0,
        mapping.grid_y0,
        mapping.step,
        x0,
        y0,
        *_tables(kernel),
        KERNEL_RADIUS[kernel],
        np.int32(no_data),
        np.int32(sensor_edge),
        out_img,
        out_var,
        out_msk,
    )
    return out_img, out_var, out_msk


_TABLES: dict[str, tuple[NDArray[np.float32], NDArray[np.float32]]] = {}


def _tables(kernel: str) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """:func:`kernel_table` and, for 6 taps, its :func:`taps6_table` (else a dummy)."""
    if kernel not in _TABLES:
        table = kernel_table(kernel)
        table6 = taps6_table(table) if table.shape[1] == 6 else np.zeros((1, 16), np.float32)
        _TABLES[kernel] = (table, table6)
    return _TABLES[kernel]


def _blocks(
    shape: tuple[int, int], xy0: tuple[int, int], chunks: tuple[int, int]
) -> list[list[tuple[int, int, int, int]]]:
    ny, nx = shape
    cy, cx = chunks
    rows = []
    for y in range(0, ny, cy):
        rows.append(
            [
                (xy0[0] + x, xy0[1] + y, xy0[0] + min(x + cx, nx), xy0[1] + min(y + cy, ny))
                for x in range(0, nx, cx)
            ]
        )
    return rows


@dataclass
class PlaneRegion:
    """How a box of one stored plane is cut from that plane's Dask chunks.

    ``index``: the chunks it overlaps (block indices); ``pieces``: for each, ``(dst_y,
    dst_x, src_y, src_x)`` slices (region ← chunk); ``shape``: the region's shape.
    ``source``: for a plane read straight from zarr, where the task reads the chunks
    itself (through the shared chunk cache); else None and the task depends on the
    chunks' keys ``(data.name, i, j)``. ``uses``: for each chunk, how many regions of
    the whole graph read it, and ``cache_bytes`` the chunk cache budget of the graph
    (both set by :func:`tasks_to_planes`).
    """

    index: list[tuple[int, int]]
    pieces: list[tuple[slice, slice, slice, slice]]
    shape: tuple[int, int]
    source: StoredArray | None
    uses: list[int] = field(default_factory=list)
    cache_bytes: int = 0


def plane_region(
    data: da.Array, origin: tuple[int, int], region: tuple[int, int, int, int]
) -> PlaneRegion:
    """The chunks of ``data`` (a 2-d plane whose pixel 0 is at parent ``origin = (x0, y0)``)
    that a parent-frame box ``(x0, y0, x1, y1)`` needs, and where each piece goes."""
    bx0, by0 = origin
    x0, y0, x1, y1 = region[0] - bx0, region[1] - by0, region[2] - bx0, region[3] - by0
    ey = np.cumsum((0, *data.chunks[0]))
    ex = np.cumsum((0, *data.chunks[1]))
    index, pieces = [], []
    for i in range(int(np.searchsorted(ey, y0, "right")) - 1, int(np.searchsorted(ey, y1, "left"))):
        cy0, cy1 = max(y0, int(ey[i])), min(y1, int(ey[i + 1]))
        for j in range(
            int(np.searchsorted(ex, x0, "right")) - 1, int(np.searchsorted(ex, x1, "left"))
        ):
            cx0, cx1 = max(x0, int(ex[j])), min(x1, int(ex[j + 1]))
            index.append((i, j))
            pieces.append(
                (
                    slice(cy0 - y0, cy1 - y0),
                    slice(cx0 - x0, cx1 - x0),
                    slice(cy0 - int(ey[i]), cy1 - int(ey[i])),
                    slice(cx0 - int(ex[j]), cx1 - int(ex[j])),
                )
            )
    return PlaneRegion(index, pieces, (y1 - y0, x1 - x0), stored_source(data))


def _assemble(chunks: list[NDArray[Any]], where: PlaneRegion) -> NDArray[Any]:
    if where.source is not None:
        uses = where.uses or [0] * len(where.index)
        chunks = [
            where.source.read(ij, n, where.cache_bytes)
            for ij, n in zip(where.index, uses, strict=True)
        ]
    if len(chunks) == 1:  # inside one chunk: a view
        return chunks[0][where.pieces[0][2], where.pieces[0][3]]
    out = np.empty(where.shape, dtype=chunks[0].dtype)
    for chunk, (dy, dx, sy, sx) in zip(chunks, where.pieces, strict=True):
        out[dy, dx] = chunk[sy, sx]
    return out


class Regions(Sequence[NDArray[Any]]):
    """The input regions of one :func:`region_task`, each cut out when it is indexed (and
    not kept): a task that uses them one input at a time holds one input's regions."""

    def __init__(self, chunks: list[list[NDArray[Any]]], regions: list[PlaneRegion]) -> None:
        self._chunks = chunks
        self._regions = regions

    def __len__(self) -> int:
        return len(self._regions)

    @overload
    def __getitem__(self, k: int) -> NDArray[Any]: ...
    @overload
    def __getitem__(self, k: slice) -> list[NDArray[Any]]: ...
    def __getitem__(self, k: int | slice) -> NDArray[Any] | list[NDArray[Any]]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return _assemble(self._chunks[k], self._regions[k])


def _call_on_regions(
    func: Any, chunks: list[list[NDArray[Any]]], regions: list[PlaneRegion], args: list[Any]
) -> Any:
    return func(Regions(chunks, regions), *args)


def exposure_planes(exposure: ExposureLike) -> tuple[Any, Any, Any]:
    """Image, variance and mask of an exposure as chunked arrays: Dask arrays, or the
    :class:`~lsstlite.data._zarr_chunks.StoredArray` of a
    :class:`~lsstlite.data._zarr_chunks.StoredGroup` (a numpy plane: one Dask chunk)."""
    if all(hasattr(exposure[p].data, "chunks") for p in ("image", "variance", "mask")):
        return tuple(exposure[p].data for p in ("image", "variance", "mask"))  # type: ignore[return-value]
    import dask.array as da

    return tuple(  # type: ignore[return-value]
        d if hasattr(d, "chunks") else da.from_array(d, chunks=d.shape, name=False)
        for d in (exposure[p].data for p in ("image", "variance", "mask"))
    )


def region_task(
    func: Any, regions: list[tuple[da.Array, PlaneRegion]], *args: Any
) -> tuple[Any, ...]:
    """A graph task ``func([region arrays], *args)`` that cuts each region out of the
    chunks it overlaps (a view when it lies inside one chunk) and calls ``func``.

    A plane read straight from zarr (:func:`~lsstlite.data._zarr_chunks.stored_source`)
    is read by the task itself, through the per-process chunk cache: no input chunk is
    held by the scheduler between tasks, so memory stays ~``n_inputs × region`` per task
    (holding every chunk until its last reader had run kept the whole input of a
    10-calexp coadd in memory). Any other plane is a dependency on exactly the chunks the
    region overlaps (by key). Either way a chunk is not sliced as a Dask array: that made
    one graph object per slice (~0.8 s of graph building per coadd of 10 inputs × 16
    chunks) and, fused, decoded a chunk once per slice. ``args`` are passed as they are
    (a graph key given as a plain string is resolved).
    """
    return (
        _call_on_regions,
        func,
        [[] if r.source else [(d.name, *ij) for ij in r.index] for d, r in regions],
        [r for _, r in regions],
        list(args),
    )


def region_dependencies(regions: list[tuple[da.Array, PlaneRegion]]) -> list[da.Array]:
    """The arrays a :func:`region_task` over ``regions`` depends on (by key)."""
    return [d for d, r in regions if r.source is None]


def count_stored_reads(tasks: Iterable[tuple[Any, ...]], chunk_cache_bytes: int | None) -> None:
    """Tell every region of these :func:`region_task` tasks read from a stored plane how
    often the whole graph reads each of its chunks (the chunk cache drops a chunk after
    its last read) and the cache budget (``chunk_cache_bytes``, default
    :func:`~lsstlite.data._zarr_chunks.cache_budget`)."""
    regions = [r for t in tasks if t[0] is _call_on_regions for r in t[3]]
    uses: dict[tuple[str, tuple[int, int]], int] = {}
    for r in regions:
        if r.source is not None:
            for ij in r.index:
                uses[(r.source.name, ij)] = uses.get((r.source.name, ij), 0) + 1
    budget = cache_budget(chunk_cache_bytes)
    for r in regions:
        if r.source is not None:
            r.uses = [uses[(r.source.name, ij)] for ij in r.index]
            r.cache_bytes = budget


def tasks_to_planes(
    name: str,
    tasks: dict[tuple[int, int], tuple[Any, ...]],
    shapes: list[list[tuple[int, int]]],
    fills: tuple[tuple[Any, Any], ...],
    dependencies: list[da.Array],
    extra: dict[Any, Any] | None = None,
    chunk_cache_bytes: int | None = None,
) -> list[da.Array]:
    """Dask arrays (one per entry of ``fills``, ``(dtype, fill value)``) from a grid of
    block tasks that each return one block per array; a block with no task is the fill.
    Stored inputs are read through a chunk cache of ``chunk_cache_bytes`` (default:
    :func:`~lsstlite.data._zarr_chunks.cache_budget`)."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    dsk: dict[Any, Any] = dict(extra or {})
    for (i, j), task in tasks.items():
        dsk[(name, i, j)] = task
    count_stored_reads(tasks.values(), chunk_cache_bytes)
    base = HighLevelGraph.from_collections(name, dsk, dependencies=list(dependencies))  # type: ignore[arg-type]
    chunks = (tuple(r[0][0] for r in shapes), tuple(s[1] for s in shapes[0]))
    out = []
    for k, (dtype, fill) in enumerate(fills):
        pname = f"{name}-{k}"
        layer: dict[Any, Any] = {}
        for i, row in enumerate(shapes):
            for j, shape in enumerate(row):
                if (i, j) in tasks:
                    layer[(pname, i, j)] = (operator.getitem, (name, i, j), k)
                else:
                    layer[(pname, i, j)] = (np.full, shape, fill, dtype)
        graph = HighLevelGraph({**base.layers, pname: layer}, {**base.dependencies, pname: {name}})
        out.append(da.Array(graph, pname, chunks, dtype=dtype, meta=np.empty((0, 0), dtype)))
    return out


def _warp_task(
    planes: Sequence[NDArray[Any]],
    mapping: BlockMapping,
    det_box: tuple[int, int, int, int],
    out_box: tuple[int, int, int, int],
    kernel: str,
    no_data: int,
    sensor_edge: int,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int32]]:
    img, var, msk = planes
    return warp_arrays(
        img,
        var,
        msk,
        mapping,
        det_box,
        out_box,
        kernel=kernel,
        no_data=no_data,
        sensor_edge=sensor_edge,
    )


def warp_exposure(
    exposure: xr.Dataset,
    target: PatchGeometry,
    *,
    kernel: str = "lanczos3",
    chunks: tuple[int, int] = DEFAULT_WARP_CHUNKS,
    grid_step_px: int = 16,
) -> xr.Dataset:
    """Resample an exposure (image, variance, mask) onto a target grid.

    Parameters
    ----------
    exposure
        A calexp-like exposure (numpy- or dask-backed) with a WCS.
    target
        The output grid (e.g. ``tract.patch(p).geometry``).
    kernel
        ``"lanczos3"`` (default), ``"lanczos2"``, ``"lanczos4"`` or ``"bilinear"``.
    chunks
        Output chunk shape ``(y, x)``.
    grid_step_px
        Spacing of the exact WCS evaluations that the kernel interpolates.

    Returns
    -------
    xarray.Dataset
        The warp, an exposure on the target grid (coordinates in the target's parent
        frame), dask-backed. Pixels off the input detector are NaN and NO_DATA; pixels
        whose kernel footprint leaves the detector are SENSOR_EDGE. ``attrs["psf"]`` is a
        :class:`~lsstlite.stages.warp.psf.WarpedPsf`; ``attrs["warp"]`` records the kernel,
        the input's data ID and the covariance caveat.

    Raises
    ------
    WarpError
        If the exposure's WCS is missing or broken (the message names its data ID).

    Notes
    -----
    Lazy: building the graph evaluates WCSs on coarse grids, never pixels. One task per
    output chunk; it depends only on the input chunks overlapping the region the output
    chunk maps to, grown by the kernel radius (the halo; 3 px for Lanczos3, plus one
    pixel for rounding). The input may have any chunking; output chunks that map off the
    detector have no input dependency at all. Flux is conserved (pixel-area ratio).
    """
    validate_exposure(exposure, what=f"exposure {data_id_of(exposure)}")
    if kernel not in KERNEL_RADIUS:
        raise ValueError(f"warp kernel: unknown {kernel!r}; choose one of {sorted(KERNEL_RADIUS)}")
    wcs_in = input_wcs(exposure)
    wcs_out = target.wcs()
    det_box = detector_box(exposure)
    plane_bits = mask_planes(exposure)
    no_data, edge = mask_bits(plane_bits, "NO_DATA"), mask_bits(plane_bits, "SENSOR_EDGE")
    radius = KERNEL_RADIUS[kernel]
    grid = mapping_grid(wcs_out, wcs_in, target.bbox, step=grid_step_px)
    planes = exposure_planes(exposure)
    origin = (det_box[0], det_box[1])
    name = "warp-" + tokenize(
        [p.name for p in planes],
        exposure.attrs.get("wcs"),
        det_box,
        target.wcs_cards,
        target.bbox,
        kernel,
        chunks,
        grid_step_px,
    )
    tasks: dict[tuple[int, int], tuple[Any, ...]] = {}
    shapes: list[list[tuple[int, int]]] = []
    deps: dict[str, da.Array] = {}
    for i, row in enumerate(_blocks(target.shape, target.xy0, chunks)):
        shapes.append([(box[3] - box[1], box[2] - box[0]) for box in row])
        for j, box in enumerate(row):
            mapping = block_mapping(grid, box, det_box, radius=radius)
            if mapping.region is None:  # off the detector: no input dependency at all
                continue
            regions = [(p, plane_region(p, origin, mapping.region)) for p in planes]
            deps.update((d.name, d) for d in region_dependencies(regions))
            tasks[(i, j)] = region_task(
                _warp_task, regions, mapping, det_box, box, kernel, no_data, edge
            )
    image, variance, mask = tasks_to_planes(
        name,
        tasks,
        shapes,
        (
            (np.dtype(np.float32), np.nan),
            (np.dtype(np.float32), np.nan),
            (np.dtype(np.int32), no_data),
        ),
        list(deps.values()),
    )
    attrs = {
        k: v
        for k, v in exposure.attrs.items()
        if k not in ("wcs", "psf", "lsstlite_kind", "schema_version", "units")
    }
    attrs["warp"] = {
        "kernel": kernel,
        "input": data_id_of(exposure),
        "grid_step_px": grid_step_px,
        "covariance": COVARIANCE_NOTE,
    }
    psf = None
    if exposure.attrs.get("psf"):
        psf = WarpedPsf(
            dict(exposure.attrs["psf"]), dict(exposure.attrs["wcs"]), dict(target.wcs_cards)
        )
    return make_exposure(
        image,
        mask=mask,
        variance=variance,
        wcs=target.wcs_cards,
        psf=psf,
        units=str(exposure.attrs.get("units", "nJy")),
        xy0=target.xy0,
        mask_planes=plane_bits,
        attrs=attrs,
    )


# -- PSF matching --------------------------------------------------------------------


def matching_kernel(
    psf_image: NDArray[np.float64],
    model_image: NDArray[np.float64],
    *,
    regularization: float = 1e-4,
) -> NDArray[np.float64]:
    """Kernel ``K`` with ``psf ⊛ K ≈ model`` (same-size odd stamps), by regularised Fourier
    division ``K̂ = P̂* M̂ / (|P̂|² + ε)``; normalised to unit sum.
    """
    if psf_image.shape != model_image.shape or psf_image.shape[0] % 2 == 0:
        raise ValueError(
            f"matching_kernel: need equal odd-sized stamps, got {psf_image.shape} and {model_image.shape}"
        )
    from scipy import fft as sfft

    p = sfft.fft2(sfft.ifftshift(psf_image / psf_image.sum()))
    m = sfft.fft2(sfft.ifftshift(model_image / model_image.sum()))
    k = np.real(sfft.fftshift(sfft.ifft2(np.conj(p) * m / (np.abs(p) ** 2 + regularization))))
    return k / k.sum()


def model_psf_image(fwhm_px: float, size: int) -> NDArray[np.float64]:
    """The Gaussian-core model PSF of PSF-matched warps, drawn centred on a ``size`` stamp."""
    return GaussianPsf(fwhm=fwhm_px).image(0.0, 0.0, size=size)


def psf_match_warp(
    warp: xr.Dataset,
    *,
    model_fwhm_px: float,
    kernel_size: int = 25,
    where: tuple[float, float] | None = None,
) -> xr.Dataset:
    """Convolve a warp to a Gaussian model PSF (a PSF-matched warp, for artifact detection).

    Parameters
    ----------
    warp
        A warp (from :func:`warp_exposure`) with a PSF in its attrs.
    model_fwhm_px
        FWHM of the Gaussian model PSF (target-grid pixels); must exceed the warp's PSF.
    kernel_size
        Side of the matching kernel (odd).
    where
        Position where the matching kernel is computed (default: the warp's centre); the
        kernel is spatially constant over the warp.

    Notes
    -----
    Lazy (``map_overlap``); halo ``kernel_size // 2``; NaN (NO_DATA) pixels are treated as
    zero in the convolution and stay NaN. Variance is convolved with ``K²`` (the diagonal
    only).
    """
    import dask.array as da
    from scipy import signal

    if not warp.attrs.get("psf"):
        raise ValueError(
            f"psf_match_warp: warp {warp.attrs.get('warp', {}).get('input')} has no PSF"
        )
    psf = psf_from_dict(warp.attrs["psf"])
    if where is None:
        where = (float(warp["x"].values.mean()), float(warp["y"].values.mean()))
    kern = matching_kernel(
        psf.image(*where, size=kernel_size, center=(kernel_size // 2, kernel_size // 2)),
        model_psf_image(model_fwhm_px, kernel_size),
    )
    depth = kernel_size // 2

    def conv(block: NDArray[np.float32], kk: NDArray[np.float64]) -> NDArray[np.float32]:
        nan = ~np.isfinite(block)
        out = signal.fftconvolve(np.where(nan, 0.0, block), kk, mode="same").astype(np.float32)
        out[nan] = np.nan
        return out

    out = warp.copy()
    for name, kk in (("image", kern), ("variance", kern * kern)):
        data = warp[name].data
        if not hasattr(data, "map_overlap"):  # numpy
            data = da.from_array(data, chunks=DEFAULT_WARP_CHUNKS)
        out[name] = (
            ("y", "x"),
            data.map_overlap(
                conv,
                depth=depth,
                boundary="none",
                kk=kk,
                dtype=np.float32,
                meta=np.empty((0, 0), np.float32),
            ),
            warp[name].attrs,
        )
    out.attrs = {
        **warp.attrs,
        "psf": GaussianPsf(fwhm=model_fwhm_px).to_dict(),
        "psf_matched": {"model_fwhm_px": model_fwhm_px, "kernel_size": kernel_size},
    }
    return out
