"""Graph building and per-quantum scheduling overhead.

Prints a table: time to build graphs of 1,000 / 10,000 / 50,000 quanta (a detector-level
task with a calibration prerequisite, then a visit-level gather), and the per-quantum
overhead of executing trivial quanta on a local cluster. With ``--with-lsst`` it also
times ``pipetask qgraph`` from ``lsst-pipe-base`` in a separate virtual environment,
when that installs here.

Usage: python benchmarks/graph.py [--sizes 1000,10000,50000] [--exec-quanta 200] [--with-lsst]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsstlite.pipe import Config, Input, Output, Pipeline, PrerequisiteInput, Task, TaskResult
from lsstlite.pipe.graph import build_graph
from lsstlite.repo import Butler
from lsstlite.repo._dataset_types import DatasetType

DET = ("instrument", "exposure", "detector")


class BenchDetectorTask(Task):
    ConfigClass = Config
    dimensions = DET
    inputs = {
        "raw": Input("bench_raw", DET),
        "flat": PrerequisiteInput("bench_flat", ("instrument", "detector"), calibration=True),
    }
    outputs = {"out": Output("bench_out", DET, storage_class="Json")}

    def run(self, raw: object, flat: object) -> TaskResult:
        return TaskResult(out={"ok": True})


class BenchVisitTask(Task):
    dimensions = ("instrument", "exposure")
    inputs = {"outs": Input("bench_out", DET, multiple=True, storage_class="Json")}
    outputs = {"summary": Output("bench_summary", ("instrument", "exposure"), storage_class="Json")}

    def run(self, outs: list[object]) -> TaskResult:
        return TaskResult(summary={"n": len(outs)})


class TrivialTask(Task):
    dimensions = DET
    inputs = {"raw": Input("bench_json", DET, storage_class="Json")}
    outputs = {"out": Output("bench_json_out", DET, storage_class="Json")}

    def run(self, raw: dict) -> TaskResult:
        return TaskResult(out=raw)


def make_repo(root: Path, n_detector_quanta: int, n_detectors: int = 100) -> Butler:
    butler = Butler.create(root)
    butler.register_dataset_type(DatasetType("bench_raw", DET, "Json"))
    butler.register_dataset_type(
        DatasetType("bench_flat", ("instrument", "detector"), "Json", is_calibration=True)
    )
    n_exp = max(1, n_detector_quanta // n_detectors)
    butler.register_exposures(
        [
            {
                "instrument": "Bench",
                "exposure": e,
                "band": "r",
                "physical_filter": "B-r",
                "mjd": 60000.0 + e * 0.01,
                "day_obs": 20230101,
            }
            for e in range(n_exp)
        ]
    )
    idx = np.arange(n_exp * n_detectors)
    butler._bulk_register(
        pd.DataFrame(
            {
                "dataset_type": "bench_raw",
                "run": "raw",
                "instrument": "Bench",
                "exposure": idx // n_detectors,
                "detector": idx % n_detectors,
            }
        )
    )
    for det in range(n_detectors):
        butler.put(
            {"det": det}, "bench_flat", {"instrument": "Bench", "detector": det}, run="calib/run"
        )
    from lsstlite.repo import certify

    certify(butler, "calib/run", "calib", begin=50000.0, end=70000.0, dataset_types=["bench_flat"])
    return butler


def time_graph(n: int, work: Path) -> tuple[int, float, float]:
    t = time.perf_counter()
    butler = make_repo(work / f"repo{n}", n)
    setup = time.perf_counter() - t
    pipe = Pipeline.from_tasks([("det", BenchDetectorTask, {}), ("visit", BenchVisitTask, {})])
    t = time.perf_counter()
    graph = build_graph(
        Butler(work / f"repo{n}"), pipe, input_collections=["raw", "calib"], output_run="out/1"
    )
    build = time.perf_counter() - t
    del butler
    return len(graph), build, setup


def time_execution(n: int, work: Path) -> tuple[float, float]:
    from lsstlite.pipe.run import run_pipeline

    root = work / "exec"
    butler = Butler.create(root, run="raw")
    butler.register_dataset_type(DatasetType("bench_json", DET, "Json"))
    for i in range(n):
        butler.put(
            {"i": i}, "bench_json", {"instrument": "Bench", "exposure": i // 10, "detector": i % 10}
        )
    pipe = Pipeline.from_tasks([("trivial", TrivialTask, {})])
    t = time.perf_counter()
    report = run_pipeline(root, pipe, inputs="raw", output="out", n_workers=2)
    wall = time.perf_counter() - t
    assert report.ok
    return wall, wall / n


def time_pipetask(work: Path) -> str:
    env_dir = work / "lsst-venv"
    try:
        venv.create(env_dir, with_pip=True)
        pip = env_dir / "bin" / "pip"
        subprocess.run(
            [str(pip), "install", "-q", "lsst-pipe-base"],
            check=True,
            timeout=900,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"lsst-pipe-base did not install here: {exc}"
    return (
        "lsst-pipe-base installed; a comparable pipetask qgraph needs a butler repository with "
        "registered instrument and dimension records, which this benchmark does not build"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--exec-quanta", type=int, default=200)
    parser.add_argument("--with-lsst", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lsstlite-bench-graph-"))
    try:
        print(
            f"{'detector quanta':>16} {'total quanta':>13} {'build [s]':>10} {'µs/quantum':>11} {'repo setup [s]':>15}"
        )
        for n in (int(s) for s in args.sizes.split(",")):
            total, build, setup = time_graph(n, work)
            print(
                f"{n:>16,} {total:>13,} {build:>10.2f} {1e6 * build / total:>11.0f} {setup:>15.1f}"
            )
        wall, per = time_execution(args.exec_quanta, work)
        print(
            f"\nexecution of {args.exec_quanta} trivial quanta on a 2-process local cluster: "
            f"{wall:.1f} s wall (cluster start included), {1e3 * per:.1f} ms per quantum"
        )
        if args.with_lsst:
            print(time_pipetask(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.environ.pop("LSSTLITE_BENCH", None)


if __name__ == "__main__":
    main()
