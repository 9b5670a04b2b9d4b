"""Execution: quanta become Dask tasks; each does get → run → put on a worker.

The executor is the only place that computes. A quantum runs in a fresh task object
built from its class path and config (no process-global state on workers), reads its
inputs from the repository, calls ``run``, writes its outputs (replacing any partial
output left by an attempt on a worker that died) and its log. A failure is caught and
reported with the data ID and traceback; its dependents are marked *blocked* without
running; everything else still runs.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lsstlite.pipe.graph import QuantumGraph
from lsstlite.repo import Butler
from lsstlite.repo._dimensions import DIMENSIONS
from lsstlite.repo._errors import DatasetNotFoundError

__all__ = ["QuantumOutcome", "RunReport", "execute_graph", "run_quantum"]

log = logging.getLogger(__name__)

SUCCEEDED, FAILED, BLOCKED, SKIPPED = "succeeded", "failed", "blocked", "skipped"


@dataclass
class QuantumOutcome:
    """What happened to one quantum."""

    key: str
    label: str
    data_id: dict[str, Any]
    status: str
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0


@dataclass
class RunReport:
    """The outcome of a run: per-quantum outcomes and the collections written."""

    output_run: str
    output_collection: str | None
    outcomes: list[QuantumOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def ok(self) -> bool:
        return self.count(FAILED) == 0 and self.count(BLOCKED) == 0

    def table(self) -> str:
        labels = list(dict.fromkeys(o.label for o in self.outcomes))
        head = f"{'task':<24}{'succeeded':>10}{'skipped':>9}{'failed':>8}{'blocked':>9}"
        lines = [head, "-" * len(head)]
        for label in labels:
            mine = [o for o in self.outcomes if o.label == label]
            counts = [
                sum(1 for o in mine if o.status == s) for s in (SUCCEEDED, SKIPPED, FAILED, BLOCKED)
            ]
            lines.append(f"{label:<24}{counts[0]:>10}{counts[1]:>9}{counts[2]:>8}{counts[3]:>9}")
        totals = [self.count(s) for s in (SUCCEEDED, SKIPPED, FAILED, BLOCKED)]
        lines.append(f"{'total':<24}{totals[0]:>10}{totals[1]:>9}{totals[2]:>8}{totals[3]:>9}")
        for o in self.outcomes:
            if o.status == FAILED:
                lines.append(f"FAILED {o.label} {o.data_id}: {o.error}")
        return "\n".join(lines)


class _ThreadLogCapture(logging.Handler):
    """Collect log records emitted by one thread (workers may run several quanta at once)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.thread = threading.get_ident()
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.records.append(
                {
                    "time": record.created,
                    "level": record.levelname,
                    "name": record.name,
                    "message": record.getMessage(),
                }
            )


@contextlib.contextmanager
def _chunk_parallel() -> Iterator[None]:
    """Where a quantum's own Dask graph (a detector's ISR, a patch's coadd) computes.

    On a Dask worker: with the threaded scheduler, inside the worker's process. Sent back
    to the cluster, a quantum's graph would carry its in-memory inputs through the
    scheduler (170 MB for a master bias of the ``ci`` survey) and a quantum waiting for its
    chunks would hold a worker thread they need. Quanta of different data IDs are what
    spreads over the cluster. Elsewhere (a plain call, a notebook) Dask's default applies.
    """
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        yield
        return
    with _threaded_scheduler():
        yield


_THREADED_LOCK = threading.Lock()
_threaded_users = 0
_threaded_previous: Any = None


