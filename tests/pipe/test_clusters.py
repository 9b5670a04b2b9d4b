"""Worker processes start with lsstlite's malloc settings, locally and in SLURM job scripts."""

from __future__ import annotations

import os

import pytest

from lsstlite.pipe.clusters import (
    WORKER_MALLOC_ENV,
    SlurmSettings,
    cluster_client,
    slurm_cluster_kwargs,
)


def _malloc_env() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in WORKER_MALLOC_ENV}


def test_local_workers_get_malloc_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in WORKER_MALLOC_ENV:
        monkeypatch.delenv(k, raising=False)
    with cluster_client(n_workers=1) as client:
        seen = list(client.run(_malloc_env).values())
    assert seen == [WORKER_MALLOC_ENV]


def test_slurm_job_script_exports_malloc_settings() -> None:
    pytest.importorskip("dask_jobqueue")
    from dask_jobqueue import SLURMCluster

    settings = SlurmSettings(queue="test", scheduler_host="127.0.0.1")
    with SLURMCluster(**slurm_cluster_kwargs(settings)) as cluster:
        script = cluster.job_script()
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if "distributed.cli.dask_worker" in line)
    for k, v in WORKER_MALLOC_ENV.items():
        assert lines.index(f"export {k}={v}") < start
