"""ISR ops: lazy equals eager, chunk independence, fused chain = step-by-step, no compute
while building graphs, and a real raw frame (SAAO 1.0 m, ccdproc's test data)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from lsstlite.data.exposure import make_exposure
from lsstlite.data.masks import mask_bits, mask_planes
from lsstlite.instruments.simcam import SimCam
from lsstlite.stages.isr import IsrTask, ops
from lsstlite.stages.isr._synthetic import simcam_raw

CAM = SimCam("small")
DET = 0
NY, NX = CAM.geometry.det_ny, CAM.geometry.det_nx


def _electrons(seed: int = 3) -> np.ndarray:
    """Sky, a few stars (one saturated, bleeding is not simulated here) and a hot spot."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:NY, 0:NX].astype(float)
    e = np.full((NY, NX), 1200.0)
    for x0, y0, peak in [(60, 100, 3e4), (300, 700, 6e4), (450, 200, 4e5), (250, 511, 2e4)]:
        e += peak * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 2.0**2))
    return rng.poisson(e).astype(float)


@pytest.fixture(scope="module")
def raw() -> xr.Dataset:
    return simcam_raw(_electrons(), CAM, DET, read_noise=True, seed=5)


@pytest.fixture(scope="module")
def calibs() -> dict[str, Any]:
    rng = np.random.default_rng(9)
    return {
        "bias": make_exposure(rng.normal(0, 1.5, (NY, NX)).astype(np.float32), units="adu"),
        "dark": make_exposure(np.full((NY, NX), 0.01, np.float32)),
        "flat": make_exposure(rng.normal(1.0, 0.02, (NY, NX)).astype(np.float32)),
        # a bad column, a small box, and defects through stars (brighter-fatter fills
        # them in): a column through one, a 3-wide column and a box beside it through
        # the saturated one
        "defects": pd.DataFrame(
            {
                "x0": [100, 400, 301, 449, 452],
                "y0": [0, 50, 600, 150, 205],
                "width": [1, 3, 1, 3, 1],
                "height": [300, 4, 200, 100, 3],
            }
        ),
    }


def _rechunk(ds: xr.Dataset, chunks: tuple[int, int] | None) -> xr.Dataset:
    """Numpy-backed (``None``) or dask-backed with ``chunks``."""
    out = ds.copy()
    for name in ds.data_vars:
        v = ds[name]
        data = (
            np.asarray(v.data)
            if chunks is None
            else dask.array.from_array(np.asarray(v.data), chunks=chunks)
        )
        out[name] = (v.dims, data, v.attrs)
    return out


def _values(ds: xr.Dataset) -> dict[str, np.ndarray]:
    return {
        k: np.asarray(v) for k, v in dask.compute({n: ds[n].data for n in ds.data_vars})[0].items()
    }


def _assert_same(a: xr.Dataset, b: xr.Dataset, *, atol: float = 0.0) -> None:
    va, vb = _values(a), _values(b)
    assert va.keys() == vb.keys()
    for k in va:
        if va[k].dtype.kind == "f":
            np.testing.assert_allclose(
                va[k], vb[k], rtol=0 if atol == 0 else 1e-6, atol=atol, err_msg=k
            )
        else:
            np.testing.assert_array_equal(va[k], vb[k], err_msg=k)


@pytest.fixture(scope="module")
def assembled(raw: xr.Dataset) -> xr.Dataset:
    """The raw through overscan, crosstalk and assembly, computed (numpy-backed)."""
    exp = ops.assemble(
        ops.correct_crosstalk(
            ops.subtract_overscan(ops.mask_saturation(raw)), CAM.crosstalk_matrix(DET)
        )
    )
    exp = ops.apply_gain(exp)
    vals = _values(exp)
    out = exp.copy()
    vals["image"][10, 10] = np.nan  # one non-finite pixel for mask_nans
    for k, v in vals.items():
        out[k] = (("y", "x"), v, exp[k].attrs)
    return out


