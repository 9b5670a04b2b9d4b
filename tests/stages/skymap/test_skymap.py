"""Sky maps: discrete and rings geometry, lookup, JSON round trips, the CLI."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import pytest

import lsstlite.data as lld
from lsstlite.data.skymap import SkyMap
from lsstlite.stages.skymap import (
    exposure_corners,
    make_discrete_skymap,
    make_rings_skymap,
    patches_for_exposure,
)


def _exposure(ra: float, dec: float, shape: tuple[int, int] = (400, 300)) -> Any:
    wcs = lld.make_tan_wcs(ra, dec, (shape[1] / 2, shape[0] / 2), 0.2, rotation_deg=15.0)
    return lld.make_exposure(np.zeros(shape, np.float32), wcs=wcs, units="nJy")


def test_discrete_skymap_encloses_exposures() -> None:
    exps = [_exposure(150.0, 2.0), _exposure(150.02, 2.01), _exposure(149.99, 1.99)]
    sm = make_discrete_skymap(exps, name="d", patch_inner=200, patch_border=20)
    tract = sm.tract(0)
    assert tract.pixel_scale_arcsec == pytest.approx(0.2, rel=1e-3)
    for ds in exps:
        ra, dec = exposure_corners(ds)
        x, y = tract.sky_to_pixel(ra, dec)
        b = tract.patch_border
        ny, nx = tract.shape
        assert (
            (x >= b - 0.5).all()
            and (x < nx - b).all()
            and (y >= b - 0.5).all()
            and (y < ny - b).all()
        )
        for r, d in zip(ra, dec, strict=True):
            t, p = sm.find_patch(r, d)
            assert (
                t.id == 0 and p.id == tract.patch_at(*(float(v) for v in t.sky_to_pixel(r, d))).id
            )
    assert SkyMap.from_dict(json.loads(json.dumps(sm.to_dict()))) == sm
    patches = patches_for_exposure(sm, exps[0])
    assert list(patches) == [0] and len(patches[0]) >= 1
    p = patches[0][0]
    assert p.outer_bbox[0] == p.inner_bbox[0] - 20 and p.geometry.shape == (240, 240)


def test_rings_skymap_covers_the_sky() -> None:
    sm = make_rings_skymap(
        name="rings", n_rings=40, pixel_scale_arcsec=5.0, patch_inner=400, patch_border=10
    )
    rng = np.random.default_rng(0)
    ra = rng.uniform(0, 360, 40)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 40)))
    for r, d in zip(ra, dec, strict=True):
        tract = sm.find_tract(float(r), float(d))
        assert tract.contains(float(r), float(d))
    # poles, the equator and the RA wrap
    for r, d in [(0.0, -90.0), (123.0, 89.99), (359.999, 0.0), (0.001, 0.0)]:
        assert sm.find_tract(r, d).contains(r, d)
    # neighbouring tracts overlap by at least tract_overlap_deg
    t = sm.find_tract(10.0, 0.0)
    assert len(sm.find_tracts(t.ra_deg, t.dec_deg + sm._ring_size_deg / 2)) >= 2
    again = SkyMap.from_dict(json.loads(json.dumps(sm.to_dict())))
    assert again == sm and again.tract(t.id) == t


def test_skymap_errors() -> None:
    with pytest.raises(ValueError, match="kind"):
        SkyMap("x", "hexagons", 0.2, 100, 10)
    sm = make_discrete_skymap([_exposure(150.0, 2.0)], name="d", patch_inner=100, patch_border=5)
    with pytest.raises(LookupError, match="no tract"):
        sm.find_tract(10.0, 10.0)
    with pytest.raises(KeyError, match="no patch"):
        sm.tract(0).patch(999)
    with pytest.raises(ValueError, match="not a sky map"):
        SkyMap.from_dict({"kind": "rings"})


def test_make_skymap_cli(tmp_path: Any) -> None:
    from lsstlite.repo import Butler
    from lsstlite.stages.skymap.cli import add_commands

    root = str(tmp_path / "repo")
    butler = Butler.create(root, run="calexps")
    butler.register_exposures(
        [
            {
                "instrument": "Synth",
                "exposure": 1,
                "band": "r",
                "physical_filter": "r",
                "mjd": 60000.0,
                "day_obs": 20230101,
            }
        ]
    )
    butler.put(
        _exposure(150.0, 2.0), "calexp", {"instrument": "Synth", "exposure": 1, "detector": 0}
    )
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(
        [
            "make-skymap",
            root,
            "--name",
            "mine",
            "--collections",
            "calexps",
            "--patch-inner",
            "150",
            "--patch-border",
            "10",
        ]
    )
    assert args.func(args) == 0
    stored = Butler(root).get("skymap", {"skymap": "mine"}, collections=["skymaps"])
    sm = SkyMap.from_dict(stored)
    assert sm.name == "mine" and sm.patch_inner == 150
