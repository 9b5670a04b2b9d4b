"""``lsstlite sim``: write the simulated survey (raws, reference catalog, truth)."""

from __future__ import annotations

import argparse
from typing import Any

from lsstlite.cli._args import positive_int


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sim",
        help="simulate a survey: raw FITS, calibration raws, reference catalog and truth",
        description=(
            "Simulate a small survey in raw form plus its truth. Presets: small (tests, "
            "2 detectors, 2 bands x 3 visits), ci (4 detectors of 2048x4096, 2 bands x 5 "
            "visits), full (8 detectors, 3 bands x 6 visits)."
        ),
    )
    p.add_argument("outdir", help="output directory (created)")
    p.add_argument("--preset", default="small", choices=["small", "ci", "full"])
    p.add_argument("--seed", type=int, default=1, help="random seed (same seed, same bytes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing simulation")
    p.add_argument(
        "-j", "--workers", type=positive_int, default=None, help="worker processes (default: 2)"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from lsstlite.sim import simulate_survey

    summary = simulate_survey(
        args.outdir,
        preset=args.preset,
        seed=args.seed,
        overwrite=args.overwrite,
        n_workers=args.workers,
    )
    print(summary)
    return 0
