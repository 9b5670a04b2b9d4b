"""Many writers, killed writers, stale locks: no entry is lost, nothing half-visible."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lsstlite.repo import Butler, DatasetNotFoundError

from . import _workers
from .conftest import small_exposure

DID = {"instrument": "SimCam", "exposure": 1, "detector": 0}


def test_many_processes_and_threads_lose_no_entry(repo_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    n_proc, per_proc, n_b = 8, 60, 120
    with ctx.Pool(n_proc + 1) as pool:
        jobs = [
            pool.apply_async(_workers.put_many, (str(repo_path), "A", p * 1000, per_proc, 4, 25))
            for p in range(n_proc)
        ]
        jobs.append(pool.apply_async(_workers.put_many, (str(repo_path), "B", 0, n_b, 3, 25)))
        done = [j.get(timeout=240) for j in jobs]
    assert sum(done) == n_proc * per_proc + n_b
    fresh = Butler(repo_path)
    refs_a = fresh.query_datasets("psf", collections="A")
    refs_b = fresh.query_datasets("psf", collections="B")
    assert len(refs_a) == n_proc * per_proc
    assert len({r.id for r in refs_a}) == n_proc * per_proc
    assert len(refs_b) == n_b
    # compaction happened concurrently at least once, and a final one keeps everything
    assert any(n.endswith(".json") for n in os.listdir(repo_path / "_registry" / "snapshots"))
    assert fresh.compact()
    again = Butler(repo_path)
    assert len(again.query_datasets("psf", collections=["A", "B"], find_first=False)) == (
        n_proc * per_proc + n_b
    )
    assert again.get("psf", instrument="SimCam", exposure=1, detector=7042, collections="A") == {
        "detector": 7042,
        "run": "A",
    }


def test_killed_put_leaves_nothing_visible(repo_path: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = textwrap.dedent(
        f"""
        import time, pathlib
        import numpy as np
        from lsstlite.data import make_exposure
        from lsstlite.repo import Butler, _hooks

        def pause(*args):
            pathlib.Path({str(ready)!r}).write_text("x")
            time.sleep(60)

        _hooks.before_commit = pause
        b = Butler({str(repo_path)!r}, run="demo")
        b.put(make_exposure(np.ones((16, 16), np.float32)), "calexp",
              instrument="SimCam", exposure=1, detector=0)
        """
    )
    observer = Butler(repo_path, collections="demo")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "writer exited early"
            assert time.monotonic() < deadline, "writer never reached the commit point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    ddir = (
        repo_path / "runs" / "demo" / "calexp" / "instrument=SimCam" / "exposure=1" / "detector=0"
    )
    assert (ddir / "image.zarr").exists()  # the payload was written...
    assert not (ddir / "_dataset.json").exists()  # ...but never committed
    assert not observer.exists("calexp", DID)
    assert observer.query_datasets("calexp") == []
    with pytest.raises(DatasetNotFoundError):
        observer.get("calexp", DID)
    # a re-run can put the same dataset
    writer = Butler(repo_path, run="demo")
    ds = small_exposure(5.0)
    writer.put(ds, "calexp", DID)
    assert float(observer.get("calexp", DID)["image"].mean()) == pytest.approx(
        float(ds["image"].mean())
    )


def test_crash_between_metadata_and_registry_is_invisible(butler: Butler) -> None:
    butler.put({"v": 1}, "psf", DID, _defer_registry={})  # registry entry never written
    assert not butler.exists("psf", DID)
    butler.put({"v": 2}, "psf", DID)  # no DatasetExistsError: leftover is replaced
    assert butler.get("psf", DID) == {"v": 2}


def test_stale_compaction_lock_is_recovered(butler: Butler, repo_path: Path) -> None:
    butler.put({"v": 1}, "psf", DID)
    lock = repo_path / "_registry" / "compact.lock"
    lock.write_text(json.dumps({"pid": 999999, "time": 0}))
    assert not butler.registry.compact(blocking=False)  # fresh lock: respected
    old = time.time() - 3600
    os.utime(lock, (old, old))
    assert butler.compact()
    assert not lock.exists()
    assert Butler(repo_path, collections="demo").get("psf", DID) == {"v": 1}


def test_losing_compactor_discards_its_snapshot(butler: Butler, repo_path: Path) -> None:
    """Two compactors from the same generation: the second must not delete entries."""
    butler.put({"v": 1}, "psf", DID)
    reg = butler.registry
    state = reg.refresh(allow_compact=False)
    gen = reg._gen
    assert reg._write_snapshot(gen + 1, dict(state.full))  # someone else wins gen+1
    assert not reg._write_snapshot(gen + 1, dict(state.full))  # we lose: nothing written
    snaps = [n for n in os.listdir(repo_path / "_registry" / "snapshots") if n.endswith(".parquet")]
    assert len(snaps) == 4  # only the winner's four tables
    butler.put({"v": 2}, "psf", {**DID, "detector": 1})
    assert len(Butler(repo_path, collections="demo").query_datasets("psf")) == 2