@contextlib.contextmanager
def _threaded_scheduler() -> Iterator[None]:
    """Dask's ``scheduler="threads"`` while at least one quantum of this process runs.

    Dask's config is one per process, not per thread: with ``dask.config.set`` as each
    quantum's own context, the first of two concurrent quanta on a worker to finish put
    the cluster back as the other's scheduler, which then sent its graph, with the
    calibrations it had persisted in memory, through the scheduler (seen once in CI: an
    11 MB flat graph). Counted instead: set by the first quantum in, restored by the last
    one out.
    """
    import dask

    global _threaded_users, _threaded_previous
    with _THREADED_LOCK:
        if _threaded_users == 0:
            _threaded_previous = dask.config.get("scheduler", None)
            dask.config.set(scheduler="threads")
        _threaded_users += 1
    try:
        yield
    finally:
        with _THREADED_LOCK:
            _threaded_users -= 1
            if _threaded_users == 0:
                if _threaded_previous is None:
                    dask.config.config.pop("scheduler", None)
                else:
                    dask.config.set(scheduler=_threaded_previous)


def _dims_only(data_id: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data_id.items() if k in DIMENSIONS}


def run_quantum(
    repo: str,
    payload: Mapping[str, Any],
    *upstream: QuantumOutcome,
) -> QuantumOutcome:
    """Execute one quantum (called on a Dask worker). Never raises for task errors."""
    label, data_id, key = payload["label"], dict(payload["data_id"]), payload["key"]
    blocked_by = [u for u in upstream if u.status in (FAILED, BLOCKED)]
    if blocked_by:
        first = blocked_by[0]
        return QuantumOutcome(
            key,
            label,
            data_id,
            BLOCKED,
            error=f"upstream {first.label} {first.data_id} {first.status}",
        )
    if payload["skip"]:
        return QuantumOutcome(key, label, data_id, SKIPPED)
    start = time.perf_counter()
    capture = _ThreadLogCapture()
    root_logger = logging.getLogger("lsstlite")
    root_logger.addHandler(capture)
    previous_level = root_logger.level
    if root_logger.level == logging.NOTSET or root_logger.level > logging.INFO:
        root_logger.setLevel(logging.INFO)
    butler = Butler(
        repo,
        collections=[payload["output_run"], *payload["input_collections"]],
        run=payload["output_run"],
    )
    status, error, tb = SUCCEEDED, None, None
    try:
        module_name, _, cls_name = payload["class_path"].rpartition(".")
        task_cls = getattr(importlib.import_module(module_name), cls_name)
        task = task_cls(task_cls.ConfigClass.build(payload["config"], label=label), label=label)
        inputs: dict[str, Any] = {}
        used: dict[str, list[dict[str, Any]]] = {}  # each output's provenance: what was read
        for name, spec in payload["inputs"].items():
            values = []
            for dataset_type, input_id, ref in spec["nodes"]:
                if ref is None:  # made earlier in this run
                    ref = butler.find_dataset(
                        dataset_type, input_id, collections=[payload["output_run"]]
                    )
                    if ref is None:
                        raise DatasetNotFoundError(
                            f"input {name!r}: dataset {dataset_type!r} with data ID "
                            f"{input_id} was not found in run {payload['output_run']!r}"
                        )
                values.append(butler.get(ref))
                used.setdefault(name, []).append(
                    {
                        "dataset_type": ref.dataset_type,
                        "data_id": dict(ref.data_id),
                        "run": ref.run,
                        "id": str(ref.id),
                    }
                )
            inputs[name] = values if spec["multiple"] else (values[0] if values else None)
        if "data_id" in inspect.signature(task.run).parameters:
            # Tasks that need the quantum's coordinates (a patch's geometry) declare it.
            inputs["data_id"] = {**_dims_only(payload["implied"]), **data_id}
        with _chunk_parallel():
            logging.getLogger(f"lsstlite.task.{label}").info("running %s %s", label, data_id)
            result = task.run(**inputs)
            for name, spec in payload["outputs"].items():
                if name not in result:
                    raise KeyError(
                        f"{label}.run() did not return output {name!r} (returned {sorted(result)})"
                    )
                butler.put(
                    result[name],
                    spec["dataset_type"],
                    {**_dims_only(payload["implied"]), **spec["data_id"]},
                    run=payload["output_run"],
                    replace=True,
                    provenance={
                        "task": label,
                        "quantum": key,
                        "config": payload["config"],
                        "inputs": used,
                    },
                )
    except Exception as exc:
        status, error, tb = FAILED, f"{type(exc).__name__}: {exc}", traceback.format_exc()
        logging.getLogger(f"lsstlite.task.{label}").error("%s %s failed: %s", label, data_id, error)
    finally:
        root_logger.removeHandler(capture)
        root_logger.setLevel(previous_level)
    seconds = time.perf_counter() - start
    log_doc = {
        "quantum": key,
        "label": label,
        "data_id": data_id,
        "status": status,
        "seconds": seconds,
        "error": error,
        "traceback": tb,
        "records": capture.records,
        "host": os.uname().nodename,
        "pid": os.getpid(),
    }
    try:
        butler.put(
            log_doc,
            f"{label}_log",
            {**_dims_only(payload["implied"]), **data_id},
            run=payload["output_run"],
            replace=True,
        )
    except Exception as exc:
        log.warning("could not write the log of %s: %s", key, exc)
    return QuantumOutcome(key, label, data_id, status, error, tb, seconds)


