"""Forced photometry on a calexp against injected truth: fluxes, errors, flags, the
aperture correction and the objects kept."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

import lsstlite.data as lld
from lsstlite.data.masks import mask_bits, mask_planes
from lsstlite.stages.forced import FORCED_SRC_COLUMNS, forced_photometry_ccd

SHAPE = (400, 300)  # ny, nx
SIGMA = 5.0  # nJy per pixel
PSF = lld.MoffatPsf(fwhm=3.2, beta=3.0)


def _calexp(stars: list[tuple[float, float, float]], seed: int, **attrs: Any) -> Any:
    """Noise plus stars drawn with the calexp's own PSF model (so a PSF fit is exact)."""
    ny, nx = SHAPE
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, SIGMA, SHAPE)
    for x, y, flux in stars:
        ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        stamp = PSF.image(x, y, size=41)
        y0, x0 = iy - 20, ix - 20
        ys, xs = slice(max(y0, 0), min(y0 + 41, ny)), slice(max(x0, 0), min(x0 + 41, nx))
        image[ys, xs] += flux * stamp[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    wcs = lld.make_tan_wcs(150.0, 2.0, ((nx - 1) / 2, (ny - 1) / 2), 0.2)
    exp = lld.make_exposure(
        image.astype(np.float32),
        variance=np.full(SHAPE, SIGMA**2, np.float32),
        wcs=wcs,
        psf=PSF,
        units="nJy",
        visit_info={"instrument": "Synth", "exposure": 7, "detector": 3, "band": "g",
                    "mjd": 61000.25, "exptime": 30.0},
    )  # fmt: skip
    exp.attrs.update(attrs)
    return exp, wcs


def _objects(wcs: Any, xy: list[tuple[float, float]], first_id: int = 1) -> pd.DataFrame:
    ra, dec = wcs.all_pix2world([p[0] for p in xy], [p[1] for p in xy], 0)
    return pd.DataFrame({"id": np.arange(first_id, first_id + len(xy)), "ra": ra, "dec": dec})


def test_fluxes_and_errors_against_truth() -> None:
    """On a grid of 120 stars of S/N ~ 95 and 12 of S/N ~ 9500: the faint ones' pulls have
    unit width and no bias; the bright ones are within 0.05% of the injected flux."""
    rng = np.random.default_rng(1)
    xy = [(20.3 + 24 * i + rng.uniform(0, 1), 20.7 + 30 * j + rng.uniform(0, 1))
          for i in range(11) for j in range(12)]  # fmt: skip
    flux = np.where(np.arange(len(xy)) % 11 == 5, 3e5, 3e3)
    exp, wcs = _calexp([(x, y, f) for (x, y), f in zip(xy, flux, strict=True)], seed=2)
    table = forced_photometry_ccd(exp, _objects(wcs, xy))
    assert list(table.columns) == list(FORCED_SRC_COLUMNS) and len(table) == len(xy)
    table = table.sort_values("object_id")
    np.testing.assert_allclose(table["x"], [p[0] for p in xy], atol=1e-6)
    assert (table["exposure"] == 7).all() and (table["band"] == "g").all()
    assert table["mjd"].iloc[0] == pytest.approx(61000.25 + 15.0 / 86400.0)
    pull = (table["psf_flux"].to_numpy() - flux) / table["psf_flux_err"].to_numpy()
    faint, bright = flux < 1e4, flux > 1e4
    assert abs(np.median(pull[faint])) < 0.25
    assert 0.85 < np.std(pull[faint]) < 1.15
    np.testing.assert_allclose(table["psf_flux"].to_numpy()[bright], 3e5, rtol=5e-4)
    assert not table.filter(like="flag_").to_numpy().any()


def test_aperture_correction_applied() -> None:
    """The exposure's aperture-correction map (``attrs["characterize"]``) scales the
    fluxes and errors as it scales the ``src`` table's."""
    xy = [(150.2, 200.4)]
    meta = {"ap_corr_coeffs": [1.02, 0.01, 0.0], "ap_corr_degree": 1, "wing_correction": 1.01}
    exp, wcs = _calexp([(150.2, 200.4, 3e5)], seed=3)
    plain = forced_photometry_ccd(exp, _objects(wcs, xy))
    exp.attrs["characterize"] = meta
    corrected = forced_photometry_ccd(exp, _objects(wcs, xy))
    u = (150.2 - (SHAPE[1] - 1) / 2) / (SHAPE[1] / 2)  # the map's variable along x
    factor = (1.02 + 0.01 * u) * 1.01
    for col in ("psf_flux", "psf_flux_err"):
        assert corrected[col].iloc[0] == pytest.approx(plain[col].iloc[0] * factor, rel=1e-9)


def test_flags_and_objects_off_the_detector() -> None:
    """Edge, saturated and masked pixels, close pairs; objects off the detector (and on
    the other side of the sky) are not in the table; several object tables are one."""
    stars = [(2.0, 100.3, 1e4), (150.4, 200.2, 1e4), (80.6, 300.1, 1e4),
             (220.2, 100.5, 1e4), (223.0, 101.0, 1e4), (100.3, 60.8, 1e4)]  # fmt: skip
    exp, wcs = _calexp(stars, seed=4)
    planes = mask_planes(exp)
    mask = exp["mask"].values.copy()
    mask[199:202, 150:152] |= mask_bits(planes, "SAT")  # star 2
    mask[300, 78] |= mask_bits(planes, "BAD")  # star 3 (2.6 px away)
    exp = exp.assign(mask=exp["mask"].copy(data=mask))
    objects = _objects(wcs, [(x, y) for x, y, _ in stars])
    away = pd.DataFrame({"id": [100, 101, 102], "ra": [150.0, 330.0, 150.2],
                         "dec": [2.1, -2.0, 2.0]})  # fmt: skip
    table = forced_photometry_ccd(exp, [objects, away]).set_index("object_id")
    assert sorted(table.index) == [1, 2, 3, 4, 5, 6]
    f = table.filter(like="flag_")
    assert f.loc[1, "flag_edge"] and not f.loc[1, ["flag_masked", "flag_blended"]].any()
    assert f.loc[2, "flag_saturated"] and f.loc[2, "flag_masked"]
    assert f.loc[3, "flag_masked"] and not f.loc[3, "flag_saturated"]
    assert f.loc[4, "flag_blended"] and f.loc[5, "flag_blended"]  # 2.9 px apart
    assert not f.loc[6].any()
    assert np.isfinite(table["psf_flux"]).all()
    # the same objects in an overlapping tract's table: measured once (the first table's)
    twin = objects.assign(id=objects["id"] + 1000, ra=objects["ra"] + 1e-5)  # 0.04"
    both = forced_photometry_ccd(exp, [objects, twin])
    assert sorted(both["object_id"]) == [1, 2, 3, 4, 5, 6]
    assert (both.set_index("object_id")["flag_blended"] == f["flag_blended"]).all()
    empty = forced_photometry_ccd(exp, away.iloc[1:2])
    assert len(empty) == 0 and list(empty.columns) == list(FORCED_SRC_COLUMNS)
    with pytest.raises(ValueError, match=r"without column\(s\) \['dec'\]"):
        forced_photometry_ccd(exp, objects.drop(columns="dec"))
