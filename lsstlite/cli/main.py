"""Entry point of the ``lsstlite`` command.

Each subsystem registers its own sub-commands (``add_commands(subparsers)``); this module
only assembles them, turns user errors into one clear line and exit code 2, and never
shows a traceback for a mistake the user can fix.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

import lsstlite

#: Modules that contribute sub-commands, in the order of the data flow.
_COMMAND_MODULES = (
    "lsstlite.cli.sim",
    "lsstlite.repo.cli",
    "lsstlite.cli.pipe",
    "lsstlite.stages.skymap.cli",
    "lsstlite.stages.coadd.cli",
    "lsstlite.cli.stages",
    "lsstlite.cli.demo",
)


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsstlite",
        description=(
            "Survey image processing from raw frames to multi-band catalogs: "
            "simulate, ingest, process, coadd, measure, export."
        ),
    )
    parser.add_argument("--version", action="version", version=f"lsstlite {lsstlite.__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output (and full tracebacks on errors)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from lsstlite.repo import RepoError

    try:
        result = args.func(args)
    except (
        UserError,
        RepoError,
        ValueError,
        OSError,
        LookupError,
    ) as exc:
        if args.verbose:
            raise
        print(f"lsstlite {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lsstlite {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
