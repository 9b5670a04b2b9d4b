"""``lsstlite run``, ``lsstlite qgraph`` and ``lsstlite pipeline show``."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from lsstlite.cli._args import positive_int


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("pipeline", help="inspect pipelines")
    sub = p.add_subparsers(dest="pipeline_command", metavar="SUBCOMMAND", required=True)
    show = sub.add_parser(
        "show", help="print tasks, dataset flow and configs; write the graph as dot/PNG"
    )
    show.add_argument("pipeline", help="PIPELINE.yaml[#subset] (packaged: drp.yaml, calibs.yaml)")
    show.add_argument("--config", metavar="LABEL", help="also dump the full config of LABEL")
    show.add_argument("--dot", metavar="FILE", help="write the task/dataset graph as Graphviz dot")
    show.add_argument("--png", metavar="FILE", help="write the graph as PNG (needs Graphviz's dot)")
    _add_config_option(show)
    show.set_defaults(func=_show)

    for name, helptext in (
        ("run", "build the graph and run it"),
        ("qgraph", "build the graph only and report it"),
    ):
        r = subparsers.add_parser(name, help=helptext)
        r.add_argument("repo", help="repository")
        r.add_argument("-p", "--pipeline", required=True, help="PIPELINE.yaml[#subset]")
        r.add_argument(
            "-i",
            "--input",
            required=True,
            help="input collections, comma-separated, in search order",
        )
        r.add_argument("-o", "--output", required=True, help="output CHAINED collection")
        r.add_argument(
            "-d", "--where", default=None, help="data ID expression selecting the inputs"
        )
        r.add_argument(
            "--skip-existing", action="store_true", help="resume: skip quanta whose outputs exist"
        )
        r.add_argument(
            "--extend-run", action="store_true", help="write into the newest RUN of OUTPUT"
        )
        r.add_argument("--clobber-outputs", action="store_true", help="replace outputs that exist")
        _add_config_option(r)
        if name == "qgraph":
            r.add_argument("--dot", metavar="FILE", help="write the quantum graph as Graphviz dot")
            r.set_defaults(func=_qgraph)
            continue
        r.add_argument(
            "--clobber-config", action="store_true", help="replace a RUN's recorded config"
        )
        r.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
        where = r.add_mutually_exclusive_group()
        where.add_argument(
            "-j",
            "--jobs",
            type=positive_int,
            default=None,
            help="local worker processes (default: all cores)",
        )
        where.add_argument(
            "--address", help="scheduler address of a running Dask cluster (tcp://...)"
        )
        where.add_argument(
            "--slurm",
            nargs="?",
            const="",
            metavar="YAML",
            help="run on SLURM through dask-jobqueue (optional YAML of settings)",
        )
        r.add_argument("--queue", help="SLURM partition")
        r.add_argument("--cores", type=int, help="SLURM cores per job")
        r.add_argument("--memory", help="SLURM memory per job, e.g. 4GB")
        r.add_argument("--walltime", help="SLURM time limit per job, e.g. 01:00:00")
        r.add_argument("--slurm-jobs", type=int, help="number of SLURM jobs")
        r.add_argument("--scheduler-host", help="address the Dask scheduler listens on (SLURM)")
        r.add_argument("--no-progress", action="store_true", help="no progress bar")
        r.set_defaults(func=_run)


def _add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config-override",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE",
        help="override a config value (YAML value), e.g. isr:do_flat=false",
    )


def _overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        label, sep, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not sep or not eq or not key:
            raise ValueError(f"config override {item!r} must look like LABEL:KEY=VALUE")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(
                f"config override {item!r}: the value {value!r} is not valid YAML ({problem})"
            ) from None
        out.setdefault(label, {})[key] = parsed
    return out


def _graph_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options ``run`` and ``qgraph`` share, as keyword arguments of ``prepare_run``."""
    return {
        "repo": args.repo,
        "pipeline": args.pipeline,
        "inputs": args.input.split(","),
        "output": args.output,
        "where": args.where,
        "skip_existing": args.skip_existing,
        "extend_run": args.extend_run,
        "clobber_outputs": args.clobber_outputs,
        "config_overrides": _overrides(args.config_override),
    }


def _show(args: argparse.Namespace) -> int:
    from lsstlite.pipe import load_pipeline

    pipeline = load_pipeline(args.pipeline)
    if args.config_override:
        pipeline = pipeline.with_config(_overrides(args.config_override))
    print(pipeline.describe(config_label=args.config))
    dot = pipeline.to_dot()
    if args.dot:
        Path(args.dot).write_text(dot)
        print(f"wrote {args.dot}")
    if args.png:
        exe = shutil.which("dot")
        if exe is None:
            raise ValueError(
                "--png needs Graphviz's 'dot' program (apt-get install graphviz); --dot works without"
            )
        subprocess.run([exe, "-Tpng", "-o", args.png], input=dot.encode(), check=True)
        print(f"wrote {args.png}")
    return 0


def _qgraph(args: argparse.Namespace) -> int:
    from lsstlite.pipe.run import check_configs, prepare_run

    butler, graph = prepare_run(**_graph_options(args))
    check_configs(butler, graph)  # what `run` would refuse (it can also --clobber-config)
    print(f"{len(graph)} quanta, output run {graph.output_run}")
    print(graph.summary())
    if args.dot:
        Path(args.dot).write_text(graph.to_dot())
        print(f"wrote {args.dot}")
    return 0


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.failed = 0

    def __call__(self, done: int, total: int, outcome: Any) -> None:
        if outcome.status == "failed":
            self.failed += 1
            print(f"\nFAILED {outcome.label} {outcome.data_id}: {outcome.error}", file=sys.stderr)
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "." * (width - filled)
        print(
            f"\r[{bar}] {done}/{total} quanta, {self.failed} failed",
            end="",
            file=sys.stderr,
            flush=True,
        )
        if done == total:
            print(file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from lsstlite.pipe.clusters import SlurmSettings
    from lsstlite.pipe.run import run_pipeline

    slurm = None
    if args.slurm is not None:
        values: dict[str, Any] = {}
        if args.slurm:
            values.update(SlurmSettings.from_yaml(args.slurm).model_dump(exclude_unset=True))
        for key, attr in (
            ("queue", "queue"),
            ("cores", "cores"),
            ("memory", "memory"),
            ("walltime", "walltime"),
            ("jobs", "slurm_jobs"),
            ("scheduler_host", "scheduler_host"),
        ):
            if getattr(args, attr) is not None:
                values[key] = getattr(args, attr)
        slurm = SlurmSettings.model_validate(values)

    def on_graph(graph: Any) -> None:
        print(f"{len(graph)} quanta → run {graph.output_run}")
        print(graph.summary())

    report = run_pipeline(
        **_graph_options(args),
        address=args.address,
        n_workers=args.jobs,
        slurm=slurm,
        clobber_config=args.clobber_config,
        fail_fast=args.fail_fast,
        progress=_Progress(not args.no_progress),
        on_graph=on_graph,
    )
    print(report.table())
    print(f"outputs: collection {args.output} (run {report.output_run})")
    return 0 if report.ok else 1
