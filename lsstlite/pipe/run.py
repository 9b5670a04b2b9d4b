"""``run_pipeline``: build the graph, record provenance, execute, report.

Output collections follow ``pipetask``: ``OUT`` becomes a CHAINED collection of a new
timestamped RUN ``OUT/<UTC time>`` followed by the inputs. With ``skip_existing`` (or
``extend_run``) the newest RUN of an existing ``OUT`` chain is reused, so a run killed
half-way resumes where it stopped and yields the same datasets as an uninterrupted run.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lsstlite.pipe.clusters import SlurmSettings, cluster_client
from lsstlite.pipe.config import config_diff
from lsstlite.pipe.execute import QuantumOutcome, RunReport, execute_graph
from lsstlite.pipe.graph import QuantumGraph, build_graph, canonical_dims
from lsstlite.pipe.pipeline import Pipeline, load_pipeline
from lsstlite.repo import STANDARD_DATASET_TYPES, Butler, CollectionType, DatasetExistsError
from lsstlite.repo._dataset_types import DatasetType

__all__ = ["ConfigMismatchError", "prepare_run", "run_pipeline", "software_versions"]

log = logging.getLogger(__name__)

_PACKAGES = (
    "lsstlite",
    "numpy",
    "scipy",
    "astropy",
    "xarray",
    "dask",
    "distributed",
    "zarr",
    "sep",
    "pyarrow",
    "pandas",
    "numba",
)


class ConfigMismatchError(ValueError):
    """The output RUN was made with a different config; the message names the keys."""


def software_versions() -> dict[str, str]:
    """Versions of Python and the packages that can change results."""
    out = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _choose_run(butler: Butler, output: str, reuse: bool) -> tuple[str, bool]:
    """The RUN to write to, and whether it already existed."""
    existing = set(butler.query_collections(output))
    if output in existing:
        kind = butler.collection_type(output)
        if kind is not CollectionType.CHAINED:
            raise ValueError(
                f"output collection {output!r} exists and is a {kind.name} collection, not CHAINED"
            )
        if reuse:
            chain = butler.get_chain(output)
            runs = [
                c
                for c in chain
                if butler.collection_type(c) is CollectionType.RUN and c.startswith(output + "/")
            ]
            if runs:
                return runs[0], True
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{output}/{stamp}", False


def _register_types(butler: Butler, graph: QuantumGraph) -> None:
    for label, task in graph.tasks.items():
        for conn in task.active_outputs().values():
            standard = STANDARD_DATASET_TYPES.get(conn.dataset_type)
            butler.register_dataset_type(
                standard
                or DatasetType(
                    conn.dataset_type,
                    canonical_dims(conn.dimensions),
                    conn.storage_class,
                    is_calibration=conn.calibration,
                    doc=conn.doc,
                )
            )
        butler.register_dataset_type(
            DatasetType(
                f"{label}_log",
                canonical_dims(task.dimensions),
                "Json",
                doc=f"log of each {label} quantum",
            )
        )
        butler.register_dataset_type(
            DatasetType(f"{label}_config", (), "Json", doc=f"full config of {label} in this run")
        )
    butler.register_dataset_type(
        DatasetType("packages", (), "Json", doc="software versions of the run")
    )


def _mismatch_error(run: str, mismatches: Sequence[str]) -> ConfigMismatchError:
    return ConfigMismatchError(
        f"run {run!r} was made with a different config ({'; '.join(mismatches)}); "
        "use a new output collection, or --clobber-config to replace it"
    )


def check_configs(butler: Butler, graph: QuantumGraph) -> None:
    """Raise :class:`ConfigMismatchError` if the graph's output RUN holds a config of one
    of its tasks that differs from the task's (what ``run`` refuses, without writing:
    ``lsstlite qgraph``)."""
    run = graph.output_run
    if run not in set(butler.query_collections(run)):
        return
    mismatches = []
    for label, task in graph.tasks.items():
        if not butler.exists(f"{label}_config", {}, collections=[run]):
            continue
        stored = butler.get(f"{label}_config", {}, collections=[run])
        diff = config_diff(stored, task.config.to_dict())
        if diff:
            mismatches.append(f"{label}: " + ", ".join(f"{label}.{k}" for k in diff))
    if mismatches:
        raise _mismatch_error(run, mismatches)


def _record_provenance(butler: Butler, graph: QuantumGraph, run: str, clobber_config: bool) -> None:
    """Write each task's config once per RUN; refuse a different one unless told to clobber.

    ``put`` without ``replace`` is atomic, so when several drivers start at once exactly
    one writes and the others compare against what it wrote.
    """
    mismatches = []
    for label, task in graph.tasks.items():
        config = task.config.to_dict()
        try:
            butler.put(config, f"{label}_config", {}, run=run)
            continue
        except DatasetExistsError:
            pass
        stored = butler.get(f"{label}_config", {}, collections=[run])
        diff = config_diff(stored, config)
        if diff and clobber_config:
            butler.put(config, f"{label}_config", {}, run=run, replace=True)
        elif diff:
            mismatches.append(f"{label}: " + ", ".join(f"{label}.{k}" for k in diff))
    if mismatches:
        raise _mismatch_error(run, mismatches)
    try:
        butler.put(software_versions(), "packages", {}, run=run)
    except DatasetExistsError:
        butler.put(software_versions(), "packages", {}, run=run, replace=True)


def prepare_run(
    repo: str | Path,
    pipeline: str | Pipeline,
    *,
    inputs: Sequence[str],
    output: str,
    where: str | None = None,
    bind: Mapping[str, Any] | None = None,
    skip_existing: bool = False,
    extend_run: bool = False,
    clobber_outputs: bool = False,
    config_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[Butler, QuantumGraph]:
    """Build the graph for a run without executing it (``lsstlite qgraph``)."""
    butler = Butler(str(repo))
    pipe = load_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
    if config_overrides:
        pipe = pipe.with_config(config_overrides)
    run, _ = _choose_run(butler, output, reuse=skip_existing or extend_run)
    inputs = [c for c in inputs if c != output]
    if output in set(butler.query_collections(output)):
        # As with `pipetask -o`: an existing output chain's contents are inputs too, so
        # step2 finds step1's outputs without naming their run.
        inputs += [c for c in butler.get_chain(output) if c not in inputs]
    graph = build_graph(
        butler,
        pipe,
        input_collections=inputs,
        output_run=run,
        where=where,
        bind=bind,
        skip_existing=skip_existing,
        clobber_outputs=clobber_outputs,
    )
    return butler, graph


def run_pipeline(
    repo: str | Path,
    pipeline: str | Pipeline,
    *,
    inputs: Sequence[str] | str,
    output: str,
    where: str | None = None,
    bind: Mapping[str, Any] | None = None,
    client: Any = None,
    address: str | None = None,
    n_workers: int | None = None,
    slurm: SlurmSettings | Mapping[str, Any] | None = None,
    skip_existing: bool = False,
    extend_run: bool = False,
    clobber_outputs: bool = False,
    clobber_config: bool = False,
    fail_fast: bool = False,
    config_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[int, int, QuantumOutcome], None] | None = None,
    on_graph: Callable[[QuantumGraph], None] | None = None,
) -> RunReport:
    """Run a pipeline (or a ``#subset`` of it) on the repository.

    Parameters
    ----------
    repo
        Repository root.
    pipeline
        ``PATH.yaml[#subset]`` or a :class:`~lsstlite.pipe.pipeline.Pipeline`.
    inputs
        Input collections, searched in order.
    output
        Output CHAINED collection (see module notes).
    where, bind
        Expression selecting the input data IDs.
    client, address, n_workers, slurm
        Where to run: a ``distributed.Client``; a scheduler address; a local cluster of
        ``n_workers`` processes (default all cores); or SLURM settings.
    skip_existing, extend_run, clobber_outputs, clobber_config, fail_fast
        As the command line's flags of the same names.
    progress
        Called as ``progress(done, total, outcome)`` after each quantum.
    on_graph
        Called with the graph once it is built (before anything runs).

    Returns
    -------
    RunReport
        Per-quantum outcomes; ``report.ok`` is False if anything failed or was blocked.
    """
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    butler, graph = prepare_run(
        repo,
        pipeline,
        inputs=inputs,
        output=output,
        where=where,
        bind=bind,
        skip_existing=skip_existing,
        extend_run=extend_run,
        clobber_outputs=clobber_outputs,
        config_overrides=config_overrides,
    )
    if on_graph is not None:
        on_graph(graph)
    run = graph.output_run
    _register_types(butler, graph)
    butler.register_run(run)
    _record_provenance(butler, graph, run, clobber_config)
    chain = [run]
    if output in set(butler.query_collections(output)):
        chain += [
            c
            for c in butler.get_chain(output)
            if c not in chain and c not in graph.input_collections
        ]
    # (the inputs of a resumed run include the output's own RUN: listed once)
    butler.set_chain(output, [*chain, *(c for c in graph.input_collections if c not in chain)])
    log.info("running %d quanta into %s", len(graph), run)
    with cluster_client(client=client, address=address, n_workers=n_workers, slurm=slurm) as c:
        return execute_graph(
            graph, str(repo), c, fail_fast=fail_fast, progress=progress, output_collection=output
        )
