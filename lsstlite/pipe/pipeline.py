"""Pipelines in YAML: labels → task class + config overrides, named subsets, imports.

Format::

    description: Data release processing
    imports:
      - location: calibs.yaml        # relative to this file, or a packaged pipeline name
        exclude: [some_label]
    tasks:
      isr:
        class: lsstlite.stages.isr.IsrTask
        config: {do_fringe: false}
      characterize: lsstlite.stages.characterize.CharacterizeTask   # short form
    subsets:
      step1: {subset: [isr, characterize], description: single-frame processing}
      step2: [visit_summary, select_visits]

``PIPELINE.yaml#step1`` selects a subset; ``PIPELINE.yaml#isr,characterize`` picks labels.
A name that is not a file is looked up among the pipelines packaged with lsstlite
(``drp.yaml``, ``calibs.yaml``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lsstlite.pipe.config import ConfigError, apply_overrides
from lsstlite.pipe.task import Connection, Task

__all__ = ["Pipeline", "PipelineError", "TaskSpec", "load_pipeline"]


class PipelineError(ValueError):
    """A pipeline definition is invalid; the message names the file and the label."""


@dataclass(frozen=True)
class TaskSpec:
    """One labelled task of a pipeline: class path and config overrides."""

    label: str
    class_path: str
    config: Mapping[str, Any] = field(default_factory=dict)

    def task_class(self) -> type[Task]:
        module_name, _, attr = self.class_path.rpartition(".")
        if not module_name:
            raise PipelineError(f"{self.label}: class {self.class_path!r} must be a dotted path")
        try:
            module = importlib.import_module(module_name)
            cls = getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise PipelineError(
                f"{self.label}: cannot import task class {self.class_path!r} ({exc})"
            ) from exc
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise PipelineError(f"{self.label}: {self.class_path!r} is not a lsstlite Task")
        return cls

    def make_task(self, overrides: Mapping[str, Any] | None = None) -> Task:
        cls = self.task_class()
        values = apply_overrides(dict(self.config), overrides or {})
        config = cls.ConfigClass.build(values, label=self.label)
        return cls(config, label=self.label)


@dataclass
class Pipeline:
    """An ordered set of labelled tasks plus named subsets."""

    tasks: dict[str, TaskSpec]
    subsets: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    source: str = "<memory>"

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_tasks(
        cls, tasks: Iterable[type[Task] | tuple[str, type[Task], Mapping[str, Any]]]
    ) -> Pipeline:
        """Build in code: task classes, or ``(label, class, config overrides)`` tuples."""
        specs: dict[str, TaskSpec] = {}
        for item in tasks:
            if isinstance(item, tuple):
                label, task_cls, config = item
            else:
                task_cls, config = item, {}
                label = task_cls(label=None).label
            specs[label] = TaskSpec(
                label, f"{task_cls.__module__}.{task_cls.__qualname__}", dict(config)
            )
        return cls(specs)

    def select(self, selector: str | None) -> Pipeline:
        """A sub-pipeline: a subset name or a comma-separated list of labels."""
        if not selector:
            return self
        if selector in self.subsets:
            labels = self.subsets[selector]
        else:
            labels = [s.strip() for s in selector.split(",") if s.strip()]
        unknown = [lbl for lbl in labels if lbl not in self.tasks]
        if unknown:
            raise PipelineError(
                f"{self.source}#{selector}: unknown label(s) {unknown}; subsets: "
                f"{sorted(self.subsets)}, labels: {list(self.tasks)}"
            )
        keep = set(labels)
        return Pipeline(
            {k: v for k, v in self.tasks.items() if k in keep},
            {k: [x for x in v if x in keep] for k, v in self.subsets.items()},
            self.description,
            f"{self.source}#{selector}",
        )

    def with_config(self, overrides: Mapping[str, Mapping[str, Any]]) -> Pipeline:
        """A copy with per-label config overrides (``{"isr": {"do_flat": False}}``)."""
        tasks = dict(self.tasks)
        for label, values in overrides.items():
            if label not in tasks:
                raise PipelineError(
                    f"config override for unknown label {label!r}; labels: {list(tasks)}"
                )
            spec = tasks[label]
            tasks[label] = TaskSpec(
                label, spec.class_path, apply_overrides(dict(spec.config), values)
            )
        return Pipeline(tasks, self.subsets, self.description, self.source)

    # -- use --------------------------------------------------------------------------------
    def make_tasks(self) -> list[Task]:
        """Instantiate every task (validating every config) in dependency order."""
        tasks = [spec.make_task() for spec in self.tasks.values()]
        return _sort_tasks(tasks)

    def dataset_flow(self) -> list[tuple[str, str, str]]:
        """Edges ``(producer label or dataset type, consumer, dataset type)`` for display."""
        tasks = self.make_tasks()
        producers = {c.dataset_type: t.label for t in tasks for c in t.active_outputs().values()}
        edges = []
        for task in tasks:
            for conn in task.active_inputs().values():
                edges.append((producers.get(conn.dataset_type, ""), task.label, conn.dataset_type))
        return edges

    def describe(self, *, config_label: str | None = None) -> str:
        """Text for ``lsstlite pipeline show``: tasks, their connections, and optionally a config."""
        lines = [f"pipeline {self.source}" + (f": {self.description}" if self.description else "")]
        tasks = self.make_tasks()
        for task in tasks:
            lines.append(
                f"  {task.label}  ({type(task).__module__}.{type(task).__name__})"
                f"  dimensions={list(task.dimensions)}"
            )
            for name, conn in task.active_inputs().items():
                lines.append(f"      in  {name}: {_conn_text(conn)}")
            for name, conn in task.active_outputs().items():
                lines.append(f"      out {name}: {_conn_text(conn)}")
        if self.subsets:
            lines.append("subsets:")
            for name, labels in self.subsets.items():
                lines.append(f"  {name}: {', '.join(labels)}")
        if config_label:
            match = [t for t in tasks if t.label == config_label]
            if not match:
                raise PipelineError(
                    f"no label {config_label!r} in {self.source}; labels: {list(self.tasks)}"
                )
            lines.append(f"config of {config_label}:")
            lines.extend("  " + line for line in match[0].config.to_yaml().splitlines())
        return "\n".join(lines)

    def to_dot(self) -> str:
        """Graphviz dot of tasks (boxes) and dataset types (ellipses)."""
        tasks = self.make_tasks()
        out = ["digraph pipeline {", "  rankdir=TB;", '  node [fontname="Helvetica"];']
        seen: set[str] = set()
        for task in tasks:
            out.append(
                f'  "task:{task.label}" [shape=box, style=filled, fillcolor="#cfe2f3", label="{task.label}"];'
            )
            for conn in task.active_inputs().values():
                if conn.dataset_type not in seen:
                    seen.add(conn.dataset_type)
                    out.append(
                        f'  "ds:{conn.dataset_type}" [shape=ellipse, label="{conn.dataset_type}"];'
                    )
                out.append(f'  "ds:{conn.dataset_type}" -> "task:{task.label}";')
            for conn in task.active_outputs().values():
                if conn.dataset_type not in seen:
                    seen.add(conn.dataset_type)
                    out.append(
                        f'  "ds:{conn.dataset_type}" [shape=ellipse, label="{conn.dataset_type}"];'
                    )
                out.append(f'  "task:{task.label}" -> "ds:{conn.dataset_type}";')
        out.append("}")
        return "\n".join(out)


def _conn_text(conn: Connection) -> str:
    flags = [f for f in ("multiple", "prerequisite", "calibration", "optional") if getattr(conn, f)]
    return f"{conn.dataset_type} {list(conn.dimensions)}" + (
        f" [{', '.join(flags)}]" if flags else ""
    )


def _sort_tasks(tasks: list[Task]) -> list[Task]:
    """Topological order by dataset flow; a cycle is a pipeline error."""
    producers: dict[str, str] = {}
    for task in tasks:
        for conn in task.active_outputs().values():
            if conn.dataset_type in producers:
                raise PipelineError(
                    f"dataset type {conn.dataset_type!r} is written by both {producers[conn.dataset_type]!r} "
                    f"and {task.label!r}"
                )
            producers[conn.dataset_type] = task.label
    by_label = {t.label: t for t in tasks}
    deps = {
        t.label: {
            producers[c.dataset_type]
            for c in t.active_inputs().values()
            if c.dataset_type in producers and producers[c.dataset_type] != t.label
        }
        for t in tasks
    }
    for task in tasks:
        for name, conn in task.active_inputs().items():
            if conn.prerequisite and conn.dataset_type in producers:
                raise PipelineError(
                    f"{task.label}.{name}: prerequisite input {conn.dataset_type!r} is produced by "
                    f"{producers[conn.dataset_type]!r} in the same pipeline"
                )
    order: list[Task] = []
    done: set[str] = set()
    while len(order) < len(tasks):
        ready = [lbl for lbl in by_label if lbl not in done and deps[lbl] <= done]
        if not ready:
            cycle = sorted(lbl for lbl in by_label if lbl not in done)
            raise PipelineError(f"the pipeline's dataset flow has a cycle among {cycle}")
        for lbl in ready:
            done.add(lbl)
            order.append(by_label[lbl])
    return order


def _resolve_location(location: str, base: Path | None) -> Path:
    path = Path(location)
    candidates = [path] if path.is_absolute() else [(base / path) if base else path, path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    packaged = resources.files("lsstlite.pipelines").joinpath(path.name)
    if packaged.is_file():
        return Path(str(packaged))
    raise PipelineError(
        f"pipeline file {location!r} not found (looked in {[str(c) for c in candidates]} "
        "and among the pipelines packaged with lsstlite)"
    )


def load_pipeline(uri: str | Path, *, _seen: frozenset[Path] = frozenset()) -> Pipeline:
    """Load ``PATH.yaml`` or ``PATH.yaml#subset`` (or ``#label1,label2``)."""
    text = str(uri)
    location, _, selector = text.partition("#")
    path = _resolve_location(location, None).resolve()
    if path in _seen:
        raise PipelineError(f"{path}: imports itself (cycle through {sorted(map(str, _seen))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: a pipeline must be a YAML mapping")
    unknown = set(data) - {"description", "imports", "tasks", "subsets", "instrument"}
    if unknown:
        raise PipelineError(f"{path}: unknown top-level key(s) {sorted(unknown)}")
    tasks: dict[str, TaskSpec] = {}
    subsets: dict[str, list[str]] = {}
    for item in data.get("imports") or []:
        if isinstance(item, str):
            item = {"location": item}
        sub = load_pipeline(
            str(_resolve_location(item["location"], path.parent)), _seen=_seen | {path}
        )
        exclude = set(item.get("exclude") or [])
        stray = sorted(exclude - set(sub.tasks))
        if stray:
            raise PipelineError(
                f"{path}: imports {item['location']!r} excluding {stray}, which it has no "
                f"task of (its labels: {sorted(sub.tasks)})"
            )
        tasks.update({k: v for k, v in sub.tasks.items() if k not in exclude})
        subsets.update({k: [x for x in v if x not in exclude] for k, v in sub.subsets.items()})
    for label, spec in (data.get("tasks") or {}).items():
        if isinstance(spec, str):
            spec = {"class": spec}
        if not isinstance(spec, dict) or "class" not in spec:
            raise PipelineError(f"{path}: task {label!r} needs a 'class'")
        extra = set(spec) - {"class", "config"}
        if extra:
            raise PipelineError(f"{path}: task {label!r} has unknown key(s) {sorted(extra)}")
        base_config = (
            dict(tasks[label].config)
            if label in tasks and tasks[label].class_path == spec["class"]
            else {}
        )
        tasks[label] = TaskSpec(
            str(label), str(spec["class"]), apply_overrides(base_config, spec.get("config") or {})
        )
    for name, sub_spec in (data.get("subsets") or {}).items():
        labels = sub_spec.get("subset") if isinstance(sub_spec, dict) else sub_spec
        if not isinstance(labels, list):
            raise PipelineError(f"{path}: subset {name!r} must list labels")
        missing = [lbl for lbl in labels if lbl not in tasks]
        if missing:
            raise PipelineError(f"{path}: subset {name!r} names unknown label(s) {missing}")
        subsets[str(name)] = [str(lbl) for lbl in labels]
    pipeline = Pipeline(tasks, subsets, str(data.get("description") or ""), str(path))
    try:
        pipeline.make_tasks()  # validate every class and config now, not at run time
    except ConfigError as exc:
        raise PipelineError(f"{path}: {exc}") from None
    return pipeline.select(selector) if selector else pipeline
