"""Warp + clipped coadd of 10 dithered 2048² images with a satellite trail: lsstlite vs
SWarp vs reproject, same inputs, same cores, one run each, side by side.

Prints each lsstlite run's own summary line (its time after the imports, and the part
spent opening the inputs and building the graph), one table (wall time, peak memory,
trail residual, noise) and the kernel throughputs (Lanczos3 warp Mpix/s per core, clipped combination
M input px/s per core; best of three).

- SWarp: ``COMBINE_TYPE CLIPPED``, ``RESAMPLING_TYPE LANCZOS3``, ``NTHREADS`` = cores,
  inputs and weight maps as FITS, output grid from a ``.head`` file (the patch WCS).
- reproject: ``reproject_interp`` (bilinear) of each image, then a numpy 3σ-clipped mean.
- lsstlite: its command line, ``lsstlite coadd in*.zarr --grid coadd.head --out ...``
  (``plan_coadd`` on zarr inputs, its storage, computed into zarr by ``write_coadd``:
  the process loads no xarray, pandas or ``dask.array``), Lanczos3, threads; with
  ``method="clipped"`` (SWarp's rule), without and with a 256 MB chunk cache (memory
  against decoding), and with ``method="compare_warp"`` (the default); the coadd is
  written to zarr as it is computed.

Each tool runs in its own process, its peak RSS from GNU ``time`` (``%M``).
Trail residual: 99th percentile of |coadd − truth| / σ over the trail's pixels, σ the
coadd's noise measured in blank sky; "clean" is the same statistic away from the trail.

Usage: python benchmarks/coadd.py [--cores 2] [--size 2048] [--n 10] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RA, DEC, SCALE, FWHM, SIGMA = 150.0, 2.0, 0.2, 3.5, 10.0


def _wcs(shape: tuple[int, int], dx: float, dy: float, rot: float):  # type: ignore[no-untyped-def]
    import lsstlite.data as lld

    ny, nx = shape
    return lld.make_tan_wcs(
        RA, DEC, ((nx - 1) / 2 + dx, (ny - 1) / 2 + dy), SCALE, rotation_deg=rot
    )


def _render(wcs, shape, ra, dec, flux):  # type: ignore[no-untyped-def]
    """Gaussian stars (pixel centres sampled; flux conserved to < 0.1% at FWHM 3.5)."""
    ny, nx = shape
    out = np.zeros(shape, np.float32)
    x, y = wcs.all_world2pix(ra, dec, 0)
    s2 = (FWHM / 2.3548) ** 2
    yy, xx = np.mgrid[-12:13, -12:13]
    for xi, yi, f in zip(x, y, flux, strict=True):
        ix, iy = round(xi), round(yi)
        if not (12 <= ix < nx - 12 and 12 <= iy < ny - 12):
            continue
        stamp = np.exp(-0.5 * ((xx + ix - xi) ** 2 + (yy + iy - yi) ** 2) / s2) / (2 * np.pi * s2)
        out[iy - 12 : iy + 13, ix - 12 : ix + 13] += f * stamp
    return out


def make_inputs(workdir: Path, n: int, size: int) -> None:
    """Write the inputs (FITS for SWarp/reproject, zarr for lsstlite), the output grid
    (``coadd.head``, read by SWarp, reproject and lsstlite alike) and the truth."""
    from astropy.io import fits

    import lsstlite.data as lld

    rng = np.random.default_rng(42)
    shape = (size, size)
    half = size * SCALE / 3600 / 2
    n_stars = 3000
    ra = RA + rng.uniform(-half, half, n_stars) / np.cos(np.radians(DEC))
    dec = DEC + rng.uniform(-half, half, n_stars)
    flux = 10 ** rng.uniform(2.5, 5.0, n_stars)
    out_wcs = _wcs(shape, 0, 0, 0)
    truth = _render(out_wcs, shape, ra, dec, flux)
    np.save(workdir / "truth.npy", truth)
    header = out_wcs.to_header()
    header["NAXIS"] = 2
    header["NAXIS1"], header["NAXIS2"] = size, size
    (workdir / "coadd.head").write_text(
        header.tostring(sep="\n", endcard=True, padding=False) + "\n"
    )
    trail_mask = np.zeros(shape, bool)
    for k in range(n):
        dx, dy, rot = rng.uniform(-60, 60), rng.uniform(-60, 60), rng.uniform(-0.5, 0.5)
        wcs = _wcs(shape, dx, dy, rot)
        image = _render(wcs, shape, ra, dec, flux) + rng.normal(0, SIGMA, shape).astype(np.float32)
        if k == 3:  # a satellite trail, 30σ at its peak
            yy, xx = np.mgrid[0:size, 0:size]
            trail = 30 * SIGMA * np.exp(-0.5 * ((yy - 0.7 * xx - 300) / 2.0) ** 2)
            image += trail.astype(np.float32)
            # where the trail lands on the output grid (> 1σ of one input)
            ox, oy = wcs.all_pix2world(xx[trail > SIGMA], yy[trail > SIGMA], 0)
            px, py = out_wcs.all_world2pix(ox, oy, 0)
            ok = (px >= 0) & (px < size - 0.5) & (py >= 0) & (py < size - 0.5)
            trail_mask[np.round(py[ok]).astype(int), np.round(px[ok]).astype(int)] = True
        hdr = wcs.to_header()
        fits.PrimaryHDU(image, header=hdr).writeto(workdir / f"in{k:02d}.fits", overwrite=True)
        fits.PrimaryHDU(np.full(shape, 1 / SIGMA**2, np.float32), header=hdr).writeto(
            workdir / f"in{k:02d}.weight.fits", overwrite=True
        )
        ds = lld.make_exposure(
            image,
            variance=np.full(shape, SIGMA**2, np.float32),
            wcs=wcs,
            psf=lld.GaussianPsf(fwhm=FWHM),
            units="nJy",
            visit_info={
                "instrument": "Bench",
                "exposure": k,
                "visit": k,
                "detector": 0,
                "band": "r",
            },
        )
        lld.write_exposure_zarr(ds, workdir / f"in{k:02d}.zarr", chunks=(512, 512), overwrite=True)
    np.save(workdir / "trail_mask.npy", trail_mask)


def repo_inputs(workdir: Path, repo: Path, collections: str | None) -> tuple[int, str]:
    """The inputs of the repository's coadd with the most calexps (e.g. the ``ci`` demo's
    ``DIR/repo``), laid out as :func:`make_inputs` lays them out: each calexp's zarr
    (linked from the repository, where lsstlite reads it), as FITS image + weight
    (1/variance, 0 where not finite) for SWarp and reproject, and the patch grid as
    ``coadd.head``. No truth: the table then has no trail columns. Returns the number of
    calexps and what they are."""
    from astropy.io import fits

    import lsstlite.data as lld
    from lsstlite.repo import Butler

    butler = Butler(str(repo))
    coadds = butler.query_datasets("coadd", collections=collections)
    if not coadds:
        raise SystemExit(f"{repo}: no coadd in {collections or 'any collection'}")
    opened = [(ref, lld.open_exposure_zarr(butler.get_uri(ref))) for ref in coadds]
    best, coadd = max(opened, key=lambda rc: len(rc[1].attrs["coadd_inputs"]))
    table = coadd.attrs["coadd_inputs"]
    header = fits.Header()
    x0, y0 = int(coadd["x"].values[0]), int(coadd["y"].values[0])
    for key, value in coadd.attrs["wcs"].items():
        header[key] = value
    header["CRPIX1"] = float(header["CRPIX1"]) - x0  # the patch's own pixel frame
    header["CRPIX2"] = float(header["CRPIX2"]) - y0
    header["NAXIS"] = 2
    header["NAXIS1"], header["NAXIS2"] = coadd.sizes["x"], coadd.sizes["y"]
    (workdir / "coadd.head").write_text(
        header.tostring(sep="\n", endcard=True, padding=False) + "\n"
    )
    calexps = butler.query_datasets("calexp", collections=collections)
    by_id = {(r.data_id.get("exposure"), r.data_id.get("detector")): r for r in calexps}
    for k, row in enumerate(table):
        ref = by_id[(row["visit"], row["detector"])]
        link = workdir / f"in{k:02d}.zarr"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(butler.get_uri(ref)))
        ds = lld.open_exposure_zarr(link)
        lld.write_exposure_fits(ds, workdir / "split.fits", overwrite=True)
        with fits.open(workdir / "split.fits") as hdul:
            image, var = hdul["IMAGE"], hdul["VARIANCE"].data
            ok = np.isfinite(var) & (var > 0) & np.isfinite(image.data)
            weight = np.where(ok, 1.0 / np.where(ok, var, 1.0), 0.0).astype(np.float32)
            data = np.where(ok, image.data, 0.0).astype(np.float32)
            fits.PrimaryHDU(data, header=image.header).writeto(
                workdir / f"in{k:02d}.fits", overwrite=True
            )
            fits.PrimaryHDU(weight, header=image.header).writeto(
                workdir / f"in{k:02d}.weight.fits", overwrite=True
            )
    (workdir / "split.fits").unlink()
    band = coadd.attrs.get("band")
    ny, nx = coadd.sizes["y"], coadd.sizes["x"]
    return len(table), f"the coadd {dict(best.data_id)} (band {band}, {nx} × {ny}) of {repo}"


# -- the three contenders (each runs in a child process) ---------------------------------


def _swarp_command(workdir: Path, n: int, cores: int) -> list[str]:
    files = [str(workdir / f"in{k:02d}.fits") for k in range(n)]
    return [
        "SWarp",
        *files,
        "-IMAGEOUT_NAME",
        str(workdir / "coadd.fits"),
        "-WEIGHTOUT_NAME",
        str(workdir / "coadd.weight.fits"),
        "-COMBINE_TYPE",
        "CLIPPED",
        "-RESAMPLING_TYPE",
        "LANCZOS3",
        "-WEIGHT_TYPE",
        "MAP_WEIGHT",
        "-WEIGHT_SUFFIX",
        ".weight.fits",
        "-SUBTRACT_BACK",
        "N",
        "-NTHREADS",
        str(cores),
        "-RESAMPLE_DIR",
        str(workdir),
        "-VERBOSE_TYPE",
        "QUIET",
        "-WRITE_XML",
        "N",
        "-FSCALASTRO_TYPE",
        "NONE",
    ]


def run_reproject(workdir: Path, n: int, cores: int) -> None:
    from astropy.io import fits
    from astropy.wcs import WCS
    from reproject import reproject_interp

    header = fits.Header.fromstring((workdir / "coadd.head").read_text(), sep="\n")
    shape = (header["NAXIS2"], header["NAXIS1"])
    stack = np.empty((n, *shape), np.float32)
    for k in range(n):
        with fits.open(workdir / f"in{k:02d}.fits") as f:
            stack[k], _ = reproject_interp(f[0], WCS(header), shape_out=shape, order="bilinear")
    # 3σ-clipped mean (two iterations around the median, MAD scale)
    med = np.nanmedian(stack, axis=0)
    mad = 1.4826 * np.nanmedian(np.abs(stack - med), axis=0)
    keep = np.abs(stack - med) <= 3 * np.maximum(mad, 1e-6)
    mean = np.nanmean(np.where(keep, stack, np.nan), axis=0)
    std = np.nanstd(np.where(keep, stack, np.nan), axis=0)
    keep = np.abs(stack - mean) <= 3 * np.maximum(std, 1e-6)
    out = np.nanmean(np.where(keep, stack, np.nan), axis=0)
    fits.PrimaryHDU(out.astype(np.float32), header=header).writeto(
        workdir / "coadd_reproject.fits", overwrite=True
    )


def _lsstlite_tool(tool: str) -> tuple[str, int]:
    """``lsstlite:METHOD[:CACHE_MB]`` → (method, chunk cache MB)."""
    parts = tool.split(":")
    return parts[1], int(parts[2]) if len(parts) > 2 else 0


def _child(tool: str, workdir: Path, n: int, cores: int) -> tuple[float, float]:
    """Run one tool in a fresh process; wall time (s) and its peak RSS (MB)."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": str(cores), "NUMBA_NUM_THREADS": str(cores)}
    if tool.startswith("lsstlite"):  # its command line, as SWarp's
        method, cache_mb = _lsstlite_tool(tool)
        cmd = [
            sys.executable,
            "-m",
            "lsstlite.cli.main",
            "coadd",
            *(str(workdir / f"in{k:02d}.zarr") for k in range(n)),
            "--grid",
            str(workdir / "coadd.head"),
            "--out",
            str(workdir / f"coadd_{method}_{cache_mb}.zarr"),
            "--method",
            method,
            "--cache-mb",
            str(cache_mb),
            "--workers",
            str(cores),
            "--overwrite",
        ]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    elif tool == "swarp":  # the binary itself
        cmd = _swarp_command(workdir, n, cores)
    else:
        code = f"import sys; sys.path.insert(0, {root!r}); import benchmarks.coadd as b; "
        code += f"from pathlib import Path; b.run_{tool}(Path({str(workdir)!r}), {n}, {cores})"
        cmd = [sys.executable, "-c", code]
    # Peak RSS through GNU time: a child forked from this (large) process would report
    # at least this process's RSS at the fork (Linux carries the high-water mark across
    # fork and exec), which floored every tool's figure at ~460 MB here.
    gnu_time = shutil.which("time")
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        if gnu_time:
            cmd = [gnu_time, "-f", "%M", "-o", rss.name, *cmd]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=workdir)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if status != 0:
            raise RuntimeError(f"{tool} failed with status {status}")
        if gnu_time:
            return wall, int(rss.read().split()[-1]) / 1024.0
    print(f"{tool}: GNU time not found; its peak memory includes this process's at the fork")
    return wall, usage.ru_maxrss / 1024.0


