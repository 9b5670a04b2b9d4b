"""Coadds of the simulated survey against the truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sep

from lsstlite.data.masks import mask_bits, mask_planes
from lsstlite.data.psf import psf_from_dict
from lsstlite.stages.coadd import CoaddPsf
from lsstlite.stages.warp.psf import adaptive_moments, moments_summary
from tests.stages._calexps import objects
from tests.stages.coadd.conftest import SimCoadds


def _bright_isolated_stars(sc: SimCoadds, sim_small) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    obj = objects(sim_small.outdir)
    tract = sc.skymap.tract(0)
    x, y = tract.sky_to_pixel(obj["ra"].values, obj["dec"].values)
    obj = obj.assign(x=x, y=y)
    flux = obj["flux_r"].to_numpy()
    bad = mask_bits(mask_planes(sc.coadd), ["NO_DATA", "INEXACT_PSF", "REJECTED"])
    x0, y0, x1, y1 = sc.patch.bbox
    keep = []
    for k in np.flatnonzero(obj["is_star"].to_numpy() & (flux > 3e4)):
        ix, iy = round(x[k]), round(y[k])
        if not (x0 + 25 <= ix < x1 - 25 and y0 + 25 <= iy < y1 - 25):
            continue
        d2 = (x - x[k]) ** 2 + (y - y[k]) ** 2
        if np.any((d2 > 0) & (d2 < 25**2) & (flux > 0.005 * flux[k])):
            continue
        if (sc.coadd["mask"].values[iy - 20 : iy + 21, ix - 20 : ix + 21] & bad).any():
            continue
        keep.append(k)
    assert len(keep) >= 15, f"only {len(keep)} bright isolated stars in the test coadd"
    return obj.iloc[keep]


def test_star_fluxes_match_truth(sim_coadds: SimCoadds, sim_small) -> None:  # type: ignore[no-untyped-def]
    sc = sim_coadds
    psf = psf_from_dict(sc.coadd.attrs["psf"])
    assert isinstance(psf, CoaddPsf)
    image = sc.coadd["image"].values.astype(np.float64)
    ratios = []
    for star in _bright_isolated_stars(sc, sim_small).itertuples():
        flux, _, _ = sep.sum_circle(image, [star.x], [star.y], 12.0)
        # aperture correction from the coadd PSF model (a big stamp holds > 99.98 %)
        cx, cy = 40 + star.x - round(star.x), 40 + star.y - round(star.y)
        model = psf.image(star.x, star.y, size=81, center=(cx, cy))
        frac, _, _ = sep.sum_circle(model, [cx], [cy], 12.0)
        ratios.append(flux[0] / frac[0] / star.flux_r)
    assert abs(np.median(ratios) - 1.0) < 0.003, np.median(ratios)


def test_coadd_psf_matches_stars(sim_coadds: SimCoadds, sim_small) -> None:  # type: ignore[no-untyped-def]
    sc = sim_coadds
    psf = psf_from_dict(sc.coadd.attrs["psf"])
    image = sc.coadd["image"].values.astype(np.float64)
    d_fwhm, d_e1, d_e2 = [], [], []
    for star in _bright_isolated_stars(sc, sim_small).head(12).itertuples():
        ix, iy = round(star.x), round(star.y)
        stamp = image[iy - 20 : iy + 21, ix - 20 : ix + 21]
        *_, ixx, iyy, ixy = adaptive_moments(stamp, center=(20 + star.x - ix, 20 + star.y - iy))
        fwhm, e1, e2 = moments_summary(ixx, iyy, ixy)
        m_fwhm = psf.fwhm_at(star.x, star.y)
        m_e1, m_e2 = psf.ellipticity_at(star.x, star.y)
        d_fwhm.append(fwhm / m_fwhm - 1.0)
        d_e1.append(e1 - m_e1)
        d_e2.append(e2 - m_e2)
    assert abs(np.median(d_fwhm)) < 0.02, d_fwhm
    assert abs(np.median(d_e1)) < 0.005 and abs(np.median(d_e2)) < 0.005, (d_e1, d_e2)


def test_coadd_noise_matches_prediction(sim_coadds: SimCoadds) -> None:
    sc = sim_coadds
    noise = sc.clean["image"].values - sc.noiseless["image"].values
    sigma = np.sqrt(sc.clean["variance"].values)
    full = (sc.coverage == sc.coverage.max()) & np.isfinite(noise)
    # where the sky dominates the variance: the noise is then the inputs' sky noise
    sky = full & (sc.noiseless["image"].values < 2.0 * np.nanmedian(sigma[full]))
    measured = np.std(noise[sky])
    predicted = np.sqrt(np.mean(sigma[sky] ** 2))
    assert abs(measured / predicted - 1.0) < 0.05, (measured, predicted)
    # and the propagated variance follows the inputs': 1 / Σ wᵢ for inverse-variance weights
    w = np.array([row["weight"] for row in sc.coadd.attrs["coadd_inputs"]])
    visits = sorted({row["visit"] for row in sc.coadd.attrs["coadd_inputs"]})
    per_visit = [
        w[[r["visit"] == v for r in sc.coadd.attrs["coadd_inputs"]]].mean() for v in visits
    ]
    from_inputs = 1.0 / np.sqrt(np.sum(per_visit))
    # Lanczos3 resampling lowers the per-pixel variance by Σw² (0.6–1 by sub-pixel phase)
    assert 0.75 < predicted / from_inputs < 1.0, (predicted, from_inputs)


def test_artifacts_rejected_star_cores_kept(sim_coadds: SimCoadds, sim_small) -> None:  # type: ignore[no-untyped-def]
    sc = sim_coadds
    sigma = np.sqrt(sc.clean["variance"].values)
    naive = (
        sc.noiseless["image"].values * 0 + _mean_with_artifacts(sc) - sc.clean["image"].values
    ) / sigma
    residual = (sc.coadd["image"].values - sc.clean["image"].values) / sigma
    # artifact pixels: where a plain mean would be off by more than 1σ, with at least two
    # visits to compare (a lone epoch cannot tell an artifact from the sky), and outside
    # the cores of bright objects (S/N > 50), where dropping one epoch's PSF alone moves
    # the value by more than 3σ.
    bright = sc.clean["image"].values > 50.0 * sigma
    artifact = (naive > 1.0) & (sc.coverage >= 2) & ~bright
    assert artifact.sum() > 3000
    fraction = np.mean(np.abs(residual[artifact]) < 3.0)
    assert fraction >= 0.99, fraction
    # no star core rejected
    rejected = (sc.coadd["mask"].values & mask_bits(mask_planes(sc.coadd), "REJECTED")) != 0
    stars = _bright_isolated_stars(sc, sim_small)
    cores = [
        rejected[round(s.y) - 1 : round(s.y) + 2, round(s.x) - 1 : round(s.x) + 2].any()
        for s in stars.itertuples()
    ]
    assert not any(cores)


_MEAN_CACHE: dict[int, np.ndarray] = {}


def _mean_with_artifacts(sc: SimCoadds) -> np.ndarray:
    from lsstlite.stages.coadd import coadd_exposures

    if id(sc) not in _MEAN_CACHE:
        w = [row["weight"] for row in sc.coadd.attrs["coadd_inputs"]]
        ds = coadd_exposures([s.calexp for s in sc.sims], sc.patch, method="mean", weights=w)
        _MEAN_CACHE[id(sc)] = ds["image"].values
    return _MEAN_CACHE[id(sc)]


def test_coadd_metadata(sim_coadds: SimCoadds) -> None:
    sc = sim_coadds
    attrs = sc.coadd.attrs
    assert attrs["band"] == "r"
    assert {(r["visit"], r["detector"]) for r in attrs["coadd_inputs"]} == {
        (s.calexp.attrs["visit_info"]["visit"], s.calexp.attrs["visit_info"]["detector"])
        for s in sc.sims
    }
    planes = mask_planes(sc.coadd)
    mask = sc.coadd["mask"].values
    image = sc.coadd["image"].values
    no_data = (mask & mask_bits(planes, "NO_DATA")) != 0
    assert np.array_equal(no_data, ~np.isfinite(image))
    # NO_DATA where no visit covers, or where the only covering epoch was rejected (a
    # footprint reaching from doubly covered sky into singly covered sky); pixels exactly
    # on a detector edge may differ between the bilinear coverage map and Lanczos3.
    rejected = (mask & mask_bits(planes, "REJECTED")) != 0
    assert np.sum((no_data != (sc.coverage == 0)) & ~rejected) <= 5
    inexact = (mask & mask_bits(planes, "INEXACT_PSF")) != 0
    # the set of inputs changes at the edges of the inputs' footprints
    assert inexact[(sc.coverage > 0)].any()
    psf = psf_from_dict(attrs["psf"])
    assert psf_from_dict(psf.to_dict()) == psf
    with pytest.raises(ValueError, match="no input covers"):
        psf.image(*np.argwhere(sc.coverage == 0)[0][::-1].astype(float))


def test_coadd_psf_grid_map_matches_exact_transform(sim_coadds: SimCoadds) -> None:
    """The spline maps coadd → input pixels give the iterative WCS inverse's positions
    (< 1e-4 px) and Jacobians (< 1e-6), and the same inputs cover each position."""
    from lsstlite.stages.warp.psf import local_affine

    psf = psf_from_dict(sim_coadds.coadd.attrs["psf"])
    assert isinstance(psf, CoaddPsf)
    x0, y0, x1, y1 = sim_coadds.patch.bbox
    rng = np.random.default_rng(7)
    n_checked = 0
    for x, y in zip(rng.uniform(x0, x1, 60), rng.uniform(y0, y1, 60), strict=True):
        got = psf._affines(x, y)
        exact = []
        for k, comp in enumerate(psf.components):
            xi, yi, jac = local_affine(comp["wcs_in"], psf.wcs_out, x, y)
            bx0, by0, bx1, by1 = comp["det_box"]
            if bx0 - 0.5 <= xi < bx1 - 0.5 and by0 - 0.5 <= yi < by1 - 0.5:
                exact.append((k, xi, yi, jac))
        assert [g[0] for g in got] == [e[0] for e in exact]
        for (_, gx, gy, gj), (_, ex, ey, ej) in zip(got, exact, strict=True):
            assert abs(gx - ex) < 1e-4 and abs(gy - ey) < 1e-4
            np.testing.assert_allclose(gj, ej, atol=1e-6)
            n_checked += 1
    assert n_checked >= 60
