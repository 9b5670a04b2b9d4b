"""A worker or the driver dies mid-run: nothing is lost, a rerun completes identically."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsstlite.pipe.pipeline import Pipeline
from lsstlite.pipe.run import run_pipeline
from lsstlite.repo import Butler
from tests.pipe.toy_tasks import SlowTask, make_toy_repo

ROOT = Path(__file__).resolve().parents[2]


def _slow_outputs(repo: str, collection: str) -> dict[tuple[int, int], bytes]:
    butler = Butler(repo, collections=collection)
    return {
        (r.data_id["exposure"], r.data_id["detector"]): butler.get(r)["image"].values.tobytes()
        for r in butler.query_datasets("toy_slow")
    }


@pytest.fixture
def big_repo(tmp_path: Path) -> str:
    root = str(tmp_path / "repo")
    make_toy_repo(root, n_exposures=5, n_detectors=12)  # 60 quanta
    return root


def test_sigkill_a_worker_mid_run(big_repo: str) -> None:
    from lsstlite.pipe.clusters import cluster_client

    pipe = Pipeline.from_tasks([("slow", SlowTask, {"sleep_s": 0.15})])
    killed: list[int] = []
    with cluster_client(n_workers=2) as client:

        def progress(done: int, total: int, outcome: Any) -> None:
            if done == 8 and not killed:
                pids = client.run(os.getpid)
                victim = sorted(pids.values())[0]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        report = run_pipeline(
            big_repo, pipe, inputs="toy/raw", output="u/kill", client=client, progress=progress
        )
    assert killed, "the worker was never killed"
    assert report.ok, report.table()
    assert report.count("succeeded") == 60
    outputs = _slow_outputs(big_repo, "u/kill")
    assert len(outputs) == 60
    butler = Butler(big_repo, collections="u/kill")
    for exposure, detector in [(0, 0), (4, 11), (2, 5)]:
        did = {"instrument": "Toy", "exposure": exposure, "detector": detector}
        np.testing.assert_array_equal(
            butler.get("toy_slow", did)["image"].values,
            butler.get("toy_image", did)["image"].values + np.float32(1),
        )


def test_kill_the_driver_then_resume(big_repo: str, tmp_path: Path) -> None:
    pipe = tmp_path / "slow.yaml"
    pipe.write_text(
        "tasks:\n  slow:\n    class: tests.pipe.toy_tasks.SlowTask\n    config: {sleep_s: 0.15}\n"
    )
    reference = run_pipeline(big_repo, str(pipe), inputs="toy/raw", output="u/ref", n_workers=2)
    assert reference.ok
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [
        sys.executable,
        "-m",
        "lsstlite",
        "run",
        big_repo,
        "-p",
        str(pipe),
        "-i",
        "toy/raw",
        "-o",
        "u/crash",
        "-j",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    n_done = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            try:
                n_done = len(Butler(big_repo).query_datasets("toy_slow", collections=["u/crash"]))
            except Exception:
                n_done = 0
            if n_done >= 10:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local workers die at once
        proc.wait()
    assert 10 <= n_done < 60, f"the driver was not killed mid-run ({n_done} outputs)"
    resumed = subprocess.run(
        [*cmd[:-1], "--skip-existing", "--no-progress"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "skipped" in resumed.stdout
    assert _slow_outputs(big_repo, "u/crash") == _slow_outputs(big_repo, "u/ref")