def _score(image: np.ndarray, workdir: Path) -> tuple[float, float, float]:
    truth = np.load(workdir / "truth.npy")
    trail = np.load(workdir / "trail_mask.npy")
    resid = image - truth
    inner = np.zeros(trail.shape, bool)
    inner[100:-100, 100:-100] = True
    sky = inner & (truth < 0.1 * SIGMA) & ~trail & np.isfinite(resid)
    sigma = float(np.std(resid[sky]))
    on = trail & inner & np.isfinite(resid)
    off = inner & ~trail & np.isfinite(resid)
    return (
        sigma,
        float(np.percentile(np.abs(resid[on]), 99) / sigma),
        float(np.percentile(np.abs(resid[off]), 99) / sigma),
    )


def _array_at(shape: tuple[int, int], dtype: type, offset: int) -> np.ndarray:
    """A zeroed C-contiguous array starting ``offset`` bytes past a 4 KiB boundary."""
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    buf = np.zeros(nbytes + 4096 + offset, np.uint8)
    start = (-buf.ctypes.data) % 4096 + offset
    return buf[start : start + nbytes].view(dtype).reshape(shape)


def kernel_throughput(size: int, n: int) -> tuple[float, float, float]:
    """Single-thread Lanczos3 warp (Mpix/s), with the input and output planes at
    different offsets within a 4 KiB page and, second, all at the same offset; clipped
    combination (M input px/s).

    The same-offset case is the worst case of 4K aliasing: a load whose address matches
    a pending store's in its low 12 bits waits for it. Large arrays fresh from the
    system all start at the same page offset, which made this figure 16–24 Mpix/s in a
    fresh process and 35–37 in one whose heap served them at other offsets. In a coadd
    the input regions are cut from stored chunks at offsets set by the dithers.
    """
    from lsstlite.stages.coadd._kernels import combine_clipped
    from lsstlite.stages.warp.ops import map_block, warp_arrays

    rng = np.random.default_rng(0)
    box = (0, 0, size, size)
    m = map_block(_wcs((size, size), 0, 0, 0), _wcs((size, size), 0.3, 0.6, 0.2), box, box)
    rates = []
    for offsets in ((0, 1088, 2176, 320, 1408, 2496), (0,) * 6):
        shape = (size, size)
        img = _array_at(shape, np.float32, offsets[0])
        img[:] = rng.normal(0, 1, shape)
        var = _array_at(shape, np.float32, offsets[1])
        var[:] = 1.0
        msk = _array_at(shape, np.int32, offsets[2])
        out = tuple(
            _array_at(shape, t, o)
            for t, o in zip((np.float32, np.float32, np.int32), offsets[3:], strict=True)
        )
        best = math.inf
        for _ in range(4):  # the first compiles (or loads) the kernel; then best of three
            t = time.perf_counter()
            warp_arrays(
                img, var, msk, m, box, box, kernel="lanczos3", no_data=256, sensor_edge=2048,
                out=out,
            )  # fmt: skip
            best = min(best, time.perf_counter() - t)
        rates.append(size * size / best / 1e6)
    stack = rng.normal(0, 1, (n, 1024, 1024)).astype(np.float32)
    stack[3, 500:510] += 100.0  # something to clip
    use = np.ones(stack.shape, bool)
    w = np.ones(n)
    combine_clipped(stack[:, :4], np.ones_like(stack[:, :4]), use[:, :4], w, 4.0, 0.3, 2)
    ones = np.ones_like(stack)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        combine_clipped(stack, ones, use, w, 4.0, 0.3, 2)
        best = min(best, time.perf_counter() - t)
    clip_rate = stack.size / best / 1e6
    return rates[0], rates[1], clip_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--tools",
        default="swarp,reproject,lsstlite:clipped,lsstlite:clipped:256,lsstlite:compare_warp",
        help="lsstlite:METHOD[:CACHE_MB] runs coadd_exposures(method=METHOD, "
        "chunk_cache_bytes=CACHE_MB MiB); default cache 0",
    )
    parser.add_argument(
        "--repo",
        default=None,
        help="instead of the synthetic images: the inputs of the coadd with the most calexps "
        "in this repository (e.g. DIR/repo of `lsstlite demo --preset ci`)",
    )
    parser.add_argument("--collections", default=None, help="with --repo: where to look")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_coadd_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.repo:
        args.n, what = repo_inputs(workdir, Path(args.repo), args.collections)
        print(f"inputs: {args.n} calexps, {what}; {args.cores} cores; {workdir}")
    else:
        print(
            f"inputs: {args.n} × {args.size}² dithered images, trail in one; {args.cores} "
            f"cores; {workdir}"
        )
        make_inputs(workdir, args.n, args.size)
    rows = []
    for tool in args.tools.split(","):
        if tool == "swarp" and shutil.which("SWarp") is None:
            print("SWarp not installed (apt-get install swarp): skipped")
            continue
        wall, rss = _child(tool, workdir, args.n, args.cores)
        if tool == "swarp":
            from astropy.io import fits

            image = fits.getdata(workdir / "coadd.fits").astype(np.float64)
        elif tool == "reproject":
            from astropy.io import fits

            image = fits.getdata(workdir / "coadd_reproject.fits").astype(np.float64)
        else:
            import lsstlite.data as lld

            image = lld.open_exposure_zarr(
                workdir / "coadd_{}_{}.zarr".format(*_lsstlite_tool(tool))
            )["image"].values.astype(np.float64)
        sigma, on, off = _score(image, workdir) if not args.repo else (math.nan,) * 3
        rows.append((tool, wall, rss, on, off, sigma))
    print(
        f"\n{'tool':<24}{'wall s':>8}{'peak MB':>9}{'trail p99/σ':>13}{'clean p99/σ':>13}{'noise σ':>9}"
    )
    for tool, wall, rss, on, off, sigma in rows:
        print(f"{tool:<24}{wall:>8.1f}{rss:>9.0f}{on:>13.2f}{off:>13.2f}{sigma:>9.2f}")
    # Each lsstlite run against the SWarp run just before it (alternate them: the
    # machine's speed drifts).
    pairs: dict[str, list[tuple[float, float]]] = {}
    last_swarp = None
    for tool, wall, rss, *_ in rows:
        if tool == "swarp":
            last_swarp = (wall, rss)
        elif tool.startswith("lsstlite") and last_swarp is not None:
            pairs.setdefault(tool, []).append((last_swarp[0] / wall, rss / last_swarp[1]))
    for tool, ratios in pairs.items():
        speed = " ".join(f"{r[0]:.2f}" for r in ratios)
        memory = " ".join(f"{r[1]:.2f}" for r in ratios)
        print(
            f"{tool}: {speed} × faster than SWarp, peak memory {memory} × SWarp's "
            "(each against the SWarp run before it)"
        )
    warp_rate, aliased_rate, clip_rate = kernel_throughput(args.size, args.n)
    print(
        f"Lanczos3 warp kernel: {warp_rate:.1f} Mpix/s per core ({aliased_rate:.1f} with "
        f"every plane at the same 4 KiB page offset); clipped combination: {clip_rate:.0f} "
        "M input px/s per core"
    )


if __name__ == "__main__":
    main()
