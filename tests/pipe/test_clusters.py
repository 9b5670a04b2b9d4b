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


def test_slurm_settings_file_errors_name_the_file(tmp_path) -> None:
    """A settings file with a wrong value or an unknown key, or not YAML: one ValueError
    naming the file and each key."""
    path = tmp_path / "slurm.yaml"
    path.write_text("cores: two\nbogus: 1\n")
    with pytest.raises(ValueError, match=r"slurm\.yaml: cores: .*integer.*; bogus: Extra"):
        SlurmSettings.from_yaml(path)
    path.write_text("cores: [1\n")
    with pytest.raises(ValueError, match=r"slurm\.yaml: not valid YAML"):
        SlurmSettings.from_yaml(path)
    path.write_text("queue: debug\ncores: 4\n")
    assert SlurmSettings.from_yaml(path).cores == 4
