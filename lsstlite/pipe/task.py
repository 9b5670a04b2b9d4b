"""Tasks: a frozen config plus a pure ``run(**inputs)`` with declared inputs and outputs.

A task never reads or writes the repository itself: the executor gets the inputs, calls
``run`` and puts the outputs (``runQuantum`` = get → run → put). The names of the declared
inputs are ``run``'s argument names and the names of the declared outputs are the fields of
the result, checked when the class is defined::

    class SumTask(Task):
        ConfigClass = SumConfig
        dimensions = ("instrument", "visit")
        inputs = {"images": Input("post_isr", ("instrument", "exposure", "detector"), multiple=True)}
        outputs = {"total": Output("visit_sum", ("instrument", "visit"), storage_class="Json")}

        def run(self, images):
            return TaskResult(total={"sum": float(sum(im.image.sum() for im in images))})
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lsstlite.pipe.config import Config

__all__ = [
    "Connection",
    "Input",
    "Output",
    "PrerequisiteInput",
    "Task",
    "TaskDefinitionError",
    "TaskResult",
]


class TaskDefinitionError(TypeError):
    """A task class is inconsistent (connections vs ``run`` signature, dimensions...)."""


@dataclass(frozen=True)
class Connection:
    """A dataset a task reads or writes.

    Attributes
    ----------
    dataset_type
        Name of the dataset type in the repository.
    dimensions
        Dimensions of the dataset type's data IDs.
    storage_class
        ``"Exposure"``, ``"Table"``, ``"Json"`` or ``"Raw"`` (how the repository stores it).
    multiple
        The task takes (or makes) a list of datasets per quantum.
    prerequisite
        Input that must exist before the run starts (calibrations, reference catalogs):
        never produced by another task of the pipeline.
    calibration
        Looked up in CALIBRATION collections by the quantum's observation time.
    optional
        The quantum may run without it (``run`` then receives ``None`` / an empty list).
    where
        Expression (repository query syntax) that always restricts this input, e.g.
        ``"exposure.obs_type = 'bias'"`` for the raws a master bias is built from.
    doc
        One line for ``lsstlite pipeline show``.
    """

    dataset_type: str
    dimensions: tuple[str, ...]
    storage_class: str = "Exposure"
    multiple: bool = False
    prerequisite: bool = False
    calibration: bool = False
    optional: bool = False
    where: str | None = None
    doc: str = ""
    is_output: bool = field(default=False, repr=False)


def Input(dataset_type: str, dimensions: tuple[str, ...], **kwargs: Any) -> Connection:
    """An input produced by this pipeline or already in the input collections."""
    return Connection(dataset_type, tuple(dimensions), **kwargs)


def PrerequisiteInput(dataset_type: str, dimensions: tuple[str, ...], **kwargs: Any) -> Connection:
    """An input that must exist in the input collections before the run starts."""
    return Connection(dataset_type, tuple(dimensions), prerequisite=True, **kwargs)


def Output(dataset_type: str, dimensions: tuple[str, ...], **kwargs: Any) -> Connection:
    """A dataset the task writes."""
    return Connection(dataset_type, tuple(dimensions), is_output=True, **kwargs)


class TaskResult(dict[str, Any]):
    """What ``run`` returns: output name → object, readable as attributes too."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Task:
    """Base class of all tasks.

    Subclasses set :attr:`ConfigClass`, :attr:`dimensions` (the quantum's dimensions),
    :attr:`inputs` and :attr:`outputs`, and implement :meth:`run`.
    """

    ConfigClass: ClassVar[type[Config]] = Config
    dimensions: ClassVar[tuple[str, ...]] = ()
    inputs: ClassVar[Mapping[str, Connection]] = {}
    outputs: ClassVar[Mapping[str, Connection]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls) or cls.run is Task.run:
            return
        params = inspect.signature(cls.run).parameters
        names = [n for n in params if n != "self"]
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        missing = [n for n in cls.inputs if n not in params and not has_var_kw]
        extra = [
            n
            for n in names
            if n not in cls.inputs
            and params[n].default is inspect.Parameter.empty
            and params[n].kind
            not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        ]
        if missing or extra:
            raise TaskDefinitionError(
                f"{cls.__name__}: declared inputs {sorted(cls.inputs)} must match run() arguments "
                f"{names}"
                + (f"; not in run(): {missing}" if missing else "")
                + (f"; not declared: {extra}" if extra else "")
            )
        for name, conn in cls.outputs.items():
            if not conn.is_output:
                raise TaskDefinitionError(
                    f"{cls.__name__}.outputs[{name!r}] must be made with Output()"
                )
        for name, conn in cls.inputs.items():
            if conn.is_output:
                raise TaskDefinitionError(
                    f"{cls.__name__}.inputs[{name!r}] is declared with Output()"
                )
        for name, conn in {**cls.inputs, **cls.outputs}.items():
            if not conn.multiple and not set(conn.dimensions) <= set(cls.dimensions) | {
                "instrument"
            }:
                # A single dataset per quantum must be identified by the quantum's data ID;
                # calibrations are the exception (found by time, coarser dimensions).
                if not (set(conn.dimensions) - set(cls.dimensions)) <= _CALIB_FREE_DIMS:
                    raise TaskDefinitionError(
                        f"{cls.__name__}.{name}: dimensions {conn.dimensions} are not covered by "
                        f"the task's dimensions {cls.dimensions}; declare multiple=True"
                    )

    def __init__(
        self, config: Config | Mapping[str, Any] | None = None, *, label: str | None = None
    ) -> None:
        self.label = label or _default_label(type(self))
        if config is None:
            config = self.ConfigClass.build({}, label=self.label)
        elif not isinstance(config, Config):
            config = self.ConfigClass.build(config, label=self.label)
        elif not isinstance(config, self.ConfigClass):
            raise TypeError(
                f"{self.label}: config must be a {self.ConfigClass.__name__}, got {type(config).__name__}"
            )
        self.config = config

    def active_inputs(self) -> dict[str, Connection]:
        """The inputs this configuration needs (override when a config switch drops one)."""
        return dict(self.inputs)

    def active_outputs(self) -> dict[str, Connection]:
        """The outputs this configuration writes."""
        return dict(self.outputs)

    def group_quanta(
        self,
        records: Mapping[str, list[dict[str, Any]]],
        *,
        butler: Any,
        collections: Sequence[str],
    ) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]] | None:
        """Group input datasets into quanta when the standard join cannot.

        The graph builder calls this with, for each regular input, the candidate records
        (dicts of dimension values, implied values such as ``band``, and ``"_ref"`` — the
        existing ``DatasetRef`` — or ``"_producer"`` for predicted datasets). Return
        ``None`` (the default) for the standard join on the task's dimensions, or a list of
        ``(data_id, implied, {input name: [records]})``, e.g. calexps × the patches they
        overlap for a coadd. Runs on the driver at graph-build time and may read the
        repository (``butler``) but must not write.
        """
        return None

    def run(self, *args: Any, **inputs: Any) -> TaskResult:
        """Compute the outputs from the inputs (passed by name). Pure: no I/O, no global state.

        Subclasses declare the inputs as keyword parameters; ``*args, **inputs`` here lets
        each override have its own signature.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(label={self.label!r})"


#: Dimensions a single (non-multiple) input may have beyond the quantum's own: those that
#: calibrations and reference catalogs are keyed by and the graph builder resolves.
_CALIB_FREE_DIMS = frozenset({"physical_filter", "band", "skymap", "day_obs"})


def _default_label(cls: type) -> str:
    name = cls.__name__
    if name.endswith("Task"):
        name = name[:-4]
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
