"""IsrTask against the simulator's truth (true calibrations: every residual is noise)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lsstlite.instruments.simcam import SimCam
from lsstlite.sim import true_image
from lsstlite.stages.isr import IsrTask
from tests.stages.isr.conftest import clean_sky, raw_file, true_calibs

#: r-band exposures without satellite trails in the small survey (seed 1).
CLEAN_R = [(103, 0), (105, 1)]


def run_isr(sim: Any, exposure: int, detector: int, band: str, **config: Any) -> Any:
    calibs = true_calibs(sim, detector, band)
    task = IsrTask(config)
    return task.run(raw=str(raw_file(sim, exposure, detector)), **calibs).post_isr.compute()


@pytest.fixture(scope="module")
def clean_results(sim_small: Any) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    out = []
    for exposure, detector in CLEAN_R:
        res = run_isr(sim_small, exposure, detector, "r")
        truth = true_image(sim_small, exposure, detector)
        out.append((res, truth, clean_sky(sim_small, exposure, detector, res, truth)))
    return out


def test_residual_mean_rms_and_variance(clean_results: Any) -> None:
    resid = np.concatenate([(r["image"].values - t)[m] for r, t, m in clean_results])
    var = np.concatenate([r["variance"].values[m] for r, _, m in clean_results])
    assert abs(resid.mean()) < 0.05, resid.mean()
    chi = resid / np.sqrt(var)
    # rms consistent with pure shot + read noise (the variance plane's model)
    assert abs(chi.std() - 1.0) < 0.02, chi.std()
    # variance plane vs empirical variance
    assert abs(resid.var() / var.mean() - 1.0) < 0.03


def test_no_bias_structure_or_amp_boundary(clean_results: Any) -> None:
    for res, truth, m in clean_results:
        d = np.where(m, res["image"].values - truth, np.nan)
        sigma = np.sqrt(np.nanmean(np.where(m, res["variance"].values, np.nan)))
        n_rows = np.isfinite(d).sum(axis=0)
        col_means = np.nanmean(d, axis=0)
        # column means scatter as pure noise (no fixed column pattern or ramp left)
        expected = sigma / np.sqrt(np.median(n_rows))
        assert np.nanstd(col_means) < 1.3 * expected
        step = np.nanmedian(d[:, 256] - d[:, 255])
        assert abs(step) < 0.1 * sigma, (step, sigma)


def test_saturation_and_defects_masked(sim_small: Any, clean_results: Any) -> None:
    res, truth, _ = clean_results[0]
    planes = res["mask"].attrs["planes"]
    mask = res["mask"].values
    for d in SimCam("small").defects(CLEAN_R[0][1]):
        if d["kind"] == "bad_column":
            box = mask[d["y0"]:d["y0"] + d["height"], d["x0"]]
            assert np.all(box & (1 << planes["BAD"]))
            assert np.all(box & (1 << planes["INTRP"]))
    amp = SimCam("small").amplifier_parameters(CLEAN_R[0][1])[0]
    saturated = truth > 1.05 * amp.full_well
    assert saturated.sum() > 10
    assert np.all(mask[saturated] & (1 << planes["SAT"]))
    assert res.attrs["isr_steps"][:3] == ["saturation", "overscan", "crosstalk"]
    assert res.attrs["wcs"]["CTYPE1"].startswith("RA---TAN")
    assert res.attrs["visit_info"]["exposure"] == CLEAN_R[0][0]


def _ghost_and_linearity(sim: Any, **config: Any) -> tuple[float, float]:
    """Mean residual (in σ) where the simulator put crosstalk ghosts > 1σ, and in bright
    unsaturated star pixels (nonlinearity)."""
    exposure, detector = CLEAN_R[0]
    res = run_isr(sim, exposure, detector, "r", **config)
    truth = true_image(sim, exposure, detector)
    cam = SimCam("small")
    amps = cam.amplifier_parameters(detector)
    c = cam.crosstalk_matrix(detector)
    flat = true_calibs(sim, detector, "r")["flat"]["image"].values
    signal_adu = [truth[:, 256:][:, ::-1] * flat[:, 256:][:, ::-1] / amps[1].gain,
                  truth[:, :256] * flat[:, :256] / amps[0].gain]
    ghost = np.zeros_like(truth)
    ghost[:, :256] = c[1, 0] * signal_adu[0] * amps[0].gain / flat[:, :256]
    ghost[:, 256:] = (c[0, 1] * signal_adu[1] * amps[1].gain)[:, ::-1] / flat[:, 256:]
    chi = (res["image"].values - truth) / np.sqrt(res["variance"].values)
    ok = res["mask"].values == 0
    sky = np.median(truth)
    sky_sigma = np.sqrt(np.median(res["variance"].values))
    ghosts = ok & (ghost > sky_sigma) & (truth < 1.2 * sky)  # ghosts > 1σ on pure sky
    bright = ok & (truth * flat > 20_000) & (truth * flat < 0.8 * amps[0].full_well)
    return float(chi[ghosts].mean()), float(chi[bright].mean())


@pytest.mark.xfail(
    strict=True,
    reason="ghost pixels on pure sky show a -0.19σ mean residual (over-subtraction or a "
    "selection bias of the predicted ghost map from unclipped truth); under investigation",
)
def test_crosstalk_and_nonlinearity_removed(sim_small: Any) -> None:
    ghost_chi, lin_chi = _ghost_and_linearity(sim_small)
    assert abs(ghost_chi) < 0.1, ghost_chi
    assert abs(lin_chi) < 0.1, lin_chi
    raw_ghost, raw_lin = _ghost_and_linearity(sim_small, do_crosstalk=False, do_linearity=False)
    assert raw_ghost > 0.5 and raw_lin < -0.5  # the checks can fail


def test_fringe_removed(sim_small: Any) -> None:
    exposure, detector = 106, 0  # i band, no trail
    truth = true_image(sim_small, exposure, detector)
    pattern = true_calibs(sim_small, detector, "i")["fringe"]["image"].values.astype(float)
    pattern -= pattern.mean()

    def fringe_sigma(**config: Any) -> float:
        res = run_isr(sim_small, exposure, detector, "i", **config)
        m = clean_sky(sim_small, exposure, detector, res, truth)
        d = (res["image"].values - truth)[m]
        p = pattern[m]
        amp = np.polyfit(p, d, 1)[0]
        return float(abs(amp) * p.std() / np.sqrt(res["variance"].values[m].mean()))

    assert fringe_sigma() < 0.1
    assert fringe_sigma(do_fringe=False) > 0.3