def _exposure_ops(calibs: dict[str, Any]) -> dict[str, Callable[[xr.Dataset], xr.Dataset]]:
    return {
        "subtract_bias": lambda e: ops.subtract_bias(e, calibs["bias"]),
        "apply_linearity": lambda e: ops.apply_linearity(e, CAM.linearity(DET)),
        "apply_gain": ops.apply_gain,
        "mask_nans": ops.mask_nans,
        "mask_defects": lambda e: ops.mask_defects(e, calibs["defects"]),
        "subtract_dark": lambda e: ops.subtract_dark(e, calibs["dark"], dark_time=30.0),
        "brighter_fatter": lambda e: ops.correct_brighter_fatter(e, CAM.bf_kernel()),
        # defects through stars, filled in for the correction (chunks narrower than the
        # x overlap the fill adds)
        "brighter_fatter_defects": lambda e: ops.correct_brighter_fatter(
            ops.mask_defects(e, calibs["defects"]), CAM.bf_kernel()
        ),
        "divide_flat": lambda e: ops.divide_flat(e, calibs["flat"]),
        "grow_sat": lambda e: ops.grow_mask_plane(e, "SAT", 2),
        "interpolate_bad": lambda e: ops.interpolate_bad(ops.mask_defects(e, calibs["defects"])),
        "remove_fringe": lambda e: ops.remove_fringe(e, calibs["flat"], amplitude=3.0),
    }


OP_NAMES = list(_exposure_ops({}).keys())


@pytest.mark.parametrize("name", OP_NAMES)
def test_lazy_equals_eager_and_chunk_independent(
    name: str, assembled: xr.Dataset, calibs: dict[str, Any]
) -> None:
    op = _exposure_ops(calibs)[name]
    eager = op(_rechunk(assembled, None))
    whole = op(_rechunk(assembled, (NY, NX)))
    odd = op(_rechunk(assembled, (37, 53)))  # chunks that do not divide the image
    _assert_same(eager, whole)
    _assert_same(whole, odd)
    # the op did something (each comparison can fail)
    before, after = _values(assembled), _values(whole)
    assert any(not np.array_equal(before[k], after[k]) for k in before), name


def test_raw_ops_chunk_independent(raw: xr.Dataset) -> None:
    def chain(r: xr.Dataset) -> xr.Dataset:
        r = ops.subtract_overscan(ops.mask_saturation(r), mode="poly", order=2)
        return ops.assemble(ops.correct_crosstalk(r, CAM.crosstalk_matrix(DET)))

    _assert_same(chain(_rechunk(raw, None)), chain(_rechunk(raw, (37, 53))))


def test_fused_chain_equals_step_by_step(raw: xr.Dataset, calibs: dict[str, Any]) -> None:
    levels = ops.overscan_levels(raw)
    xt, lin, bf = CAM.crosstalk_matrix(DET), CAM.linearity(DET), CAM.bf_kernel()
    step = ops.subtract_overscan(ops.mask_saturation(raw), levels=levels)
    step = ops.assemble(ops.correct_crosstalk(step, xt))
    step = ops.apply_linearity(ops.subtract_bias(step, calibs["bias"]), lin)
    step = ops.mask_nans(ops.apply_gain(step))
    step = ops.subtract_dark(ops.mask_defects(step, calibs["defects"]), calibs["dark"])
    step = ops.divide_flat(ops.correct_brighter_fatter(step, bf), calibs["flat"])
    step = ops.interpolate_bad(ops.grow_mask_plane(step, "SAT", 1))
    common = {
        "overscan": levels,
        "crosstalk": xt,
        "bias": calibs["bias"],
        "linearity": lin,
        "dark": calibs["dark"],
    }
    fused = ops.isr_post_dark(
        ops.isr_chain(raw, **common, chunk_rows=100),
        defects=calibs["defects"],
        bf_kernel=bf,
        flat=calibs["flat"],
    )
    stacked = ops.isr_stacked(
        raw, **common, defects=calibs["defects"], bf_kernel=bf, flat=calibs["flat"], chunk_rows=64
    )
    # flat folded into the fused chain (no BF): compare with the step path minus BF
    no_bf = ops.isr_stacked(raw, **common, defects=calibs["defects"], flat=calibs["flat"])
    step_no_bf = ops.subtract_overscan(ops.mask_saturation(raw), levels=levels)
    step_no_bf = ops.assemble(ops.correct_crosstalk(step_no_bf, xt))
    step_no_bf = ops.apply_linearity(ops.subtract_bias(step_no_bf, calibs["bias"]), lin)
    step_no_bf = ops.mask_nans(ops.apply_gain(step_no_bf))
    step_no_bf = ops.subtract_dark(ops.mask_defects(step_no_bf, calibs["defects"]), calibs["dark"])
    step_no_bf = ops.interpolate_bad(
        ops.grow_mask_plane(ops.divide_flat(step_no_bf, calibs["flat"]), "SAT", 1)
    )
    ref = _values(step)
    planes = mask_planes(step)
    assert (ref["mask"] & mask_bits(planes, "SAT")).sum() > 20
    assert (ref["mask"] & mask_bits(planes, "INTRP")).sum() > 300
    for got, want in ((fused, step), (stacked, step), (no_bf, step_no_bf)):
        g, w = _values(got), _values(want)
        np.testing.assert_array_equal(g["mask"], w["mask"])
        # float32 rounding of electrons (≲ 1e-6 relative) and of the ∞ variance
        np.testing.assert_allclose(g["image"], w["image"], rtol=2e-6, atol=2e-3)
        np.testing.assert_allclose(g["variance"], w["variance"], rtol=2e-6, atol=2e-3)
    assert stacked.attrs["isr_steps"][:4] == ["saturation", "overscan", "crosstalk", "assemble"]


