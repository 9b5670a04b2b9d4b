"""A real SLURM run: start munge, slurmctld and slurmd on this machine, run through dask-jobqueue.

Runs when the SLURM and munge daemons are installed (``.ci/run`` installs the Debian packages
``slurm-wlm`` and ``munge``); otherwise skipped with that reason. It stops the daemons it started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lsstlite.repo import Butler
from tests.pipe.toy_tasks import make_toy_repo

ROOT = Path(__file__).resolve().parents[2]
DAEMONS = ("slurmctld", "slurmd", "munged")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _munge_running() -> bool:
    unmunge = _which("unmunge")
    munge = _which("munge")
    if not (munge and unmunge):
        return False
    cred = subprocess.run([munge, "-n"], capture_output=True)
    if cred.returncode:
        return False
    return subprocess.run([unmunge], input=cred.stdout, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    missing = [d for d in DAEMONS if _which(d) is None]
    if missing:
        pytest.skip(f"SLURM integration test needs {missing} (Debian packages slurm-wlm and munge)")
    if os.geteuid() != 0:
        pytest.skip("starting slurmd and munged needs root")
    work = tmp_path_factory.mktemp("slurm")
    started: list[subprocess.Popen[bytes]] = []
    if not _munge_running():
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        for d in ("/var/lib/munge", "/var/log/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["mungekey", "--create"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        started.append(
            subprocess.Popen(
                [
                    "runuser",
                    "-u",
                    "munge",
                    "--",
                    _which("munged") or "munged",
                    "--foreground",
                    "--force",
                ],
                start_new_session=True,
            )
        )
        for _ in range(50):
            if _munge_running():
                break
            time.sleep(0.1)
    host = socket.gethostname()
    conf = work / "slurm.conf"
    (work / "state").mkdir()
    (work / "spool").mkdir()
    conf.write_text(f"""ClusterName=lsstlite-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation={work}/state
SlurmdSpoolDir={work}/spool
SlurmctldPidFile={work}/slurmctld.pid
SlurmdPidFile={work}/slurmd.pid
SlurmctldLogFile={work}/slurmctld.log
SlurmdLogFile={work}/slurmd.log
SlurmUser=root
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started.append(
        subprocess.Popen(
            [_which("slurmctld") or "slurmctld", "-D", "-f", str(conf)],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    time.sleep(1.0)
    started.append(
        subprocess.Popen(
            [_which("slurmd") or "slurmd", "-D", "-N", host, "-f", str(conf)],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    sinfo = _which("sinfo") or "sinfo"
    ready = False
    for _ in range(60):
        out = subprocess.run([sinfo, "-h", "-o", "%T"], env=env, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
            ready = True
            break
        time.sleep(0.5)
    try:
        if not ready:
            logs = "".join(p.read_text()[-2000:] for p in work.glob("*.log"))
            pytest.fail(f"SLURM did not come up: {logs}")
        yield env
    finally:
        scancel = _which("scancel")
        if scancel:
            subprocess.run([scancel, "--user", "root"], env=env, capture_output=True)
        for proc in reversed(started):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_run_on_slurm(slurm: dict[str, str], tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    make_toy_repo(repo, n_exposures=2, n_detectors=3)
    pipe = tmp_path / "toy.yaml"
    pipe.write_text(
        "tasks:\n  scale: tests.pipe.toy_tasks.ScaleTask\n  sum: tests.pipe.toy_tasks.SumTask\n"
    )
    env = {**slurm, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [
        sys.executable,
        "-m",
        "lsstlite",
        "run",
        repo,
        "-p",
        str(pipe),
        "-i",
        "toy/raw",
        "-o",
        "u/slurm",
        "--slurm",
        "--queue",
        "test",
        "--cores",
        "1",
        "--memory",
        "1GB",
        "--walltime",
        "00:10:00",
        "--slurm-jobs",
        "2",
        "--scheduler-host",
        "127.0.0.1",
        "--no-progress",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    butler = Butler(repo, collections="u/slurm")
    sums = butler.query_datasets("toy_sum")
    assert len(sums) == 2
    for ref in sums:
        images = [butler.get("toy_image", {**ref.data_id, "detector": d}) for d in range(3)]
        expected = 2.0 * sum(float(im["image"].sum()) for im in images)
        assert butler.get(ref)["sum"] == pytest.approx(expected, rel=1e-6)
    # and the workers really were SLURM jobs on this node
    logs = [butler.get("scale_log", r.data_id) for r in butler.query_datasets("scale_log")]
    assert len(logs) == 6 and all(log["status"] == "succeeded" for log in logs)


def test_slurm_and_local_give_the_same_bytes(slurm: dict[str, str], tmp_path: Path) -> None:
    import numpy as np

    from lsstlite.pipe.pipeline import load_pipeline
    from lsstlite.pipe.run import run_pipeline

    repo = str(tmp_path / "repo")
    make_toy_repo(repo, n_exposures=1, n_detectors=4)
    pipe = tmp_path / "toy.yaml"
    pipe.write_text("tasks:\n  scale: tests.pipe.toy_tasks.ScaleTask\n")
    env = {**slurm, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [
        sys.executable,
        "-m",
        "lsstlite",
        "run",
        repo,
        "-p",
        str(pipe),
        "-i",
        "toy/raw",
        "-o",
        "u/slurm",
        "--slurm",
        "--queue",
        "test",
        "--cores",
        "1",
        "--memory",
        "1GB",
        "--slurm-jobs",
        "1",
        "--scheduler-host",
        "127.0.0.1",
        "--no-progress",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert run_pipeline(
        repo, load_pipeline(str(pipe)), inputs="toy/raw", output="u/local", n_workers=1
    ).ok
    butler = Butler(repo)
    for det in range(4):
        did = {"instrument": "Toy", "exposure": 0, "detector": det}
        a = butler.get("toy_scaled", did, collections="u/slurm")["image"].values
        b = butler.get("toy_scaled", did, collections="u/local")["image"].values
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
        assert np.all(np.isfinite(a))


def test_slurm_notebook(
    slurm: dict[str, str], demo_run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """notebooks/02_slurm.ipynb runs step1 of one detector and band on SLURM jobs."""
    from tests.test_notebooks import NOTEBOOKS, execute_notebook

    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LSSTLITE_DEMO_DIR", str(demo_run.workdir))
    monkeypatch.setenv("LSSTLITE_SCHEDULER_HOST", "127.0.0.1")
    monkeypatch.setenv("SLURM_QUEUE", "test")
    execute_notebook(NOTEBOOKS / "02_slurm.ipynb", tmp_path)
    butler = Butler(str(demo_run.repo), collections="u/notebook/step1")
    calexps = butler.query_datasets("calexp")
    assert len(calexps) == 3 and all(r.data_id["detector"] == 0 for r in calexps)
    logs = [butler.get(r) for r in butler.query_datasets("calibrate_log")]
    assert logs and all(log["status"] == "succeeded" for log in logs)
