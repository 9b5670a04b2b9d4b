"""Sky correction against a known focal-plane sky: a visit of 2×2 detectors with a
smooth sky gradient and one galaxy larger than the per-detector background mesh."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import sep
import xarray as xr

import lsstlite.data as lld
from lsstlite.data.masks import mask_bits, mask_planes
from lsstlite.stages.coadd.task import sky_corrected
from lsstlite.stages.skycorr import SkyCorrectionTask, fit_sky_model, tangent_plane

SCALE = 0.2  # arcsec / px
NX = NY = 512
RA0, DEC0 = 150.0, 2.0
NOISE = 5.0  # nJy / px
MESH = 64  # the per-detector background mesh (px) that the galaxy is larger than


def _true_sky(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    xi, eta = tangent_plane(ra, dec, RA0, DEC0)
    u, v = xi / 0.06, eta / 0.06  # ~ the focal-plane half width
    return 200.0 + 25.0 * u - 15.0 * v + 10.0 * u * v + 12.0 * v * v


def _galaxy(x: np.ndarray, y: np.ndarray, x0: float, y0: float) -> np.ndarray:
    r = np.hypot(x - x0, y - y0)
    return 40.0 * np.exp(-r / 40.0)  # exponential disc, scale 40 px (8″) » mesh/2


@pytest.fixture(scope="module")
def visit() -> dict[str, object]:
    rng = np.random.default_rng(5)
    calexps, backgrounds, truths = [], [], []
    galaxy_flux = 0.0
    for det, (ix, iy) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        # detectors side by side with 40 px gaps, the boresight at the focal-plane centre
        off = ((ix - 0.5) * (NX + 40), (iy - 0.5) * (NY + 40))
        wcs = lld.make_tan_wcs(RA0, DEC0, (NX / 2 - off[0] - 0.5, NY / 2 - off[1] - 0.5), SCALE)
        yy, xx = np.mgrid[0:NY, 0:NX].astype(float)
        ra, dec = wcs.all_pix2world(xx, yy, 0)
        sky = _true_sky(ra, dec)
        gal = _galaxy(xx, yy, 256.0, 256.0) if det == 0 else np.zeros_like(xx)
        galaxy_flux += float(gal.sum())
        image = (sky + gal + rng.normal(0, NOISE, sky.shape)).astype(np.float32)
        # what characterisation does: a per-detector mesh background, detections masked
        bkg = sep.Background(image, bw=MESH, bh=MESH, fw=3, fh=3)
        back = bkg.back().astype(np.float32)
        exp = lld.make_exposure(
            image - back,
            variance=np.full(image.shape, NOISE**2, np.float32),
            wcs=wcs,
            visit_info={
                "instrument": "SimCam",
                "exposure": 7,
                "visit": 7,
                "detector": det,
                "band": "r",
                "boresight_ra": RA0,
                "boresight_dec": DEC0,
            },
            units="nJy",
            attrs={"calibrate": {"njy_per_count": 1.0}},
        )
        detected = gal > 0.1 * NOISE  # a grown footprint: the disc out to 4.4 scale lengths
        bit = mask_bits(mask_planes(exp), "DETECTED")
        exp["mask"] = exp["mask"] | xr.DataArray(
            np.where(detected, bit, 0).astype(np.int32), dims=("y", "x")
        )
        background = exp.copy()
        background["image"] = (("y", "x"), back)
        calexps.append(exp)
        backgrounds.append(background)
        truths.append(sky)
    return {"calexps": calexps, "backgrounds": backgrounds, "truths": truths, "flux": galaxy_flux}


def test_model_matches_the_true_sky(visit: dict) -> None:
    model = fit_sky_model(visit["calexps"], visit["backgrounds"], bin_px=32, order=2)
    assert model.n_detectors == 4 and model.visit == 7
    for calexp, truth in zip(visit["calexps"], visit["truths"], strict=True):
        yy, xx = np.mgrid[0:NY:16, 0:NX:16].astype(float)
        ra, dec = lld.wcs_from_cards(calexp.attrs["wcs"]).all_pix2world(xx, yy, 0)
        err = model.at_sky(ra, dec) - truth[::16, ::16]
        # the sky is known to 0.05 nJy per pixel from ~1000 superpixels of 1000 px each
        assert np.max(np.abs(err)) < 0.1 * NOISE, np.max(np.abs(err))


def test_galaxy_keeps_its_light(visit: dict) -> None:
    model = (
        SkyCorrectionTask({"bin_px": 32})
        .run(calexps=visit["calexps"], backgrounds=visit["backgrounds"])
        .sky_model
    )
    corrected = sky_corrected(visit["calexps"], visit["backgrounds"], [model])
    r = np.hypot(*np.mgrid[0:NY, 0:NX] - 256.0)
    aperture = r < 240  # nearly all of the disc: 1 - (1 + 6) e^-6 = 98.3%
    true_in = float(
        _galaxy(*np.mgrid[0:NY, 0:NX][::-1].astype(float), 256.0, 256.0)[aperture].sum()
    )
    before = float(visit["calexps"][0]["image"].values[aperture].sum())
    after = float(corrected[0]["image"].values[aperture].sum())
    noise = NOISE * np.sqrt(aperture.sum())
    # The mesh background ate most of the disc (69% here); the focal-plane sky gives back
    # at least 90% of that. What stays lost is the light of the wings outside the
    # detection footprint (r > 175 px, 5% of the disc), which any sky estimate counts as sky.
    lost = true_in - before
    assert lost / true_in > 0.5
    assert (after - before) / lost > 0.9, (after, true_in, before)
    assert abs(after - true_in) < 0.06 * true_in + 5 * noise
    assert corrected[0].attrs["sky_correction"]["restored_background"] is True
    # and the empty detectors stay flat: mean within the noise of their mean
    for exp in corrected[1:]:
        assert abs(float(exp["image"].mean())) < 0.1 * NOISE


def test_missing_pieces_are_named(visit: dict) -> None:
    with pytest.raises(LookupError, match="no background for calexp visit 7 detector 1"):
        sky_corrected(visit["calexps"][:2], visit["backgrounds"][:1], [])
    with pytest.raises(LookupError, match="no sky_model for visit 7"):
        sky_corrected(visit["calexps"][:1], visit["backgrounds"][:1], [])


def test_lazy_equals_eager(visit: dict) -> None:
    from lsstlite.stages.skycorr import apply_sky_model

    model = fit_sky_model(visit["calexps"], visit["backgrounds"], bin_px=32)
    calexp, back = visit["calexps"][1], visit["backgrounds"][1]
    eager = apply_sky_model(calexp, model, back)
    lazy = apply_sky_model(calexp.chunk({"y": 100, "x": 128}), model, back.chunk({"y": 64}))
    assert lazy["image"].chunks == ((100, 100, 100, 100, 100, 12), (128, 128, 128, 128))
    np.testing.assert_array_equal(lazy["image"].values, eager["image"].values)


def test_coadd_with_sky_correction_on_the_demo(demo_run: Any) -> None:
    """step2's sky models, tagged by select-visits, reach the coadd quanta and run."""
    from distributed import Client

    from lsstlite.pipe import Pipeline
    from lsstlite.pipe.run import prepare_run, run_pipeline
    from lsstlite.repo import Butler
    from lsstlite.stages.coadd.task import AssembleCoaddTask

    repo = str(demo_run.repo)
    inputs = ["demo/drp/selected", "skymaps"]
    assert Butler(repo).query_datasets("sky_model", collections=inputs[:1])
    pipe = Pipeline.from_tasks([("assemble_coadd", AssembleCoaddTask, {"do_sky_correction": True})])
    where = "band = 'r' AND detector = 1"
    _, graph = prepare_run(repo, pipe, inputs=inputs, output="u/test/skycorr", where=where)
    for q in graph.quanta:
        n = len(q.inputs["calexps"])
        assert len(q.inputs["backgrounds"]) == n and 1 <= len(q.inputs["sky_models"]) <= n
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        report = run_pipeline(
            repo, pipe, inputs=inputs, output="u/test/skycorr", where=where, client=c
        )
    assert report.ok, report.table()
    butler = Butler(repo)
    for ref in butler.query_datasets("coadd", collections="u/test/skycorr"):
        coadd = butler.get(ref)
        plain = butler.get("coadd", ref.data_id, collections="demo/drp")
        img, ref_img = coadd["image"].values, plain["image"].values
        both = np.isfinite(img) & np.isfinite(ref_img) & (img != 0)
        # same sources, sky level changed by far less than a source
        diff = img[both] - ref_img[both]
        assert abs(float(np.median(diff))) < 0.5 * float(np.nanstd(ref_img[both]))


def test_linear_weights_are_regular_grid_bilinear() -> None:
    from scipy.interpolate import RegularGridInterpolator

    from lsstlite.stages.skycorr.ops import _linear_weights

    gy = np.array([0.0, 32.0, 64.0, 96.0, 99.0])
    gx = np.array([0.0, 32.0, 64.0, 70.0])
    coarse = np.random.default_rng(7).normal(size=(len(gy), len(gx)))
    ys, xs = np.arange(10.0, 100.0), np.arange(0.0, 71.0)
    got = _linear_weights(ys, gy) @ coarse @ _linear_weights(xs, gx).T
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    want = RegularGridInterpolator((gy, gx), coarse)(np.stack([yy.ravel(), xx.ravel()], 1))
    np.testing.assert_allclose(got, want.reshape(got.shape), rtol=0, atol=1e-12)