@pytest.mark.parametrize("with_flat", [False, True])
def test_brighter_fatter_fills_in_defects(with_flat: bool) -> None:
    """A dead column (5% response) through a star: brighter-fatter sees the column filled
    in by interpolation along rows, so the charge it moves in the good pixels beside the
    column is nearly the column-free star's; left as they are, the column's low values
    made a steep false gradient (noiseless star of 60 ke⁻ peak, σ 1.8 px: measured, the
    worst good pixel 980 e⁻ off with the core on the column, 119 filled; 218 and 90 with
    the column 3.7 px from the centre). With a flat (the task's path, BF before the flat)
    and without one."""
    yy, xx = np.mgrid[0:NY, 0:NX].astype(float)
    rng = np.random.default_rng(2)
    flat = make_exposure(rng.normal(1.0, 0.01, (NY, NX)).astype(np.float32))
    kernel = CAM.bf_kernel()
    column = pd.DataFrame({"x0": [301], "y0": [0], "width": [1], "height": [NY]})
    window = (slice(490, 512), slice(294, 309))
    good = np.ones((22, 15), bool)
    good[:, 301 - 294] = False

    def correction(e: np.ndarray, defects: pd.DataFrame | None, width: int) -> np.ndarray:
        f = flat if with_flat else None
        raw = simcam_raw(e * (flat["image"].values if with_flat else 1.0), CAM, DET)
        kw = {"overscan": "median_per_row", "defects": defects, "flat": f}
        kw["interp_max_width"] = width
        with_bf = ops.isr_stacked(raw, bf_kernel=kernel, **kw)["image"].values
        return with_bf - ops.isr_stacked(raw, **kw)["image"].values

    for dx, ratio in ((0.7, 0.15), (3.7, 0.5)):
        e = 1000.0 + 6e4 * np.exp(-((xx - 301 + dx) ** 2 + (yy - 500.6) ** 2) / (2 * 1.8**2))
        dead = e.copy()
        dead[:, 301] *= 0.05
        truth = correction(e, None, 32)[window][good]
        assert np.abs(truth).max() > 200  # BF moves charge here
        # interp_max_width=0: nothing is interpolated, nor filled in for BF
        raw_column = np.abs(correction(dead, column, 0)[window][good] - truth).max()
        filled = np.abs(correction(dead, column, 32)[window][good] - truth).max()
        assert filled < ratio * raw_column, (dx, filled, raw_column)


