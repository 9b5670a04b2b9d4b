"""Benchmark of the survey simulator.

Prints how long each preset takes to generate from scratch (raws, calibration raws,
reference catalog and truth), the CPU time of the raw writers (the load-independent
figure: on a shared machine the wall time depends on the other users), the raw pixels
written per wall second, and how long the rerun of a complete simulation takes (it
should return at once). The load average is printed too.

Usage::

    python benchmarks/sim.py [--full] [--workers 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source tree

from lsstlite.sim import simulate_survey


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also time the full preset")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--keep", type=Path, default=None, help="write here and keep")
    args = parser.parse_args()
    presets = ["small", "ci"] + (["full"] if args.full else [])
    root = args.keep or Path(tempfile.mkdtemp(prefix="lsstlite-sim-bench-"))
    header = (
        f"{'preset':8s} {'raws':>5s} {'Mpix':>8s} {'GB':>6s} {'total s':>8s} {'raws s':>7s} "
        f"{'raw CPU s':>9s} {'Mpix/s':>7s} {'rerun s':>8s}"
    )
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(header)
    print("-" * len(header))
    try:
        for preset in presets:
            out = root / preset
            summary = simulate_survey(
                out, preset=preset, seed=1, overwrite=True, n_workers=args.workers
            )
            t0 = time.perf_counter()
            simulate_survey(out, preset=preset, seed=1)
            rerun = time.perf_counter() - t0
            n = summary.n_science_raws + summary.n_calib_raws
            print(
                f"{preset:8s} {n:5d} {summary.raw_megapixels:8.1f} "
                f"{summary.raw_bytes / 1e9:6.2f} {summary.elapsed_s:8.1f} "
                f"{summary.timings['raws']:7.1f} {summary.timings['raws_cpu']:9.1f} "
                f"{summary.raw_megapixels / summary.elapsed_s:7.1f} {rerun:8.3f}"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
