"""Graph building: a pipeline × a repository → quanta (task × data ID), before anything runs.

The builder walks the tasks in dependency order. For each task it finds the data IDs of
its regular inputs (existing datasets in the input collections, filtered by the
where-expression, or outputs predicted for earlier tasks), groups them by the task's
dimensions into quanta, looks up prerequisite inputs (calibrations by the quantum's time,
reference catalogs), and predicts the outputs. Every missing input is collected and
reported at once, by dataset type and data ID, with the collections searched.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lsstlite.pipe.pipeline import Pipeline
from lsstlite.pipe.task import Connection, Task
from lsstlite.repo import Butler, DatasetRef, ExpressionError
from lsstlite.repo._dimensions import ALIASES, DIMENSIONS, STR_DIMENSIONS
from lsstlite.repo._expressions import compile_expression

__all__ = ["DatasetNode", "GraphBuildError", "Quantum", "QuantumGraph", "build_graph"]

#: Values carried along with a quantum's data ID (from exposure records) so that
#: predicted outputs can still be selected by band or time, and calibrations found.
_IMPLIED = ("band", "physical_filter", "day_obs", "mjd")


class GraphBuildError(LookupError):
    """The graph cannot be built; ``problems`` lists every missing or ambiguous input."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def canonical_dims(dims: Iterable[str]) -> tuple[str, ...]:
    """Dimensions with aliases folded (``visit`` → ``exposure``), in canonical order."""
    names = {ALIASES.get(d, d) for d in dims}
    return tuple(d for d in DIMENSIONS if d in names)


def _key(data_id: Mapping[str, Any], dims: Sequence[str]) -> tuple[Any, ...]:
    return tuple(data_id[d] for d in dims)


def _fmt(data_id: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in data_id.items() if k not in ("mjd",)) + "}"


@dataclass
class DatasetNode:
    """An input or output of a quantum: existing (``ref``) or predicted (``producer``)."""

    dataset_type: str
    data_id: dict[str, Any]
    ref: DatasetRef | None = None
    producer: int | None = None


@dataclass
class Quantum:
    """One task on one data ID."""

    index: int
    label: str
    data_id: dict[str, Any]
    implied: dict[str, Any]
    inputs: dict[str, list[DatasetNode]] = field(default_factory=dict)
    outputs: dict[str, list[DatasetNode]] = field(default_factory=dict)
    skip: bool = False

    @property
    def upstream(self) -> set[int]:
        return {
            n.producer for nodes in self.inputs.values() for n in nodes if n.producer is not None
        }

    @property
    def name(self) -> str:
        return f"{self.label} {_fmt(self.data_id)}"

    @property
    def key(self) -> str:
        """A short stable identifier (used for Dask keys and log names)."""
        digest = hashlib.sha1(
            json.dumps([self.label, self.data_id], sort_keys=True).encode()
        ).hexdigest()
        return f"{self.label}-{digest[:12]}"


