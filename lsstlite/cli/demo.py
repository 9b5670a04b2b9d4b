"""``lsstlite demo``: the whole flow on the simulated survey."""

from __future__ import annotations

import argparse
from typing import Any

from lsstlite.cli._args import positive_int


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the demo on a simulated survey (resumable)",
        description="Simulate a survey, build a repository, process it and export the results. "
        "Rerunning resumes: finished steps are skipped.",
    )
    p.add_argument("--workdir", default="lsstlite-demo", help="where sim/, repo/ and export/ go")
    p.add_argument("--preset", default="small", choices=["small", "ci", "full"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "-j",
        "--jobs",
        type=positive_int,
        default=None,
        help="worker processes (default: all cores)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from lsstlite.demo import run_demo

    run_demo(args.workdir, preset=args.preset, seed=args.seed, n_workers=args.jobs)
    return 0