def _payload(graph: QuantumGraph, index: int) -> dict[str, Any]:
    q = graph.quanta[index]
    task = graph.tasks[q.label]
    inputs = {}
    active_in = task.active_inputs()
    for name, nodes in q.inputs.items():
        inputs[name] = {
            "multiple": active_in[name].multiple,
            "nodes": [(n.dataset_type, n.data_id, n.ref) for n in nodes],
        }
    outputs = {}
    for name, nodes in q.outputs.items():
        outputs[name] = {"dataset_type": nodes[0].dataset_type, "data_id": nodes[0].data_id}
    return {
        "label": q.label,
        "key": q.key,
        "class_path": f"{type(task).__module__}.{type(task).__name__}",
        "config": task.config.to_dict(),
        "data_id": q.data_id,
        "implied": q.implied,
        "inputs": inputs,
        "outputs": outputs,
        "skip": q.skip,
        "output_run": graph.output_run,
        "input_collections": graph.input_collections,
    }


def execute_graph(
    graph: QuantumGraph,
    repo: str,
    client: Any,
    *,
    fail_fast: bool = False,
    progress: Callable[[int, int, QuantumOutcome], None] | None = None,
    output_collection: str | None = None,
) -> RunReport:
    """Submit every quantum to ``client`` (a ``distributed.Client``) and gather outcomes."""
    from distributed import as_completed

    token = graph.output_run.replace("/", "_")
    futures: dict[int, Any] = {}
    for q in graph.quanta:
        deps = [futures[i] for i in sorted(q.upstream) if i in futures]
        futures[q.index] = client.submit(
            run_quantum,
            repo,
            _payload(graph, q.index),
            *deps,
            key=f"{q.key}-{token}",
            pure=False,
        )
    report = RunReport(graph.output_run, output_collection)
    by_key = {f.key: graph.quanta[i] for i, f in futures.items()}
    done = 0
    for future in as_completed(list(futures.values())):
        q = by_key[future.key]
        try:
            outcome = future.result()
        except Exception as exc:
            outcome = QuantumOutcome(
                q.key, q.label, q.data_id, FAILED, error=f"{type(exc).__name__}: {exc}"
            )
        report.outcomes.append(outcome)
        done += 1
        if progress is not None:
            progress(done, len(futures), outcome)
        if fail_fast and outcome.status == FAILED:
            remaining = [f for f in futures.values() if not f.done()]
            client.cancel(remaining)
            for f in remaining:
                rq = by_key[f.key]
                report.outcomes.append(
                    QuantumOutcome(
                        rq.key,
                        rq.label,
                        rq.data_id,
                        BLOCKED,
                        error="not run: --fail-fast after a failure",
                    )
                )
            break
    order = {q.key: q.index for q in graph.quanta}
    report.outcomes.sort(key=lambda o: order.get(o.key, 0))
    return report