@dataclass
class QuantumGraph:
    """The quanta of one run, in an order where producers come before consumers."""

    tasks: dict[str, Task]
    quanta: list[Quantum]
    input_collections: list[str]
    output_run: str

    def counts(self) -> dict[str, int]:
        """Number of quanta per task label (skipped ones included)."""
        counter = Counter(q.label for q in self.quanta)
        return {label: counter.get(label, 0) for label in self.tasks}

    def summary(self) -> str:
        lines = [f"{'task':<24}{'quanta':>8}{'to skip':>9}"]
        for label in self.tasks:
            n = sum(1 for q in self.quanta if q.label == label)
            s = sum(1 for q in self.quanta if q.label == label and q.skip)
            lines.append(f"{label:<24}{n:>8}{s:>9}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        """Graphviz dot of the quanta and their dependencies."""
        out = ["digraph quanta {", "  rankdir=TB;", "  node [shape=box, fontname=Helvetica];"]
        for q in self.quanta:
            style = ", style=dashed" if q.skip else ""
            label = (
                q.label
                + "\\n"
                + ", ".join(f"{k}={v}" for k, v in q.data_id.items() if k != "instrument")
            )
            out.append(f'  q{q.index} [label="{label}"{style}];')
        for q in self.quanta:
            for up in sorted(q.upstream):
                out.append(f"  q{up} -> q{q.index};")
        out.append("}")
        return "\n".join(out)

    def __len__(self) -> int:
        return len(self.quanta)


def _names_only(expression: str, dims: Sequence[str]) -> bool:
    """Whether every dimension ``expression`` names is one of ``dims`` (or implied by them).

    Quoted strings are ignored; ``visit`` counts as ``exposure``; band, physical_filter,
    day_obs and mjd are implied by ``exposure``.
    """
    have = set(dims) | (set(_IMPLIED) if "exposure" in dims else set())
    return not (_named_dims(expression) - have)


def _named_dims(expression: str) -> set[str]:
    """The dimensions and implied values (``band``, ``day_obs``...) ``expression`` names."""
    unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "''", expression)
    named = {ALIASES.get(m, m) for m in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", unquoted)}
    return named & (set(DIMENSIONS) | set(_IMPLIED))


_Plan = tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]


def _matching(rows: list[dict[str, Any]], where: str, bind: Mapping[str, Any] | None) -> Any:
    """Which ``rows`` (data IDs with implied values, all with the same keys) satisfy
    ``where``; None if it names something they lack."""
    keys = tuple(k for k in rows[0] if k in DIMENSIONS or k in _IMPLIED)
    if not _names_only(where, keys):
        return None
    spec: dict[str, tuple[str, str]] = {}
    for name in keys:
        kind = "s" if name in STR_DIMENSIONS else "f" if name == "mjd" else "i"
        spec[name] = (name, kind)
        if name in _IMPLIED:
            spec[f"exposure.{name}"] = spec[f"visit.{name}"] = (name, kind)
    try:
        return compile_expression(where, spec, bind)(pd.DataFrame(rows, columns=list(keys)))
    except ExpressionError:
        return None  # an exposure field these data IDs do not carry


def _select_plans(
    plans: list[_Plan], tdims: Sequence[str], where: str, bind: Mapping[str, Any] | None
) -> list[_Plan]:
    """The quantum plans that ``where`` selects: on the quantum's data ID (with its implied
    values) when it names nothing else; otherwise on each input's records joined with the
    quantum's data ID (``tract = 1 AND detector = 2``: the detector-2 inputs of tract 1),
    a quantum left without the records of an input it had being dropped. Quanta of
    exposures are kept as they are: their inputs were selected already."""
    if "exposure" in tdims:
        return plans
    out = []
    for plan_id, implied, inputs in plans:
        base = {**implied, **{d: plan_id[d] for d in tdims}}
        keep = _matching([base], where, bind)
        if keep is not None:
            if keep[0]:
                out.append((plan_id, implied, inputs))
            continue
        selected = {}
        for name, recs in inputs.items():
            rows = [{**base, **rec} for rec in recs]
            hit = _matching(rows, where, bind) if rows else None
            selected[name] = (
                recs if hit is None else [r for r, h in zip(recs, hit, strict=True) if h]
            )
            if recs and not selected[name]:
                break
        else:
            out.append((plan_id, implied, selected))
    return out


def _scalar(value: Any) -> Any:
    """A plain Python value (None for NA), for JSON-able data IDs."""
    if _isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _records_from_frame(
    frame: pd.DataFrame, dims: Sequence[str], refs: Sequence[DatasetRef]
) -> list[dict[str, Any]]:
    """Registry rows → records ``{dims..., implied..., '_ref': ref}``.

    Implied values come from the dataset's own columns, else from its exposure record.
    """
    by_id = {str(r.id): r for r in refs}
    records = []
    for row in frame.to_dict("records"):
        rec: dict[str, Any] = {d: _scalar(row[d]) for d in dims}
        for c in _IMPLIED:
            value = _scalar(row.get(c))
            if value is None:
                value = _scalar(row.get(f"exposure.{c}"))
            if value is not None:
                rec[c] = value
        rec["_ref"] = by_id[str(row["id"])]
        records.append(rec)
    return records


def _isna(v: Any) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _standard_plans(
    label: str,
    tdims: tuple[str, ...],
    per_input: Mapping[str, tuple[tuple[str, ...], list[dict[str, Any]]]],
) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]]:
    """Quanta as the join of the inputs on the task's dimensions.

    The quantum data IDs come from the first input that has every task dimension (as a
    dimension or an implied value); every input's records are matched on the dimensions
    it shares with the task.
    """
    covering = [n for n, (shared, _) in per_input.items() if len(shared) == len(tdims)]
    if not covering:
        raise GraphBuildError(
            f"{label}: no regular input has all of the task's dimensions {list(tdims)}; "
            "such a task must group its quanta itself (Task.group_quanta)"
        )
    quantum_ids: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rec in per_input[covering[0]][1]:
        k = _key(rec, tdims)
        if k not in quantum_ids:
            quantum_ids[k] = {c: rec[c] for c in _IMPLIED if c in rec}
    grouped: dict[str, dict[tuple[Any, ...], list[dict[str, Any]]]] = {}
    for name, (shared, records) in per_input.items():
        g: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for rec in records:
            g[_key(rec, shared)].append(rec)
        grouped[name] = g
    plans = []
    for qkey in sorted(quantum_ids, key=lambda k: tuple(str(v) for v in k)):
        data_id = dict(zip(tdims, qkey, strict=True))
        inputs = {
            name: grouped[name].get(tuple(data_id[d] for d in shared), [])
            for name, (shared, _) in per_input.items()
        }
        plans.append((data_id, quantum_ids[qkey], inputs))
    return plans


def build_graph(
    butler: Butler,
    pipeline: Pipeline,
    *,
    input_collections: Sequence[str],
    output_run: str,
    where: str | None = None,
    bind: Mapping[str, Any] | None = None,
    skip_existing: bool = False,
    clobber_outputs: bool = False,
) -> QuantumGraph:
    """Resolve ``pipeline`` against the repository into a :class:`QuantumGraph`.

    Parameters
    ----------
    butler
        The repository.
    pipeline
        The (possibly subset) pipeline.
    input_collections
        Search path for inputs, prerequisites and calibrations.
    output_run
        RUN collection the outputs go to (existing outputs there are skipped with
        ``skip_existing`` or overwritten with ``clobber_outputs``).
    where
        Expression restricting the existing input datasets the graph starts from.
    bind
        Values for names used in ``where``.

    Raises
    ------
    GraphBuildError
        Listing every missing input / prerequisite / calibration, or outputs that exist
        already when neither ``skip_existing`` nor ``clobber_outputs`` is given.
    """
    tasks = pipeline.make_tasks()
    if where:
        # On its own first: combined with a connection's where as "(user) AND (conn)", a
        # stray parenthesis would balance ("exposure = 1) OR (exposure = 101").
        try:
            compile_expression(where, Butler._expression_columns(), bind)
        except ExpressionError as exc:
            raise GraphBuildError(f"--where {where!r}: {exc}", []) from None
    collections = list(input_collections)
    known_collections = {c for c in butler.query_collections("*")}
    absent = [c for c in collections if c not in known_collections]
    if absent:
        raise GraphBuildError(f"input collection(s) {absent} do not exist in {butler}", [])
    available: dict[str, list[dict[str, Any]]] = {}
    producers = {c.dataset_type for t in tasks for c in t.active_outputs().values()}
    quanta: list[Quantum] = []
    problems: list[str] = []
    existing_outputs: dict[str, set[tuple[Any, ...]]] = {}
    search_text = ", ".join(collections)

    existing: dict[tuple[str, str | None], list[dict[str, Any]]] = {}

    def existing_records(conn: Connection) -> list[dict[str, Any]]:
        """Existing datasets of an input, selected by the user's and the connection's where."""
        dt = conn.dataset_type
        cache_key = (dt, conn.where)
        if cache_key not in existing:
            dims = butler.get_dataset_type(dt).dimensions
            # The user's where constrains the dimensions it names; a dataset without one of
            # them (a per-visit sky model under "detector = 1") is not filtered by it.
            user = where if where and _names_only(where, dims) else None
            clauses = [f"({w})" for w in (user, conn.where) if w]
            expression = " AND ".join(clauses) or None
            try:
                frame = butler.query_datasets(
                    dt, where=expression, bind=bind, collections=collections, as_frame=True
                )
                refs = butler.query_datasets(
                    dt, where=expression, bind=bind, collections=collections
                )
            except ExpressionError as exc:
                raise GraphBuildError(f"where {expression!r} cannot select {dt!r}: {exc}") from None
            assert isinstance(frame, pd.DataFrame) and isinstance(refs, list)
            existing[cache_key] = _records_from_frame(frame, dims, refs)
        return existing[cache_key]

    def outputs_in_run(dt: str, dims: Sequence[str]) -> set[tuple[Any, ...]]:
        if dt not in existing_outputs:
            try:
                refs = butler.query_datasets(dt, collections=[output_run])
            except Exception:
                refs = []
            assert isinstance(refs, list)
            existing_outputs[dt] = {_key(r.data_id, dims) for r in refs}
        return existing_outputs[dt]

    registered = {dt.name for dt in butler.query_dataset_types("*")}
    prereq_index: dict[tuple[str, float | None], dict[tuple[Any, ...], DatasetRef]] = {}
    dims_cache: dict[str, tuple[str, ...]] = {}

    def type_dims(dataset_type: str) -> tuple[str, ...]:
        if dataset_type not in dims_cache:
            dims_cache[dataset_type] = butler.get_dataset_type(dataset_type).dimensions
        return dims_cache[dataset_type]

    def find_prerequisite(
        dataset_type: str, lookup: Mapping[str, Any], mjd: float | None
    ) -> DatasetRef | None:
        """One registry query per (dataset type, observation time), not one per quantum."""
        cache_key = (dataset_type, mjd)
        dims = type_dims(dataset_type)
        if cache_key not in prereq_index:
            refs = butler.query_datasets(dataset_type, collections=collections, mjd=mjd)
            assert isinstance(refs, list)
            prereq_index[cache_key] = {_key(r.data_id, dims): r for r in refs}
        if any(d not in lookup for d in dims):
            return None
        return prereq_index[cache_key].get(_key(lookup, dims))

    for task in tasks:
        for name, conn in task.active_inputs().items():
            if conn.dataset_type not in registered and conn.dataset_type not in producers:
                problems.append(
                    f"{task.label}.{name}: dataset type {conn.dataset_type!r} is not registered "
                    f"in the repository, so no {'calibration' if conn.calibration else 'input'} "
                    f"of that type can exist in collections [{search_text}]"
                )
    if problems:
        raise GraphBuildError("cannot build the graph:\n  " + "\n  ".join(problems), problems)
    if where:
        usable = set(_IMPLIED)
        for task in tasks:
            usable.update(canonical_dims(task.dimensions))
            for conn in task.active_inputs().values():
                usable.update(canonical_dims(type_dims(conn.dataset_type)
                                             if conn.dataset_type in registered
                                             else conn.dimensions))  # fmt: skip
        stray = sorted(_named_dims(where) - usable)
        if stray:
            raise GraphBuildError(
                f"--where {where!r} names {stray}: no task of this pipeline nor any of its "
                f"inputs has that dimension (they have {sorted(usable - set(_IMPLIED))})",
                [],
            )
    unselected: list[str] = []
    for task in tasks:
        tdims = canonical_dims(task.dimensions)
        inputs = {n: c for n, c in task.active_inputs().items()}
        regular = {n: c for n, c in inputs.items() if not c.prerequisite}
        prereq = {n: c for n, c in inputs.items() if c.prerequisite}
        if not regular:
            raise GraphBuildError(f"{task.label}: a task needs at least one non-prerequisite input")
        # 1. records of every regular input, with their projection onto the task dimensions
        per_input: dict[str, tuple[tuple[str, ...], list[dict[str, Any]]]] = {}
        for name, conn in regular.items():
            cdims = canonical_dims(conn.dimensions)
            if conn.dataset_type in producers:
                records = available.get(conn.dataset_type, [])
            else:
                records = existing_records(conn)
            # Implied values (band, physical_filter, day_obs) group as well as dimensions:
            # a flat per physical_filter gathers the raws whose exposure had that filter.
            implied_here = (
                {c for c in _IMPLIED if records and all(c in r for r in records)}
                if "exposure" in cdims
                else set()
            )
            shared = tuple(d for d in tdims if d in cdims or d in implied_here)
            per_input[name] = (shared, records)
        # 2. quantum plans: a task's own spatial/custom grouping, or the standard join
        records_by_name = {name: recs for name, (_, recs) in per_input.items()}
        custom = task.group_quanta(records_by_name, butler=butler, collections=collections)
        plans = custom if custom is not None else _standard_plans(task.label, tdims, per_input)
        if where:
            n_before = len(plans)
            example = {d: plans[0][0][d] for d in tdims} if plans else {}
            plans = _select_plans(plans, tdims, where, bind)
            if n_before and not plans:
                unselected.append(f"{task.label} ({n_before} quanta, e.g. {_fmt(example)})")
        # 3. build each quantum
        for plan_id, implied, plan_inputs in plans:
            data_id = {d: plan_id[d] for d in tdims}
            quantum = Quantum(len(quanta), task.label, data_id, dict(implied))
            ok = True
            for name, conn in regular.items():
                recs = plan_inputs.get(name, [])
                if not recs and not conn.optional:
                    shared = per_input[name][0]
                    want = {d: data_id[d] for d in shared}
                    problems.append(
                        f"{task.label} {_fmt(data_id)}: missing input {conn.dataset_type!r} "
                        f"{_fmt(want)} in collections [{search_text}]"
                    )
                    ok = False
                    continue
                if not conn.multiple and len(recs) > 1:
                    problems.append(
                        f"{task.label} {_fmt(data_id)}: {len(recs)} datasets of "
                        f"{conn.dataset_type!r} match; declare multiple=True or narrow --where"
                    )
                    ok = False
                    continue
                quantum.inputs[name] = [
                    DatasetNode(
                        conn.dataset_type,
                        {d: r[d] for d in canonical_dims(conn.dimensions)},
                        ref=r.get("_ref"),
                        producer=r.get("_producer"),
                    )
                    for r in recs
                ]
            full_id = {**implied, **data_id}
            for name, conn in prereq.items():
                cdims = canonical_dims(conn.dimensions)
                lookup = {d: full_id[d] for d in cdims if d in full_id}
                if len(lookup) < len(cdims):
                    lacking = [d for d in cdims if d not in full_id]
                    problems.append(
                        f"{task.label} {_fmt(data_id)}: cannot look up {conn.dataset_type!r}: "
                        f"the quantum has no value for {lacking}"
                    )
                    ok = False
                    continue
                mjd = implied.get("mjd") if conn.calibration else None
                ref = find_prerequisite(conn.dataset_type, lookup, mjd)
                if ref is None:
                    if conn.optional:
                        quantum.inputs[name] = []
                        continue
                    when = ""
                    if conn.calibration:
                        when = f" valid at MJD {mjd}" + (
                            f" (day_obs {implied['day_obs']})" if "day_obs" in implied else ""
                        )
                    problems.append(
                        f"{task.label} {_fmt(data_id)}: missing {'calibration' if conn.calibration else 'prerequisite'} "
                        f"{conn.dataset_type!r} {_fmt(lookup)}{when} in collections [{search_text}]"
                    )
                    ok = False
                    continue
                quantum.inputs[name] = [DatasetNode(conn.dataset_type, dict(lookup), ref=ref)]
            if not ok:
                # Its outputs are predicted all the same, so that the tasks downstream are
                # checked too: one build reports every problem (a missing reference catalog
                # as well as the calibrations missing upstream of it). The graph is not
                # returned, so nothing refers to this quantum.
                for conn in task.active_outputs().values():
                    out_id = {d: full_id[d] for d in canonical_dims(conn.dimensions)}
                    carried = implied if "exposure" in out_id else {}
                    rec = {**carried, **out_id, "_producer": None}
                    available.setdefault(conn.dataset_type, []).append(rec)
                continue
            outputs_exist = []
            for name, conn in task.active_outputs().items():
                cdims = canonical_dims(conn.dimensions)
                out_id = {d: full_id[d] for d in cdims}
                node = DatasetNode(conn.dataset_type, out_id, producer=quantum.index)
                quantum.outputs[name] = [node]
                outputs_exist.append(
                    _key(out_id, cdims) in outputs_in_run(conn.dataset_type, cdims)
                )
            if outputs_exist and all(outputs_exist) and skip_existing:
                quantum.skip = True
            elif any(outputs_exist) and not clobber_outputs:
                problems.append(
                    f"{task.label} {_fmt(data_id)}: outputs already exist in run {output_run!r}; "
                    "use --skip-existing to resume or --clobber-outputs to replace them"
                )
                continue
            quanta.append(quantum)
            for name, nodes in quantum.outputs.items():
                conn = task.active_outputs()[name]
                # Implied values describe an exposure: only datasets of one exposure carry
                # them (a master bias built from many raws has no band of its own).
                for node in nodes:
                    carried = implied if "exposure" in node.data_id else {}
                    rec = {**carried, **node.data_id, "_producer": quantum.index}
                    available.setdefault(conn.dataset_type, []).append(rec)
        for conn in task.active_outputs().values():
            available.setdefault(conn.dataset_type, [])
    if problems:
        head = f"cannot build the graph: {len(problems)} problem(s)"
        raise GraphBuildError(head + ":\n  " + "\n  ".join(problems), problems)
    if not quanta:
        if unselected:
            raise GraphBuildError(
                f"the graph is empty: --where {where!r} selects none of the quanta of "
                + "; ".join(unselected)
            )
        raise GraphBuildError(
            f"the graph is empty: no input datasets match --where {where!r} in collections "
            f"[{search_text}]"
        )
    return QuantumGraph({t.label: t for t in tasks}, quanta, collections, output_run)
