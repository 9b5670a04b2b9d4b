"""``lsstlite make-skymap REPO``: build a sky map and store it as the ``skymap`` dataset."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "make-skymap",
        help="build a sky map (discrete: one tract around calexps; rings: whole sky)",
        description=(
            "Build a sky map and write it to the repository as the 'skymap' Json dataset "
            "(data ID {skymap: NAME}). A discrete sky map encloses the calexps selected by "
            "--collections and --where; a rings sky map covers the whole sky."
        ),
    )
    p.add_argument("repo", help="repository root")
    p.add_argument("--name", required=True, help="sky map name (the skymap dimension value)")
    p.add_argument("--kind", choices=["discrete", "rings"], default="discrete")
    p.add_argument("--collections", nargs="+", default=None, help="where calexps are found")
    p.add_argument("--where", default=None, help="expression selecting the calexps")
    p.add_argument("--run", default="skymaps", help="RUN collection to write to")
    p.add_argument("--pixel-scale-arcsec", type=float, default=None)
    p.add_argument("--patch-inner", type=int, default=4000, help="patch inner size (px)")
    p.add_argument("--patch-border", type=int, default=100, help="patch border (px)")
    p.add_argument("--n-rings", type=int, default=120, help="rings: declination rings")
    p.add_argument(
        "--tract-overlap-deg", type=float, default=1.0 / 60.0, help="rings: tract overlap"
    )
    p.add_argument("--replace", action="store_true", help="overwrite an existing sky map")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from lsstlite.repo import Butler
    from lsstlite.stages.skymap.ops import make_skymap

    butler = Butler(args.repo)
    options: dict[str, Any] = {
        "name": args.name,
        "patch_inner": args.patch_inner,
        "patch_border": args.patch_border,
    }
    exposures = []
    if args.kind == "discrete":
        refs = butler.query_datasets("calexp", where=args.where, collections=args.collections)
        assert isinstance(refs, list)
        if not refs:
            print(f"make-skymap: no calexp matches --where {args.where!r} in {args.collections}")
            return 1
        exposures = [butler.get(ref) for ref in refs]
        options["pixel_scale_arcsec"] = args.pixel_scale_arcsec
    else:
        options.update(n_rings=args.n_rings, tract_overlap_deg=args.tract_overlap_deg)
        if args.pixel_scale_arcsec:
            options["pixel_scale_arcsec"] = args.pixel_scale_arcsec
    skymap = make_skymap(args.kind, exposures=exposures, **options)
    butler.put(
        skymap.to_dict(), "skymap", {"skymap": args.name}, run=args.run, replace=args.replace
    )
    print(f"sky map {args.name!r} ({args.kind}): {skymap.n_tracts} tract(s) -> run {args.run!r}")
    return 0