def test_stacked_isr_independent_of_row_blocks(
    raw: xr.Dataset, calibs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks recompute their neighbours' rows, correct brighter-fatter on bands of rows
    around bright pixels (before the flat) and grow SAT across block edges: the result is
    the one-block result bit for bit, whatever the block height. Block buffers are lent
    filled with NaN, so that a read of a row never computed shows."""
    monkeypatch.setattr(ops._BLOCKS, "fill", np.nan)
    kw = {
        "overscan": ops.overscan_levels(raw),
        "crosstalk": CAM.crosstalk_matrix(DET),
        "bias": calibs["bias"],
        "linearity": CAM.linearity(DET),
        "dark": calibs["dark"],
        "defects": calibs["defects"],
        "bf_kernel": CAM.bf_kernel(),
        "flat": calibs["flat"],
    }
    ny = raw["image"].shape[0]
    whole = ops.isr_stacked(raw, **kw, chunk_rows=ny)
    one = _values(whole)
    assert (one["mask"] & mask_bits(mask_planes(whole), "SAT")).sum() > 20
    for rows in (16, 64, 97):
        blocks = _values(ops.isr_stacked(raw, **kw, chunk_rows=rows))
        for k in one:
            np.testing.assert_array_equal(blocks[k], one[k], err_msg=f"{k}, {rows} rows")
    # inputs read in chunks of their own, none matching the blocks: each block takes the
    # chunks its rows and halo overlap (no rechunking), in segments
    odd = raw.copy()
    odd["image"] = odd["image"].chunk({"y": 37})
    odd = odd.persist()
    kw_odd = dict(kw)
    for name, rows in (("bias", 50), ("dark", ny), ("flat", 23)):
        kw_odd[name] = kw[name].copy()
        kw_odd[name]["image"] = kw[name]["image"].chunk({"y": rows})
        kw_odd[name] = kw_odd[name].persist()
    graph = ops.isr_stacked(odd, **kw_odd, chunk_rows=64)
    inputs = [odd["image"], kw["overscan"], *(kw_odd[n]["image"] for n in ("bias", "dark", "flat"))]
    known = set().union(*(dict(a.data.__dask_graph__()) for a in inputs))
    added = set(dict(graph["image"].data.__dask_graph__())) - known
    assert added and not [k for k in added if "rechunk" in str(k)]
    got = _values(graph)
    for k in one:
        np.testing.assert_array_equal(got[k], one[k], err_msg=f"{k}, inputs in other chunks")
    # dead and NaN flat pixels next to bright ones: brighter-fatter still reads their
    # value before the flat (recomputed), as the step-by-step path does
    flat = calibs["flat"].copy(deep=True)
    ys, xs = np.nonzero(_electrons() > 2e4)
    dead = flat["image"].values
    dead[ys[::7], np.minimum(xs[::7] + 2, NX - 1)] = 0.0
    dead[np.minimum(ys[3::7] + 1, NY - 1), xs[3::7]] = np.nan
    kw_dead = {**kw, "flat": flat}
    blocks = _values(ops.isr_stacked(raw, **kw_dead, chunk_rows=64))
    whole_dead = _values(ops.isr_stacked(raw, **kw_dead, chunk_rows=ny))
    for k in one:
        np.testing.assert_array_equal(blocks[k], whole_dead[k], err_msg=f"{k}, dead flat")
    step = ops.subtract_overscan(ops.mask_saturation(raw), levels=kw["overscan"])
    step = ops.assemble(ops.correct_crosstalk(step, kw["crosstalk"]))
    step = ops.apply_linearity(ops.subtract_bias(step, kw["bias"]), kw["linearity"])
    step = ops.mask_nans(ops.apply_gain(step))
    step = ops.subtract_dark(ops.mask_defects(step, kw["defects"]), kw["dark"])
    step_bf_input = step
    step = ops.divide_flat(ops.correct_brighter_fatter(step, kw["bf_kernel"]), flat)
    want = _values(ops.interpolate_bad(ops.grow_mask_plane(step, "SAT", 1)))
    assert (want["mask"] & mask_bits(mask_planes(whole), "BAD")).sum() > 10
    np.testing.assert_array_equal(blocks["mask"], want["mask"])
    np.testing.assert_allclose(blocks["image"], want["image"], rtol=2e-6, atol=2e-3)
    # without a flat, BF runs on the image itself (boxes from the amplifiers' flags)
    no_flat = {**kw, "flat": None}
    blocks = _values(ops.isr_stacked(raw, **no_flat, chunk_rows=64))
    whole_nf = _values(ops.isr_stacked(raw, **no_flat, chunk_rows=ny))
    for k in one:
        np.testing.assert_array_equal(blocks[k], whole_nf[k], err_msg=f"{k}, no flat")
    step_nf = ops.correct_brighter_fatter(step_bf_input, kw["bf_kernel"])
    want = _values(ops.interpolate_bad(ops.grow_mask_plane(step_nf, "SAT", 1)))
    before, after = _values(step_bf_input)["image"], _values(step_nf)["image"]
    assert (np.abs(after - before) > 1.0).sum() > 50  # BF moved charge
    np.testing.assert_array_equal(blocks["mask"], want["mask"])
    np.testing.assert_allclose(blocks["image"], want["image"], rtol=2e-6, atol=2e-3)
    # the overscan medians computed in each block, from its rows, are the same levels
    kw["overscan"] = "median_per_row"
    in_block = _values(ops.isr_stacked(raw, **kw, chunk_rows=64))
    for k in one:
        np.testing.assert_array_equal(in_block[k], one[k], err_msg=f"{k}, medians in block")
    with pytest.raises(ValueError, match="'poly' needs the levels of every row"):
        ops.isr_stacked(raw, overscan="poly")
    no_columns = raw.copy()
    no_columns.attrs = {**raw.attrs, "amplifiers": [dict(a) for a in raw.attrs["amplifiers"]]}
    y0, y1, x0, _ = no_columns.attrs["amplifiers"][1]["serial_overscan"]
    no_columns.attrs["amplifiers"][1]["serial_overscan"] = [y0, y1, x0, x0]
    with pytest.raises(ValueError, match="has no overscan columns"):
        ops.isr_stacked(no_columns, overscan="median_per_row")


def _raise_on_compute(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a dask graph was computed while only building it")


def test_building_graphs_computes_nothing(
    raw: xr.Dataset, calibs: dict[str, Any], sim_small: Any
) -> None:
    from lsstlite.stages.calibs import ops as calib_ops
    from tests.stages.isr.conftest import raw_file

    with dask.config.set(scheduler=_raise_on_compute):
        task = IsrTask({"do_fringe": True})
        fringe = make_exposure(
            np.sin(np.arange(NX) / 20.0)[None, :].repeat(NY, 0).astype(np.float32)
        )
        res = task.run(raw=raw, fringe=fringe, **calibs).post_isr
        res2 = task.run(raw=str(raw_file(sim_small, 103, 0)), fringe=fringe, **calibs).post_isr
        calib_ops.combine_exposures([res, res2], n_sigma=5.0)
        calib_ops.robust_mean_level(res)
        calib_ops.fringe_from_exposures([res, res2])
        ops.overscan_levels(raw, mode="spline")
        with pytest.raises(AssertionError, match="computed"):
            res["image"].data.sum().compute()
    assert np.isfinite(float(res["image"].data.mean().compute()))


def test_real_saao_frame(real_data: Path) -> None:
    """SAAO 1.0 m STE3 raw (ccdproc test data; PROVENANCE.txt): BIASSEC [4:13,1:520]
    (median ~214 ADU), TRIMSEC [17:528,1:520], GAIN 1.9 e⁻/ADU."""
    from astropy.io import fits

    path = real_data / "saao_raw_overscan" / "a8280271.fits"
    pixels = fits.getdata(path).astype(np.float64)
    raw = ops.raw_from_fits(path, chunks=(100, 536))
    levels = ops.overscan_levels(raw, mode="median").values
    expected = np.median(np.median(pixels[:, 3:13], axis=1))
    assert levels.shape == (1, 520)
    assert 200 < levels[0, 0] < 230 and abs(levels[0, 0] - expected) < 0.5
    exp = ops.apply_gain(ops.assemble(ops.subtract_overscan(raw, mode="median")))
    img = exp["image"].values
    assert img.shape == (520, 512)  # TRIMSEC: 512 columns, 520 rows
    sky_adu = np.median(pixels[:, 16:528]) - levels[0, 0]
    assert abs(np.median(img) - 1.9 * sky_adu) < 0.5
    assert 50 * 1.9 < np.median(img) < 150 * 1.9  # sky ~300 ADU raw, ~86 ADU above bias
    # the fused chain on the same frame agrees
    fused = ops.isr_chain(
        raw, overscan=ops.overscan_levels(raw, mode="median"), do_saturation=False
    )
    np.testing.assert_allclose(fused["image"].values, img, rtol=1e-6, atol=1e-3)
    var = fused["variance"].values
    np.testing.assert_allclose(var, np.maximum(img, 0) + 5.0**2, rtol=1e-5)
