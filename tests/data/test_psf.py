"""PSF models: normalisation, moments, ellipticity convention, serialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lsstlite.data as lld


def _moments(im: np.ndarray) -> tuple[float, float, float, float, float]:
    y, x = np.mgrid[: im.shape[0], : im.shape[1]]
    s = im.sum()
    cx, cy = (im * x).sum() / s, (im * y).sum() / s
    ixx = (im * (x - cx) ** 2).sum() / s
    iyy = (im * (y - cy) ** 2).sum() / s
    ixy = (im * (x - cx) * (y - cy)).sum() / s
    return cx, cy, ixx, iyy, ixy


@pytest.mark.parametrize("e1, e2", [(0.0, 0.0), (0.08, 0.0), (-0.03, 0.05)])
def test_gaussian_moments_match_analytic(e1: float, e2: float) -> None:
    psf = lld.GaussianPsf(fwhm=3.5, e1=e1, e2=e2)
    im = psf.image(100.3, 50.8, size=41, oversample=9)
    assert im.sum() == pytest.approx(1.0, abs=1e-6)
    cx, cy, ixx, iyy, ixy = _moments(im)
    assert cx == pytest.approx(20.3, abs=1e-4) and cy == pytest.approx(19.8, abs=1e-4)
    axx, ayy, axy = psf.second_moments()
    # pixel integration adds 1/12 px² to each diagonal moment
    assert ixx == pytest.approx(axx + 1 / 12, rel=2e-3)
    assert iyy == pytest.approx(ayy + 1 / 12, rel=2e-3)
    assert ixy == pytest.approx(axy, abs=2e-3)
    assert (axx - ayy) / (axx + ayy) == pytest.approx(e1, abs=1e-12)
    assert 2 * axy / (axx + ayy) == pytest.approx(e2, abs=1e-12)


def test_moffat_fwhm_and_norm() -> None:
    psf = lld.MoffatPsf(fwhm=4.0, beta=3.5)
    im = psf.image(0.0, 0.0, size=201, oversample=5)
    assert im.sum() == pytest.approx(1.0, abs=2e-4)
    # half maximum at r = fwhm / 2 of the continuous profile
    peak = psf.profile(np.array([0.0]), np.array([0.0]))[0]
    half = psf.profile(np.array([2.0]), np.array([0.0]))[0]
    assert half / peak == pytest.approx(0.5, rel=1e-12)


def test_varying_moffat_follows_polynomial() -> None:
    psf = lld.VaryingMoffatPsf(
        fwhm_coeffs=[4.0, 0.2, -0.1],
        e1_coeffs=[0.01, 0.0, 0.02],
        beta=3.0,
        x0=1000.0,
        y0=2000.0,
        scale=1000.0,
    )
    assert psf.fwhm_at(2000.0, 2000.0) == pytest.approx(4.2)
    assert psf.fwhm_at(1000.0, 3000.0) == pytest.approx(3.9)
    assert psf.ellipticity_at(1000.0, 3000.0) == pytest.approx((0.03, 0.0))


@pytest.mark.parametrize(
    "psf",
    [
        lld.GaussianPsf(fwhm=3.0, e1=0.1),
        lld.MoffatPsf(fwhm=4.0, beta=2.5, e2=-0.05),
        lld.VaryingMoffatPsf(fwhm_coeffs=[4.0, 0.1], x0=5.0),
    ],
)
def test_round_trip(psf: lld.PsfModel) -> None:
    data = psf.to_dict()
    import json

    assert lld.psf_from_dict(json.loads(json.dumps(data))) == psf


def test_unknown_kind_and_bad_ellipticity() -> None:
    with pytest.raises(ValueError, match="unknown PSF model kind 'psfex-ish'"):
        lld.psf_from_dict({"kind": "psfex-ish"})
    with pytest.raises(ValueError, match="must be < 1"):
        lld.GaussianPsf(fwhm=3.0, e1=0.9, e2=0.9).second_moments()


def test_ellipticity_axis_ratio_relation() -> None:
    q = 0.7
    e = (1 - q * q) / (1 + q * q)
    m = lld.MoffatPsf(fwhm=3.0, e1=e).second_moments()
    assert math.sqrt(m[1] / m[0]) == pytest.approx(q, rel=1e-12)
