"""Command-line front end of the repository layer.

``add_commands(subparsers)`` registers::

    repo create REPO
    ingest REPO PATH... [--transfer MODE] [--quarantine DIR] [--run RUN]
    ingest-refcat REPO FILE --name NAME
    certify REPO --input-run RUN --collection COLL [--begin-date T] [--end-date T]
    query collections REPO [GLOB]
    query datasets REPO [TYPE] --collections C [--where EXPR] [--format table|json]
    query provenance REPO TYPE --collections C [--where EXPR] [--format text|json]
    remove-runs REPO RUN...
    export REPO --collections C --dataset-type T [--where EXPR] --to DIR

Handlers print one clear line and return exit code 2 on user errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import RepoError
from ._storage import TRANSFER_MODES

__all__ = ["add_commands", "main"]

Handler = Callable[[argparse.Namespace], int]


def _guard(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (RepoError, ValueError, LookupError, OSError, TypeError) as exc:
            command = getattr(args, "command", None) or "lsstlite"
            text = str(exc)
            print(f"lsstlite {command}: error: {text}", file=sys.stderr)
            return 2

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _collections(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


@_guard
def _repo_create(args: argparse.Namespace) -> int:
    from ._butler import Butler

    Butler.create(args.repo)
    print(f"created repository {args.repo}")
    return 0


@_guard
def _ingest(args: argparse.Namespace) -> int:
    from ._butler import Butler
    from .ingest import ingest_raws

    butler = Butler(args.repo)
    report = ingest_raws(
        butler, args.paths, transfer=args.transfer, run=args.run, quarantine=args.quarantine
    )
    print(report)
    return 1 if report.failed else 0


@_guard
def _ingest_refcat(args: argparse.Namespace) -> int:
    from ._butler import Butler
    from .ingest import ingest_refcat

    ref = ingest_refcat(Butler(args.repo), args.file, args.name)
    print(f"ingested reference catalog {args.name!r} into run {ref.run!r}")
    return 0


@_guard
def _certify(args: argparse.Namespace) -> int:
    from ._butler import Butler
    from .ingest import certify

    refs = certify(
        Butler(args.repo),
        args.input_run,
        args.collection,
        args.begin_date,
        args.end_date,
        dataset_types=args.dataset_type or None,
    )
    print(f"certified {len(refs)} datasets from {args.input_run!r} in {args.collection!r}")
    return 0


@_guard
def _query_collections(args: argparse.Namespace) -> int:
    from ._butler import Butler

    butler = Butler(args.repo)
    for name in butler.query_collections(args.glob):
        rec = butler._collections.get(name)
        children = f"  [{', '.join(rec.children)}]" if rec.children else ""
        print(f"{name}  {rec.type.value}{children}")
    return 0


@_guard
def _query_provenance(args: argparse.Namespace) -> int:
    from ._butler import Butler

    butler = Butler(args.repo)
    refs = butler.query_datasets(
        args.dataset_type,
        args.where,
        collections=_collections(args.collections) if args.collections else None,
    )
    assert isinstance(refs, list)
    if not refs:
        raise LookupError(
            f"no {args.dataset_type!r} datasets match"
            + (f" {args.where!r}" if args.where else "")
            + (f" in {args.collections}" if args.collections else "")
        )
    docs = []
    for r in refs:
        meta = butler.get_metadata(r)
        docs.append(
            {
                "dataset_type": r.dataset_type,
                "data_id": r.data_id.to_dict(),
                "run": r.run,
                "id": str(r.id),
                "created": meta.get("created"),
                "provenance": meta.get("provenance", {}),
                "software": meta.get("software", {}),
            }
        )
    if args.format == "json":
        print(json.dumps(docs, indent=1, default=str))
        return 0
    for d in docs:
        did = " ".join(f"{k}={v}" for k, v in d["data_id"].items())
        prov = d["provenance"]
        print(f"{d['dataset_type']} {did}  (run {d['run']}, id {d['id'][:8]}, {d['created']})")
        if prov.get("task"):
            print(f"  made by task {prov['task']!r}")
        for name, used in (prov.get("inputs") or {}).items():
            for u in used:
                uid = " ".join(f"{k}={v}" for k, v in u["data_id"].items())
                print(f"  {name}: {u['dataset_type']} {uid}  (run {u['run']}, id {u['id'][:8]})")
        for key, value in prov.items():
            if key not in ("task", "quantum", "config", "inputs"):
                print(f"  {key}: {value}")
        if not prov:
            print("  (no provenance recorded: written outside a pipeline)")
    return 0


@_guard
def _query_datasets(args: argparse.Namespace) -> int:
    from ._butler import Butler

    butler = Butler(args.repo)
    refs = butler.query_datasets(
        args.dataset_type or None,
        args.where,
        collections=_collections(args.collections) if args.collections else None,
    )
    assert isinstance(refs, list)
    if args.format == "json":
        rows: list[dict[str, Any]] = [
            {
                "dataset_type": r.dataset_type,
                "data_id": r.data_id.to_dict(),
                "run": r.run,
                "id": str(r.id),
                "path": butler.get_uri(r),
            }
            for r in refs
        ]
        print(json.dumps(rows, indent=1))
        return 0
    header = ("type", "run", "id", "data ID")
    lines = [
        (r.dataset_type, r.run, str(r.id)[:8], " ".join(f"{k}={v}" for k, v in r.data_id.items()))
        for r in refs
    ]
    widths = [
        max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(header)
    ]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for line in lines:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    return 0


@_guard
def _remove_runs(args: argparse.Namespace) -> int:
    from ._butler import Butler

    Butler(args.repo).remove_runs(args.runs)
    print(f"removed {len(args.runs)} run(s)")
    return 0


@_guard
def _export(args: argparse.Namespace) -> int:
    from ._butler import Butler
    from ._export import export

    if args.rgb:
        # colour pictures of patches (lsstlite.stages.export)
        from lsstlite.cli.stages import export_rgb_command

        return export_rgb_command(args)
    if not args.dataset_type:
        raise ValueError("export needs --dataset-type (or --rgb BANDS for colour pictures)")
    if args.dataset_type == "object" and args.format:
        from lsstlite.stages.export.ops import export_object_table

        written = export_object_table(
            Butler(args.repo), _collections(args.collections), args.to, formats=args.format
        )
    else:
        written = export(
            Butler(args.repo),
            _collections(args.collections),
            args.dataset_type,
            args.where,
            args.to,
            overwrite=args.overwrite,
            threads=args.threads,
        )
    print(f"exported {len(written)} file(s) to {args.to}")
    return 0


def add_commands(subparsers: Any) -> None:
    """Register the repository sub-commands on an argparse ``subparsers`` object."""
    p = subparsers.add_parser("repo", help="manage repositories")
    sub = p.add_subparsers(dest="repo_command", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="create a new repository")
    c.add_argument("repo")
    c.set_defaults(func=_repo_create)

    p = subparsers.add_parser("ingest", help="ingest raw FITS files")
    p.add_argument("repo")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories")
    p.add_argument("--transfer", choices=TRANSFER_MODES, default="link")
    p.add_argument("--quarantine", metavar="DIR", help="move unreadable files here")
    p.add_argument("--run", help="RUN collection (default <instrument>/raw/all)")
    p.set_defaults(func=_ingest)

    p = subparsers.add_parser("ingest-refcat", help="ingest a reference catalog")
    p.add_argument("repo")
    p.add_argument("file", help="Parquet or FITS table")
    p.add_argument("--name", required=True)
    p.set_defaults(func=_ingest_refcat)

    p = subparsers.add_parser("certify", help="certify calibrations for a validity range")
    p.add_argument("repo")
    p.add_argument("--input-run", required=True)
    p.add_argument("--collection", required=True, help="CALIBRATION collection")
    p.add_argument("--begin-date", default=None, help="ISO date/time or MJD (default: unbounded)")
    p.add_argument("--end-date", default=None, help="ISO date/time or MJD (default: unbounded)")
    p.add_argument("--dataset-type", action="append", help="restrict to these types")
    p.set_defaults(func=_certify)

    p = subparsers.add_parser("query", help="query collections or datasets")
    sub = p.add_subparsers(dest="query_command", metavar="WHAT", required=True)
    c = sub.add_parser("collections", help="list collections")
    c.add_argument("repo")
    c.add_argument("glob", nargs="?", default="*")
    c.set_defaults(func=_query_collections)
    c = sub.add_parser("datasets", help="list datasets")
    c.add_argument("repo")
    c.add_argument("dataset_type", nargs="?", metavar="TYPE")
    c.add_argument("--collections", help="comma-separated search path (default: all runs)")
    c.add_argument("--where", default=None, help="expression, e.g. \"band='r' AND visit > 3\"")
    c.add_argument("--format", choices=("table", "json"), default="table")
    c.set_defaults(func=_query_datasets)
    c = sub.add_parser(
        "provenance", help="what made each dataset: task, config, and the datasets it read"
    )
    c.add_argument("repo")
    c.add_argument("dataset_type", metavar="TYPE")
    c.add_argument("--collections", help="comma-separated search path (default: all runs)")
    c.add_argument("--where", default=None, help='expression, e.g. "exposure = 3"')
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.set_defaults(func=_query_provenance)

    p = subparsers.add_parser("remove-runs", help="delete RUN collections and their files")
    p.add_argument("repo")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.set_defaults(func=_remove_runs)

    p = subparsers.add_parser(
        "export",
        help="export datasets to FITS / Parquet / JSON, or colour PNGs of patches (--rgb)",
    )
    p.add_argument("repo")
    p.add_argument("--collections", required=True)
    p.add_argument("--dataset-type", help="images → FITS, tables → Parquet, JSON → .json")
    p.add_argument("--where", default=None)
    p.add_argument("--to", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--threads", type=int, default=2, help="files written at once (default 2)")
    p.add_argument(
        "--format",
        action="append",
        choices=["parquet", "fits"],
        help="object tables: Parquet and/or FITS (repeat)",
    )
    p.add_argument("--rgb", metavar="BANDS", help="colour PNG of patches, e.g. g,r,i")
    p.add_argument("--skymap", help="--rgb: the sky map")
    p.add_argument("--tract", type=int, help="--rgb: the tract")
    p.add_argument("--patch", type=int, action="append", help="--rgb: patch (default all)")
    p.add_argument("--stretch", type=float, default=None, help="--rgb: asinh stretch (nJy)")
    p.add_argument("--q", type=float, default=8.0, help="--rgb: asinh softening Q")
    p.set_defaults(func=_export)


def main(argv: Sequence[str] | None = None) -> int:
    """Run only the repository commands (for tests and benchmarks)."""
    parser = argparse.ArgumentParser(prog="lsstlite")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_commands(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
