"""Sub-commands of the processing stages that are not pipeline tasks.

``lsstlite select-visits`` (visit selection into a TAGGED collection, between step2 and
step3) and ``lsstlite export-rgb`` / ``lsstlite export-objects`` (colour pictures of
patches and object tables as Parquet / FITS). ``lsstlite make-skymap`` lives with the sky
map stage (:mod:`lsstlite.stages.skymap.cli`).
"""

from __future__ import annotations

import argparse
from typing import Any


def _collections(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "select-visits",
        help="select good detectors/visits from visit_summary into a TAGGED collection",
        description=(
            "Apply quality cuts to the visit_summary tables of COLLECTIONS and tag the "
            "calexp and src of the good detectors of good visits into TAGGED, the input "
            "of step3. Prints why each rejected detector failed."
        ),
    )
    p.add_argument("repo")
    p.add_argument("--collections", required=True, help="where visit_summary is (comma list)")
    p.add_argument("--tagged", required=True, help="TAGGED collection to create or extend")
    p.add_argument("--max-fwhm-arcsec", type=float, default=1.2)
    p.add_argument("--max-ellipticity", type=float, default=0.13)
    p.add_argument("--min-ref-matched", type=int, default=5)
    p.add_argument("--min-good-detectors", type=int, default=1)
    p.add_argument("--plot", metavar="PNG", help="focal-plane plot of FWHM and ellipticity")
    p.set_defaults(func=_select_visits)

    p = subparsers.add_parser(
        "export-rgb",
        help="colour PNG of patches from three bands (Lupton et al. 2004 asinh stretch)",
    )
    p.add_argument("repo")
    p.add_argument("--collections", required=True)
    p.add_argument("--rgb", required=True, help="bands, e.g. g,r,i (two suffice)")
    p.add_argument("--skymap", required=True)
    p.add_argument("--tract", type=int, required=True)
    p.add_argument("--patch", type=int, action="append", help="patch (repeat; default all)")
    p.add_argument("--to", required=True, metavar="DIR")
    p.add_argument("--stretch", type=float, default=None, help="asinh stretch (nJy)")
    p.add_argument("--q", type=float, default=8.0, help="asinh softening Q")
    p.set_defaults(func=export_rgb_command)

    p = subparsers.add_parser("export-objects", help="object tables as Parquet and/or FITS")
    p.add_argument("repo")
    p.add_argument("--collections", required=True)
    p.add_argument("--to", required=True, metavar="DIR")
    p.add_argument("--format", action="append", choices=["parquet", "fits"], default=None)
    p.set_defaults(func=_export_objects)


def _select_visits(args: argparse.Namespace) -> int:
    from lsstlite.stages.quality import select_visits_cli

    print(
        select_visits_cli(
            args.repo,
            _collections(args.collections),
            args.tagged,
            plot=args.plot,
            max_fwhm_arcsec=args.max_fwhm_arcsec,
            max_ellipticity=args.max_ellipticity,
            min_ref_matched=args.min_ref_matched,
            min_good_detectors=args.min_good_detectors,
        )
    )
    return 0


def export_rgb_command(args: argparse.Namespace) -> int:
    """``lsstlite export-rgb`` (also ``lsstlite export --rgb``)."""
    from pathlib import Path

    from lsstlite.repo import Butler
    from lsstlite.stages.export.ops import export_rgb

    if not args.skymap or args.tract is None:
        raise ValueError("colour pictures need --skymap and --tract (and optionally --patch)")
    butler = Butler(args.repo)
    cols = _collections(args.collections)
    patches = args.patch
    if not patches:
        refs = butler.query_datasets(
            "coadd",
            where=f"skymap = '{args.skymap}' AND tract = {args.tract}",
            collections=cols,
        )
        assert isinstance(refs, list)
        patches = sorted({int(r.data_id["patch"]) for r in refs})
    if not patches:
        print(f"export-rgb: no coadd of skymap {args.skymap!r} tract {args.tract} in {cols}")
        return 1
    options: dict[str, Any] = {"q": args.q}
    if args.stretch is not None:
        options["stretch"] = args.stretch
    for patch in patches:
        path = Path(args.to) / f"color_{args.skymap}_tract{args.tract}_patch{patch}.png"
        export_rgb(
            butler, cols, args.skymap, args.tract, patch, _collections(args.rgb), path, **options
        )
        print(path)
    return 0


def _export_objects(args: argparse.Namespace) -> int:
    from lsstlite.repo import Butler
    from lsstlite.stages.export.ops import export_object_table

    written = export_object_table(
        Butler(args.repo),
        _collections(args.collections),
        args.to,
        formats=tuple(args.format or ("parquet", "fits")),
    )
    for path in written:
        print(path)
    return 0
