"""Benchmark of the ISR: one 4096 × 4096 detector (8 amplifiers), Mpix/s.

Rows: the whole ISR (overscan, crosstalk, bias, linearity, gain, variance, dark,
defects, brighter-fatter, flat, SAT growth, interpolation), as the ``isr`` task builds
it (per-row overscan medians computed in each block), excluding I/O (the uint16 raw and
the calibrations in memory as dask arrays in row blocks, as a worker holds them after
reading; the image, variance and mask computed and kept as the blocks they are made in)
and including zarr I/O (raw read from a uint16 zarr array as the camera writes it,
image/variance/mask written to a zarr group; calibrations in memory, as a worker caches
them), on one and two threads, and two detectors at once on a thread each (as a run over
many detectors keeps two cores busy); the fused per-pixel kernel alone (overscan levels
given, written into the same buffer each time, as the ISR's block buffers are reused);
the memory bandwidth of one core and of two together (a float32 copy) and the throughput
they allow a one-pass ISR; Dask's own time to persist a trivial array (a floor under any
graph's); and astropy ccdproc's overscan, trim, bias, dark and flat on the same pixels,
as a ratio to ours. Each case runs ``--repeat`` times, the cases in turn (those with I/O
after those without), and the table gives the best and the median run. The machine's
load average is printed: on a shared machine the figures move with the other users, so
compare ratios. The scene is a 1500 e⁻ sky with ``--stars`` bright stars (150 by
default: brighter-fatter bands, saturation and its growth, interpolation); the defects
are a 900-row bad column and a 3 × 3 box, and ``--bad-columns`` adds that many bad
columns down the whole detector (real defect maps have tens); ``--chunk-rows`` sets the
rows per chunk of the raw and the calibrations, ``--block-rows`` the rows per ISR block
(the defaults of ``lsstlite.stages.isr.ops``).

Usage::

    python benchmarks/isr.py [--repeat 7] [--stars 150] [--bad-columns 0] [--chunk-rows 1024]
        [--block-rows 2048]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source tree

import dask
import dask.array as da
import numba
import numpy as np
import pandas as pd
import xarray as xr

from lsstlite.data import write_exposure_zarr
from lsstlite.data._zarr_chunks import stored_chunks_array
from lsstlite.data.exposure import make_exposure
from lsstlite.instruments.simcam import SimCam
from lsstlite.stages.isr import _kernels, ops
from lsstlite.stages.isr._synthetic import geometry, simcam_raw

N = 4096
MPIX = N * N / 1e6


def _best(fn: Callable[[], Any], repeat: int) -> float:
    return min(_interleaved({"": fn}, repeat)[""])


def _interleaved(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, list[float]]:
    """Each function's run times, ``repeat`` rounds of one run each in turn (after a
    warm-up run each: numba compilation, cached on disk, and page faults), so that a
    busier spell of a shared machine falls on all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(repeat, 1)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=7, help="runs of each case, in turn; best and median shown"
    )
    parser.add_argument(
        "--stars",
        type=int,
        default=150,
        help="stars above the brighter-fatter threshold (10 ke⁻ peak) on the detector",
    )
    parser.add_argument(
        "--bad-columns",
        type=int,
        default=0,
        help="bad columns down the whole detector added to the defects",
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=ops.DEFAULT_CHUNK_ROWS,
        help="rows per chunk of the raw and the calibrations (as read)",
    )
    parser.add_argument(
        "--block-rows",
        type=int,
        default=ops.DEFAULT_BLOCK_ROWS,
        help="rows per ISR block",
    )
    args = parser.parse_args()
    chunk_rows, block_rows = args.chunk_rows, args.block_rows
    cam = SimCam(geometry(N, N, 8))
    rng = np.random.default_rng(1)
    electrons = _scene(rng, args.stars)
    raw = simcam_raw(electrons, cam, 0, read_noise=True, chunk_rows=chunk_rows)
    raw["image"] = raw["image"].astype(np.uint16)  # as the camera writes it
    raw = raw.persist()
    raw_np = np.asarray(raw["image"].data)
    calib = {
        k: _row_blocks(v, chunk_rows)
        for k, v in {
            "bias": make_exposure(rng.normal(0, 1, (N, N)).astype(np.float32), units="adu"),
            "dark": make_exposure(np.full((N, N), 0.005, np.float32)),
            "flat": make_exposure(rng.normal(1, 0.01, (N, N)).astype(np.float32)),
        }.items()
    }
    defects = pd.DataFrame({"x0": [100, 2000], "y0": [0, 40], "width": [1, 3], "height": [900, 3]})
    columns = rng.choice(N, args.bad_columns, replace=False)
    defects = pd.concat(
        [defects, pd.DataFrame({"x0": columns, "y0": 0, "width": 1, "height": N})],
        ignore_index=True,
    )
    consts = {
        "crosstalk": cam.crosstalk_matrix(0),
        "linearity": cam.linearity(0),
        "bf_kernel": cam.bf_kernel(),
    }

    def isr(raw_ds: xr.Dataset) -> xr.Dataset:
        # per-row overscan medians, computed in each block as the isr task does
        return ops.isr_stacked(
            raw_ds,
            overscan="median_per_row",
            defects=defects,
            **calib,
            **consts,
            chunk_rows=block_rows,
        )

    def in_memory() -> None:
        # the planes computed and kept in memory as the blocks they are made in, as a
        # worker holds them before writing (gathering them into one array is a copy)
        dask.persist(isr(raw))

    tmp = Path(tempfile.mkdtemp(prefix="lsstlite-isr-bench-"))
    da.from_array(raw_np, chunks=(chunk_rows, -1)).to_zarr(str(tmp / "raw.zarr"), overwrite=True)

    def with_io() -> None:
        ds = raw.copy()
        # read as lsstlite reads a stored zarr array: one task per stored chunk
        ds["image"] = (("y", "x"), stored_chunks_array(tmp / "raw.zarr"))
        # written as the repository stores a post_isr exposure
        write_exposure_zarr(isr(ds), tmp / "post_isr.zarr", overwrite=True)

    geo = ops._readout_geometry(raw)
    lin = ops._linearity_array(consts["linearity"])
    levels = np.asarray(ops.overscan_levels(raw).values)
    flags = np.ones(7, bool)
    calib_np = [np.asarray(calib[k]["image"].values) for k in ("bias", "dark", "flat")]
    bias_np, dark_np, flat_np = calib_np
    bits = ops._mask_bits_array()[:3]

    kernel_out = np.empty((3, N, N), np.float32)

    def kernel_only() -> None:
        _kernels.isr_fused(
            raw_np, levels, geo["raw_x0"], geo["det_x0"], geo["flip"], geo["width"], N,
            geo["gain"], geo["read_noise"], geo["saturation"], lin, consts["crosstalk"],
            bias_np, dark_np, 30.0, flat_np, flags, bits, out=kernel_out,
        )  # fmt: skip

    def two_detectors() -> None:
        # two detectors' graphs computed at once, one thread each
        def one() -> None:
            dask.persist(isr(raw), scheduler="threads", num_workers=1)

        workers = [threading.Thread(target=one) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def on_threads(fn: Callable[[], None], threads: int) -> Callable[[], None]:
        def run() -> None:
            with dask.config.set(scheduler="threads", num_workers=threads):
                fn()

        return run

    # what/threads: (threads, detectors, function); those without I/O in turn, then
    # those with (the disk's write-back after a run would slow the next one down)
    cases: dict[str, tuple[int, int, Callable[[], None]]] = {
        "ISR, no I/O/1": (1, 1, on_threads(in_memory, 1)),
        "ISR, no I/O/2": (2, 1, on_threads(in_memory, 2)),
        "ISR, no I/O, 2 detectors/2": (2, 2, two_detectors),
        "fused kernel only (numba)/1": (1, 1, kernel_only),
    }
    with_io_cases = {f"ISR + zarr I/O/{t}": (t, 1, on_threads(with_io, t)) for t in (1, 2)}
    try:
        times = _interleaved({k: v[2] for k, v in cases.items()}, args.repeat)
        times.update(_interleaved({k: v[2] for k, v in with_io_cases.items()}, args.repeat))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cases.update(with_io_cases)
    # (what, threads, best seconds, median seconds, detectors)
    rows = [
        (k.rsplit("/", 1)[0], v[0], min(times[k]), float(np.median(times[k])), v[1])
        for k, v in cases.items()
    ]
    ccd_time = _ccdproc(raw, calib, args.repeat)
    # The machine's own limit: one core's memory bandwidth (a float32 copy, read + write),
    # and what it allows a one-pass ISR that reads raw, bias, dark and flat and writes
    # image, variance and mask.
    src = np.ones(64 * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    copy_gbs = 2 * src.nbytes / _best(lambda: _copy(src, dst), args.repeat) / 1e9
    # two cores share the memory: each copies its own arrays at the same time
    pairs = [(src, dst), (np.ones_like(src), np.empty_like(dst))]
    copy2_gbs = 4 * src.nbytes / _best(lambda: _copy_on_threads(pairs), args.repeat) / 1e9
    isr_bytes = raw_np.itemsize + sum(c.itemsize for c in calib_np) + 3 * 4
    # what Dask itself takes to persist any collection (here a two-chunk array of ones):
    # a floor under every detector's ISR graph, serial before its first task
    with dask.config.set(scheduler="threads", num_workers=2):
        floor = _best(lambda: dask.persist(da.ones((8, 8), chunks=(4, 8))), 10 * args.repeat)

    print(
        f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; detector {N}×{N}, "
        f"{args.stars} bright stars, {len(defects)} defects ({args.bad_columns} full columns)"
    )
    print(
        f"best and median of {args.repeat} runs each, in turn; Mpix/s of the best run, and "
        "per core of the best and the median"
    )
    header = (
        f"{'what':32s} {'threads':>7s} {'best s':>7s} {'median':>7s} {'Mpix/s':>8s} "
        f"{'per core':>8s} {'median':>7s} {'vs ccdproc':>10s}"
    )
    print(header)
    print("-" * len(header))
    for name, threads, t, t_med, n in rows:
        rate = n * MPIX / t
        print(
            f"{name:32s} {threads:7d} {t:7.3f} {t_med:7.3f} {rate:8.1f} {rate / threads:8.1f} "
            f"{n * MPIX / t_med / threads:7.1f} {n * ccd_time / t:9.1f}×"
        )
    if ccd_time:
        print(
            f"{'ccdproc (os/trim/bias/dark/flat)':32s} {1:7d} {ccd_time:7.3f} {'':7s} "
            f"{MPIX / ccd_time:8.1f} {MPIX / ccd_time:8.1f}"
        )
    print(
        f"memory bandwidth, one core: {copy_gbs:.1f} GB/s (float32 copy); a one-pass ISR "
        f"moves {isr_bytes} bytes per pixel: at most {copy_gbs * 1e3 / isr_bytes:.0f} Mpix/s"
    )
    print(
        f"memory bandwidth, two cores together: {copy2_gbs:.1f} GB/s: at most "
        f"{copy2_gbs * 1e3 / isr_bytes:.0f} Mpix/s ({copy2_gbs * 1e3 / isr_bytes / 2:.0f} per core)"
    )
    print(f"Dask persisting a trivial two-chunk array on two threads: {floor * 1e3:.2f} ms")


@numba.njit(cache=True, nogil=True)
def _copy(src: np.ndarray, dst: np.ndarray) -> None:
    for i in range(src.size):
        dst[i] = src[i]


def _copy_on_threads(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    threads = [threading.Thread(target=_copy, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _scene(rng: np.random.Generator, n_stars: int) -> np.ndarray:
    """Sky of 1500 e⁻ with Poisson noise and ``n_stars`` Gaussian stars (σ 1.7 px) whose
    peaks run log-uniformly from 12 ke⁻ to 400 ke⁻ (the brightest saturate, bleed trails
    aside), so that brighter-fatter, SAT growth and interpolation all have work."""
    sky = np.full((N, N), 1500.0)
    half = 12
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    for _ in range(n_stars):
        y, x = rng.integers(half, N - half, 2)
        peak = np.exp(rng.uniform(np.log(1.2e4), np.log(4e5)))
        dy, dx = rng.uniform(-0.5, 0.5, 2)
        stamp = peak * np.exp(-((yy - dy) ** 2 + (xx - dx) ** 2) / (2 * 1.7**2))
        sky[y - half : y + half + 1, x - half : x + half + 1] += stamp
    return rng.poisson(sky).astype(np.float64)


def _row_blocks(ds: xr.Dataset, rows: int) -> xr.Dataset:
    """``ds`` with every plane a persisted dask array in blocks of ``rows`` full rows."""
    out = ds.copy()
    for name in ds.data_vars:
        out[name] = ds[name].chunk({"y": rows, "x": -1})
    return out.persist()


def _ccdproc(raw: xr.Dataset, calib: dict[str, xr.Dataset], repeat: int) -> float:
    """astropy ccdproc on the same raw: per amplifier overscan + trim, then bias, dark, flat."""
    try:
        import astropy.units as u
        import ccdproc
        from astropy.nddata import CCDData
    except ImportError:
        print("ccdproc not installed (pip install ccdproc): no comparison")
        return 0.0
    image = np.asarray(raw["image"].data)
    amps = raw.attrs["amplifiers"]
    bias = CCDData(calib["bias"]["image"].values, unit="adu")
    dark = CCDData(calib["dark"]["image"].values * 30.0 / 1.5, unit="adu")
    flat = CCDData(calib["flat"]["image"].values, unit="adu")

    def run() -> None:
        pieces = []
        for a in amps:
            x0, x1 = a["bbox_raw"][2:]
            ccd = CCDData(image[:, x0:x1], unit="adu")
            ox0, ox1 = a["serial_overscan"][2] - x0, a["serial_overscan"][3] - x0
            dx0, dx1 = a["data_section"][2] - x0, a["data_section"][3] - x0
            ccd = ccdproc.subtract_overscan(
                ccd, fits_section=f"[{ox0 + 1}:{ox1},:]", median=True, overscan_axis=1
            )
            pieces.append(ccdproc.trim_image(ccd, fits_section=f"[{dx0 + 1}:{dx1},:]").data)
        ccd = CCDData(np.concatenate(pieces, axis=1), unit="adu")
        ccd = ccdproc.subtract_bias(ccd, bias)
        ccd = ccdproc.subtract_dark(
            ccd, dark, dark_exposure=30 * u.s, data_exposure=30 * u.s, scale=False
        )
        ccdproc.flat_correct(ccd, flat)

    return _best(run, repeat)


if __name__ == "__main__":
    main()
