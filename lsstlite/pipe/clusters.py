"""Where quanta run: a local cluster, an existing scheduler, or SLURM via dask-jobqueue.

The same pipeline gives the same bytes on each: tasks are pure and single-threaded
numerics are used inside quanta, so only *where* changes, never *what*.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "WORKER_MALLOC_ENV",
    "SlurmSettings",
    "cluster_client",
    "local_cluster",
    "slurm_cluster_kwargs",
]

#: glibc ``malloc`` settings of the worker processes (see ``docs/design/execution.md``).
#: Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` so that freed memory goes back to
#: the OS at once; setting it also pins glibc's mmap threshold at 128 KiB, so every array
#: above that is a fresh ``mmap`` whose pages fault in one by one, then unmapped when
#: freed. Image processing allocates such temporaries constantly: one ``assemble_coadd``
#: quantum of the ``ci`` survey took 9.6 M page faults and 38–40 s of kernel time (wall
#: 51–63 s) against 0.17 M and 3–4 s (wall 29–32 s) with these values, which keep blocks
#: up to 32 MiB in the heap for reuse and still return free memory above 128 MiB.
WORKER_MALLOC_ENV: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(128 << 20),
}


def local_cluster(n_workers: int | None = None, **kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` of single-threaded worker processes started with
    :data:`WORKER_MALLOC_ENV` (values the user exported win)."""
    import dask
    from distributed import LocalCluster

    environ = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_MALLOC_ENV.items()}
    with dask.config.set(environ):
        return LocalCluster(
            n_workers=n_workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            **kwargs,
        )


class SlurmSettings(BaseModel):
    """Settings of a SLURM-backed Dask cluster (CLI ``--slurm ...`` or a YAML file of these keys)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue: str | None = Field(None, description="SLURM partition")
    account: str | None = None
    cores: int = Field(1, ge=1, description="cores per job")
    processes: int = Field(1, ge=1, description="Dask worker processes per job")
    memory: str = Field("4GB", description="memory per job")
    walltime: str = Field("01:00:00", description="job time limit")
    jobs: int = Field(2, ge=1, description="number of jobs to start")
    scheduler_host: str | None = Field(
        None,
        description="address the Dask scheduler listens on (default: this host's; "
        "127.0.0.1 for a single-machine cluster)",
    )
    log_directory: str | None = None
    python: str | None = Field(None, description="python on the compute nodes (default: this one)")
    job_extra_directives: list[str] = Field(default_factory=list)
    worker_timeout_s: float = Field(300.0, description="how long to wait for the first worker")

    @classmethod
    def from_yaml(cls, path: str | Path) -> SlurmSettings:
        """Settings from a YAML mapping; a ValueError naming the file and the keys that
        are wrong otherwise."""
        from pydantic import ValidationError

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"SLURM settings {path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"SLURM settings {path}: expected a mapping of settings")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            wrong = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"SLURM settings {path}: {wrong}") from None


def slurm_cluster_kwargs(s: SlurmSettings) -> dict[str, Any]:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for these settings."""
    kwargs: dict[str, Any] = {
        "cores": s.cores,
        "processes": s.processes,
        "memory": s.memory,
        "walltime": s.walltime,
        "queue": s.queue,
        "account": s.account,
        "job_extra_directives": list(s.job_extra_directives),
        # exported before the worker starts (dask's own setting would otherwise apply)
        "job_script_prologue": [f"export {k}={v}" for k, v in WORKER_MALLOC_ENV.items()],
    }
    if s.scheduler_host:
        kwargs["scheduler_options"] = {"host": s.scheduler_host}
    if s.log_directory:
        kwargs["log_directory"] = s.log_directory
    if s.python:
        kwargs["python"] = s.python
    return kwargs


@contextlib.contextmanager
def cluster_client(
    *,
    client: Any = None,
    address: str | None = None,
    n_workers: int | None = None,
    slurm: SlurmSettings | Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """Yield a ``distributed.Client``: the given one, one connected to ``address``, a
    SLURM cluster, or a local cluster of ``n_workers`` single-threaded processes."""
    from distributed import Client

    if client is not None:
        yield client
        return
    if address is not None:
        with Client(address) as c:
            yield c
        return
    if slurm is not None:
        from dask_jobqueue import SLURMCluster

        s = slurm if isinstance(slurm, SlurmSettings) else SlurmSettings.model_validate(dict(slurm))
        with SLURMCluster(**slurm_cluster_kwargs(s)) as cluster:
            cluster.scale(jobs=s.jobs)
            with Client(cluster) as c:
                c.wait_for_workers(1, timeout=s.worker_timeout_s)
                yield c
        return
    with (
        local_cluster(n_workers, host="127.0.0.1", dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        yield c
