"""Warping: accuracy of the mapping, round trips, flux, variance, masks, laziness."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import lsstlite.data as lld
from lsstlite.data.skymap import PatchGeometry
from lsstlite.data.wcs import wcs_from_cards, wcs_to_cards
from lsstlite.stages.warp import WarpError, psf_match_warp, warp_exposure
from lsstlite.stages.warp._kernels import interpolate_grid
from lsstlite.stages.warp.ops import map_block
from lsstlite.stages.warp.psf import adaptive_moments, moments_summary
from tests.stages._calexps import make_sim_calexp


@pytest.fixture(scope="module")
def sim_calexp(sim_small: Any) -> Any:
    return make_sim_calexp(sim_small.outdir, 101, 0, artifacts=False)


def _shifted(cards: dict[str, Any], dx: float, dy: float) -> dict[str, Any]:
    out = dict(cards)
    out["CRPIX1"] += dx
    out["CRPIX2"] += dy
    return out


def test_interpolated_mapping_matches_exact_wcs(sim_calexp: Any) -> None:
    """TAN-SIP detector → rotated TAN patch: the interpolated map is within 0.001 px."""
    ds = sim_calexp.calexp
    wcs_in = wcs_from_cards(ds.attrs["wcs"])
    out = lld.make_tan_wcs(150.0, 2.0, (700.0, 700.0), 0.2, rotation_deg=20.0)
    box = (600, 500, 1112, 1012)
    m = map_block(out, wcs_in, box, (0, 0, 512, 1024), step=16)
    yy, xx = np.mgrid[box[1] : box[3], box[0] : box[2]].astype(np.float64)
    xi, yi = interpolate_grid(m.gx, m.gy, m.grid_x0, m.grid_y0, m.step, xx.ravel(), yy.ravel())
    ra, dec = out.all_pix2world(xx.ravel(), yy.ravel(), 0)
    xe, ye = wcs_in.all_world2pix(ra, dec, 0, tolerance=1e-10, maxiter=100)
    assert np.max(np.hypot(xi - xe, yi - ye)) < 1e-3


def test_round_trip_flux_and_residual(sim_calexp: Any) -> None:
    ds = sim_calexp.variant("noiseless")
    cards = ds.attrs["wcs"]
    there = PatchGeometry(_shifted(cards, 0.37, -0.41), (1024, 512))
    warp = warp_exposure(ds, there, chunks=(256, 200)).compute()
    back = warp_exposure(warp, PatchGeometry(cards, (1024, 512)))
    back = back.compute()
    sigma = np.sqrt(sim_calexp.calexp["variance"].values)
    inner = (slice(16, -16), slice(16, -16))
    resid = (back["image"].values - ds["image"].values)[inner] / sigma[inner]
    # Lanczos3 is not a perfect interpolator: its error scales with the signal, so the
    # cores of the brightest stars (peak S/N > 1000) show up to ~1% of their peak. Over
    # the image the residual is below 1% of the noise.
    assert np.percentile(np.abs(resid), 95) < 0.01
    peak = ds["image"].values[inner].max()
    assert np.max(np.abs(back["image"].values - ds["image"].values)[inner]) < 0.01 * peak
    # flux of stars conserved: apertures around the brightest peaks, before and after
    import sep

    img = np.ascontiguousarray(ds["image"].values, dtype=np.float64)
    wimg = np.ascontiguousarray(np.nan_to_num(warp["image"].values), dtype=np.float64)
    inner_img = img[40:-40, 40:-40]
    peaks = [
        (y + 40, x + 40)
        for y, x in zip(
            *np.unravel_index(np.argsort(inner_img, axis=None)[::-1][:3000], inner_img.shape),
            strict=True,
        )
        if inner_img[y, x] == inner_img[max(y - 3, 0) : y + 4, max(x - 3, 0) : x + 4].max()
    ][:10]
    assert len(peaks) >= 5
    ys = np.array([p[0] for p in peaks], float)
    xs = np.array([p[1] for p in peaks], float)
    before, _, _ = sep.sum_circle(img, xs, ys, 15.0)
    after, _, _ = sep.sum_circle(wimg, xs + 0.37, ys - 0.41, 15.0)
    assert np.max(np.abs(after / before - 1.0)) < 1e-3, after / before - 1.0


def test_warped_noise_matches_propagated_variance() -> None:
    rng = np.random.default_rng(3)
    shape = (600, 600)
    wcs = lld.make_tan_wcs(150.0, 2.0, (300.0, 300.0), 0.2)
    ds = lld.make_exposure(
        rng.normal(0.0, 2.0, shape).astype(np.float32),
        variance=np.full(shape, 4.0, np.float32),
        wcs=wcs,
        units="nJy",
    )
    target = lld.make_tan_wcs(150.0, 2.0, (300.3, 299.6), 0.21, rotation_deg=7.0)
    warp = warp_exposure(ds, PatchGeometry(wcs_to_cards(target), shape)).compute()
    inner = (slice(50, -50), slice(50, -50))
    pulls = warp["image"].values[inner] / np.sqrt(warp["variance"].values[inner])
    assert abs(np.std(pulls) - 1.0) < 0.02
    # Lanczos3 lowers per-pixel variance (Σw² < 1) and the pixel-area ratio rescales it
    assert np.median(warp["variance"].values[inner]) < 4.0


def test_masks_no_data_sensor_edge_and_propagation() -> None:
    shape = (200, 200)
    mask = np.zeros(shape, np.int32)
    mask[100, 100] = 1 << lld.DEFAULT_MASK_PLANES["SAT"]
    wcs = lld.make_tan_wcs(150.0, 2.0, (100.0, 100.0), 0.2)
    ds = lld.make_exposure(
        np.ones(shape, np.float32),
        mask=mask,
        variance=np.ones(shape, np.float32),
        wcs=wcs,
        units="nJy",
    )
    target = PatchGeometry(
        wcs_to_cards(lld.make_tan_wcs(150.0, 2.0, (150.5, 150.5), 0.2)), (300, 300)
    )
    warp = warp_exposure(ds, target, chunks=(128, 128)).compute()
    m = warp["mask"].values
    no_data = (m & (1 << lld.DEFAULT_MASK_PLANES["NO_DATA"])) != 0
    edge = (m & (1 << lld.DEFAULT_MASK_PLANES["SENSOR_EDGE"])) != 0
    sat = (m & (1 << lld.DEFAULT_MASK_PLANES["SAT"])) != 0
    assert no_data[:40].all() and no_data[:, :40].all() and not no_data[60:240, 60:240].any()
    assert np.isnan(warp["image"].values[no_data]).all()
    assert edge[52, 52:248].all() and not edge[100:200, 100:200].any()
    assert sat.sum() == 4 and sat[150:152, 150:152].all()
    # flat field stays flat (weights renormalised at the edges)
    assert np.allclose(warp["image"].values[~no_data], 1.0, atol=1e-5)


def test_each_output_chunk_reads_only_its_input_region() -> None:
    shape = (1024, 1024)
    seen: list[tuple[int, int]] = []

    def record(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        seen.append(tuple(block_info[0]["chunk-location"]))
        return block

    image = da.ones(shape, dtype=np.float32, chunks=256).map_blocks(record, dtype=np.float32)
    wcs = lld.make_tan_wcs(150.0, 2.0, (512.0, 512.0), 0.2)
    ds = lld.make_exposure(
        image, variance=da.ones(shape, np.float32, chunks=256), wcs=wcs, units="nJy"
    )
    warp = warp_exposure(ds, PatchGeometry(wcs_to_cards(wcs), shape), chunks=(256, 256))
    with dask.config.set(scheduler="synchronous"):
        warp["image"].data.blocks[1, 1].compute()
    # output chunk (1, 1) covers input chunk (1, 1) plus a 4-pixel halo: its 3×3 neighbours
    assert set(seen) <= {(i, j) for i in range(3) for j in range(3)}
    assert (3, 3) not in seen


def test_lazy_equals_eager_and_chunking_independent(sim_calexp: Any) -> None:
    ds = sim_calexp.calexp.isel(y=slice(0, 400), x=slice(0, 300))
    target = PatchGeometry(_shifted(ds.attrs["wcs"], 3.3, -2.7), (380, 290), (5, 7))
    eager = warp_exposure(ds, target, chunks=(512, 512)).compute()
    lazy_in = ds.chunk({"y": 97, "x": 61})
    lazy = warp_exposure(lazy_in, target, chunks=(37, 53))
    assert isinstance(lazy["image"].data, da.Array)
    xr.testing.assert_identical(eager, lazy.compute())


def test_broken_wcs_is_reported_by_data_id(sim_calexp: Any) -> None:
    ds = sim_calexp.calexp.copy()
    ds.attrs = {**ds.attrs, "wcs": {**ds.attrs["wcs"], "CTYPE1": "RA---XYZ"}}
    with pytest.raises(WarpError, match="'visit': 101"):
        warp_exposure(ds, PatchGeometry(sim_calexp.calexp.attrs["wcs"], (10, 10)))


def test_psf_matched_warp_has_model_psf(sim_calexp: Any) -> None:
    ds = sim_calexp.variant("noiseless")
    target = PatchGeometry(_shifted(ds.attrs["wcs"], 0.2, 0.1), (1024, 512))
    warp = warp_exposure(ds, target, kernel="bilinear")
    matched = psf_match_warp(warp, model_fwhm_px=7.0).compute()
    assert matched.attrs["psf"]["kind"] == "gaussian"
    img = matched["image"].values
    y, x = np.unravel_index(
        np.nanargmax(np.where(np.isfinite(img), img, -np.inf)[40:-40, 40:-40]), (944, 432)
    )
    y, x = y + 40, x + 40
    *_, ixx, iyy, ixy = adaptive_moments(img[y - 20 : y + 21, x - 20 : x + 21])
    assert abs(moments_summary(ixx, iyy, ixy)[0] / 7.0 - 1.0) < 0.05
