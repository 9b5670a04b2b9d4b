"""``lsstlite coadd CALEXP ... --grid HEADER --out OUT``: warp and combine calexps onto a
pixel grid, outside any repository (what ``SWarp file ... -c ...`` does with a ``.head``
file).

The grid is a FITS header (a ``.head`` text file as SWarp reads, or a FITS file whose
first 2-d image gives it) with NAXIS1, NAXIS2 and a celestial WCS. Calexps are lsstlite
exposures: zarr directories (read lazily, chunk by chunk) or multi-extension FITS as
:func:`~lsstlite.data.write_exposure_fits` writes them. The coadd is written to zarr as it
is computed (:func:`~lsstlite.stages.coadd.ops.write_coadd`), and optionally as FITS too.
With zarr inputs the process never loads xarray, pandas or ``dask.array``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

from lsstlite.cli._args import positive_int


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "coadd",
        help="warp and combine calexps onto a grid given by a FITS header (like SWarp)",
        description=(
            "Warp CALEXPs (lsstlite exposures: zarr directories or FITS) onto the grid of "
            "--grid (a FITS header: a .head text file or a FITS file) and combine them; the "
            "coadd (image, mask, variance, CoaddPsf) is written to --out (zarr) chunk by "
            "chunk as it is computed."
        ),
    )
    p.add_argument("calexps", nargs="+", metavar="CALEXP", help="zarr directory or FITS file")
    p.add_argument("--grid", required=True, metavar="HEADER", help="output grid (FITS header)")
    p.add_argument("--out", required=True, metavar="ZARR", help="coadd to write (zarr)")
    p.add_argument("--fits", metavar="FILE", help="also write the coadd as FITS")
    p.add_argument(
        "--method", choices=["compare_warp", "clipped", "mean", "median"], default="compare_warp"
    )
    p.add_argument(
        "--kernel", choices=["lanczos3", "lanczos4", "lanczos2", "bilinear"], default="lanczos3"
    )
    p.add_argument("--chunk", type=positive_int, default=512, help="output chunk side (px)")
    p.add_argument(
        "--cache-mb",
        type=int,
        default=0,
        help="decoded input chunks kept for the next output chunks (MB; 0: least memory)",
    )
    p.add_argument(
        "--workers", type=positive_int, default=None, help="threads (default: all cores)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_run)


def read_grid(path: str | os.PathLike[str]) -> Any:
    """A :class:`~lsstlite.data.skymap.PatchGeometry` from a FITS header file (``.head``
    text, one card per line as SWarp reads it, or the header of a FITS file's first 2-d
    image)."""
    from astropy.io import fits

    from lsstlite.data.skymap import PatchGeometry
    from lsstlite.data.wcs import wcs_to_cards

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid header {path}: no such file")
    data = path.read_bytes()
    try:
        if data[:6] == b"SIMPLE":  # the first 2-d image of a FITS file
            with fits.open(path) as hdus:
                images = [h.header for h in hdus if h.header.get("NAXIS") == 2]
            header = images[0] if images else fits.getheader(path)
        else:
            text = data.decode("ascii", errors="replace")
            header = fits.Header.fromstring(text, sep="\n" if "\n" in text else "")
    except Exception as exc:  # astropy raises several types for malformed headers
        raise ValueError(f"grid header {path}: not a FITS header ({exc})") from exc
    if "NAXIS1" not in header or "NAXIS2" not in header:
        raise ValueError(f"grid header {path}: NAXIS1 and NAXIS2 (the grid size) are missing")
    if "CTYPE1" not in header or "CTYPE2" not in header:
        raise ValueError(f"grid header {path}: no celestial WCS (CTYPE1/CTYPE2 missing)")
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    if min(shape) < 1:
        raise ValueError(f"grid header {path}: empty grid {shape[1]} × {shape[0]}")
    return PatchGeometry(wcs_to_cards(header), shape)


def _open(path: str) -> Any:
    """A calexp: a zarr directory as a :class:`~lsstlite.data._zarr_chunks.StoredGroup`
    (no xarray) when its layout allows, else as a Dataset (FITS too)."""
    from lsstlite.data._zarr_chunks import read_stored_group
    from lsstlite.data.exposure import validate_exposure

    p = Path(path)
    if p.suffix.lower() in (".fits", ".fit", ".fz"):
        from lsstlite.data.io import read_exposure_fits

        return read_exposure_fits(p)
    if not p.exists():
        raise FileNotFoundError(f"calexp {p}: no such file or directory")
    group = read_stored_group(p) if p.is_dir() else None
    if group is None:
        from lsstlite.data.io import open_exposure_zarr

        return open_exposure_zarr(p)
    validate_exposure(group, what=f"exposure at {p}")
    return group


def _run(args: argparse.Namespace) -> int:
    import gc

    import dask
    import dask.threaded

    from lsstlite.stages.coadd.ops import plan_coadd, write_coadd

    # Everything alive now (the imported modules) lives until exit: the collector need
    # not scan it again during the run, nor the interpreter at exit (~0.4 s here).
    gc.freeze()
    start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    patch = read_grid(args.grid)
    calexps = [_open(p) for p in args.calexps]
    workers = args.workers or os.cpu_count() or 1
    # The threaded scheduler given as itself, not by name: a name makes Dask import
    # dask.distributed (~0.2 s, 13 MB) to see whether a cluster client exists.
    with dask.config.set(scheduler=dask.threaded.get, num_workers=workers):
        plan = plan_coadd(
            calexps,
            patch,
            method=args.method,
            kernel=args.kernel,
            chunks=(args.chunk, args.chunk),
            chunk_cache_bytes=args.cache_mb * 2**20,
        )
        graph_s = time.perf_counter() - start
        # Written beside the output and renamed into place once complete: a failure
        # leaves an existing --out as it was.
        partial = out.parent / f".{out.name}.partial-{os.getpid()}"
        if partial.exists():
            shutil.rmtree(partial)
        try:
            write_coadd(plan, partial, num_workers=workers)
            if out.exists():
                shutil.rmtree(out)
            partial.rename(out)
        finally:
            if partial.exists():
                shutil.rmtree(partial)
    if args.fits:
        import lsstlite.data as lld

        lld.write_exposure_fits(lld.open_exposure_zarr(out), args.fits, overwrite=args.overwrite)
    skipped = plan.exposure["attrs"].get("coadd_skipped") or []
    ny, nx = patch.shape
    print(
        f"coadd: {len(calexps) - len(skipped)} of {len(calexps)} calexps onto {nx} × {ny} "
        f"({args.method}, {args.kernel}) in {time.perf_counter() - start:.1f} s "
        f"(open + graph {graph_s:.1f} s) → {out}"
    )
    for s in skipped:
        print(f"  left out {s['data_id']}: {s['reason']}")
    return 0
