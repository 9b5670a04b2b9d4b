"""Multi-band measurement against the truth of synthetic coadds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from lsstlite.data.objects import PARENT_ID_BIT, object_columns
from lsstlite.stages.detect.ops import detect_sources, mark_detected, merge_detections
from lsstlite.stages.measure.ops import (
    choose_reference,
    deblend_measure,
    forced_photometry,
    make_object_table,
)
from tests.stages._coadds import FWHM_PX, make_wcs, render_coadd, star_pairs


def _xyz(ra: Any, dec: Any) -> np.ndarray:
    r, d = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)


def _isolated_stars(truth: pd.DataFrame, table: pd.DataFrame, band: str) -> pd.DataFrame:
    """Rows of ``table`` matched (< 0.5″) to truth stars with no neighbour adding > 1 %
    of their flux within 5″ (confusion is not part of the expected noise)."""
    tree = cKDTree(_xyz(truth["ra"], truth["dec"]))
    dist, idx = tree.query(_xyz(table["ra"], table["dec"]))
    sep = np.degrees(dist) * 3600.0
    flux = truth[f"flux_{band}"].to_numpy()
    isolated = []
    for _k, j in enumerate(idx):
        near = tree.query_ball_point(_xyz(truth["ra"].iloc[[j]], truth["dec"].iloc[[j]])[0],
                                     np.radians(5.0 / 3600.0))  # fmt: skip
        isolated.append(all(n == j or flux[n] < 0.01 * flux[j] for n in near))
    m = truth.iloc[idx].reset_index(drop=True)
    keep = (sep < 0.5) & m["is_star"].to_numpy() & np.array(isolated)
    keep &= ~table["flag_edge"].to_numpy() & (table["parent_id"].to_numpy() == 0)
    out = table[keep].reset_index(drop=True)
    return out.join(m[keep].reset_index(drop=True).add_prefix("true_"))


def test_positions_match_truth(multiband: dict[str, Any]) -> None:
    ref = multiband["ref"]
    stars = _isolated_stars(multiband["truth"], ref, "i")
    snr = stars["psf_flux"] / stars["psf_flux_err"]
    stars = stars[snr > 20]
    assert len(stars) > 50
    dra = (stars["ra"] - stars["true_ra"]) * np.cos(np.radians(stars["dec"])) * 3.6e6
    ddec = (stars["dec"] - stars["true_dec"]) * 3.6e6
    rms = float(np.sqrt(np.mean(dra**2 + ddec**2)))
    assert rms < 20.0, f"position rms {rms:.1f} mas"


def test_forced_colours_match_truth(multiband: dict[str, Any]) -> None:
    r, i = multiband["forced"]
    assert (r["band"] == "r").all() and (i["band"] == "i").all()
    table = i.assign(r_flux=r["psf_flux"].to_numpy(), r_err=r["psf_flux_err"].to_numpy())
    stars = _isolated_stars(multiband["truth"], table, "i")
    stars = stars[stars["psf_flux"] / stars["psf_flux_err"] > 20]
    colour = -2.5 * np.log10(stars["r_flux"] / stars["psf_flux"])
    true = -2.5 * np.log10(stars["true_flux_r"] / stars["true_flux_i"])
    expected = 1.0857 * np.hypot(stars["r_err"] / stars["r_flux"],
                                 stars["psf_flux_err"] / stars["psf_flux"])  # fmt: skip
    chi = (colour - true) / expected
    assert len(chi) > 50
    assert float(np.sqrt(np.mean(chi**2))) < 1.2


def test_rows_align(multiband: dict[str, Any]) -> None:
    ids = multiband["merged"]["id"].to_numpy()
    ref = multiband["ref"]
    for table in (*multiband["meas"], *multiband["forced"]):
        assert np.array_equal(table["id"].to_numpy(), ref["id"].to_numpy())
    # every merged peak is an object; parents carry the parent bit
    children = ref[ref["deblend_n_child"] == 0]
    assert set(children["id"]) == set(ids)
    parents = ref[ref["deblend_n_child"] > 0]
    assert ((parents["id"].to_numpy() & PARENT_ID_BIT) != 0).all()
    assert set(ref["ref_band"]) <= {"r", "i"}
    objects = make_object_table([ref], multiband["forced"])
    assert list(objects.columns) == object_columns(["r", "i"])
    assert objects["id"].is_unique and len(objects) == len(ids)
    assert objects[["r_psf_flux", "i_psf_flux"]].notna().all().all()


def test_children_sum_to_parent(multiband: dict[str, Any]) -> None:
    for table in multiband["meas"]:
        parents = table[table["deblend_n_child"] > 0]
        assert len(parents) > 5
        sums = table[table["parent_id"] != 0].groupby("parent_id")["footprint_flux"].sum()
        np.testing.assert_allclose(
            sums.loc[parents["id"]].to_numpy(), parents["footprint_flux"].to_numpy(),
            rtol=1e-9, atol=1e-6,
        )  # fmt: skip


def test_blended_pairs_are_deblended() -> None:
    pairs = star_pairs(64, fwhm_px=FWHM_PX["i"])
    coadd = render_coadd(pairs, "i", seed=5)
    det, seg = detect_sources(coadd)
    coadd = mark_detected(coadd, seg)
    meas = deblend_measure(coadd, merge_detections([det], [coadd], priority=["i"]),
                           do_cmodel=False)  # fmt: skip
    kids = meas[meas["deblend_n_child"] == 0]
    dist, idx = cKDTree(_xyz(pairs["ra"], pairs["dec"])).query(_xyz(kids["ra"], kids["dec"]))
    kids = kids.assign(true_id=pairs["id"].to_numpy()[idx], sep=np.degrees(dist) * 3600)
    truth = pairs.set_index("id")["flux_i"]
    good = 0
    for _, pair in pairs.groupby("blend_group"):
        found = kids[kids["true_id"].isin(pair["id"]) & (kids["sep"] < 0.5)]
        if len(found) != 2 or found["true_id"].nunique() != 2 or found["parent_id"].nunique() != 1:
            continue
        if found["parent_id"].iloc[0] == 0:
            continue
        rel = found["psf_flux"].to_numpy() / truth.loc[found["true_id"]].to_numpy() - 1.0
        good += bool(np.all(np.abs(rel) < 0.05))
    assert good >= 0.95 * pairs["blend_group"].nunique()


def test_cmodel_recovers_galaxy_flux() -> None:
    wcs = make_wcs((160, 160))
    rows = []
    for k, (x, y, n, hlr) in enumerate([(40, 40, 1.0, 0.5), (120, 40, 4.0, 0.4),
                                        (40, 120, 1.0, 0.9), (120, 120, 4.0, 0.7)]):  # fmt: skip
        ra, dec = wcs.all_pix2world([x + 0.3], [y - 0.2], 0)
        rows.append({"id": k + 1, "ra": ra[0], "dec": dec[0], "is_star": False,
                     "flux_i": 30000.0, "sersic_n": n, "hlr_arcsec": hlr, "q": 0.7,
                     "pa_deg": 30.0 * k, "blend_group": 0})  # fmt: skip
    truth = pd.DataFrame(rows)
    coadd = render_coadd(truth, "i", shape=(160, 160), noise_njy=1.0, seed=2)
    det, seg = detect_sources(coadd)
    coadd = mark_detected(coadd, seg)
    meas = deblend_measure(coadd, merge_detections([det], [coadd], priority=["i"]))
    assert len(meas) == 4
    np.testing.assert_allclose(meas["cmodel_flux"], 30000.0, rtol=0.07)
    assert not meas["flag_cmodel"].any()


def test_cmodel_of_bright_stars_is_their_flux() -> None:
    """Stars' CModel fluxes are their PSF fluxes (0.5%) with the same errors (10%): both
    templates shrink to the PSF at the stars' sub-pixel positions. (Before, a sub-pixel
    profile was drawn at the offset and landed in one pixel, so the template was off
    centre and stars came out 1-4% bright; earlier still, with the analytic
    normalisation of tiny profiles and an inverted singular 2×2 fit, 4-6% and worse.)"""
    wcs = make_wcs((200, 200))
    rows = []
    for k, (x, y) in enumerate([(40.3, 40.1), (120.7, 40.5), (40.5, 120.9), (120.1, 120.6),
                                (160.9, 80.2), (80.4, 160.7)]):  # fmt: skip
        ra, dec = wcs.all_pix2world([x], [y], 0)
        rows.append({"id": k + 1, "ra": ra[0], "dec": dec[0], "is_star": True,
                     "flux_i": 2e4 * (1 + k), "blend_group": 0})  # fmt: skip
    truth = pd.DataFrame(rows)
    coadd = render_coadd(truth, "i", shape=(200, 200), noise_njy=1.0, seed=5)
    det, seg = detect_sources(coadd)
    coadd = mark_detected(coadd, seg)
    merged = merge_detections([det], [coadd], priority=["i"])
    meas = deblend_measure(coadd, merged)
    assert len(meas) == len(truth)
    ratio = meas["cmodel_flux"] / meas["psf_flux"]
    np.testing.assert_allclose(ratio, 1.0, atol=0.005)
    err = meas["cmodel_flux_err"] / meas["psf_flux_err"]
    np.testing.assert_allclose(err, 1.0, atol=0.1)
    assert not meas["flag_cmodel"].any()
    # forced at the reference (same band): the reference's radii and frac_dev, one amplitude
    ref = choose_reference([meas], priority=["i"])
    forced = forced_photometry(coadd, merged, ref)
    both = meas.merge(forced, on="id", suffixes=("", "_forced"))
    assert len(both) == len(meas)
    np.testing.assert_allclose(both["cmodel_flux_forced"], both["cmodel_flux"], rtol=1e-3)


def test_cmodel_joint_fit_of_identical_templates_is_the_single_fit() -> None:
    """Both templates the PSF to round-off (a star with both radii at the grid's
    bottom): the total and its variance are those of the one-template fit."""
    from lsstlite.stages.measure.ops import _joint_amplitudes

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[-12:13, -12:13]
    psf = np.exp(-(xx**2 + yy**2) / 8.0).ravel()
    psf /= psf.sum()
    wgt = 1.0 / (1.0 + 0.01 * psf * 1e5)
    data = 1e5 * psf + rng.normal(0.0, 1.0 / np.sqrt(wgt))
    single = np.dot(psf * wgt, data) / np.dot(psf * wgt, psf)
    for eps in (0.0, 1e-15, 1e-12):
        pair = np.stack([psf, psf * (1.0 + eps * rng.standard_normal(psf.size))], axis=1)
        fit = _joint_amplitudes(pair, data, wgt)
        assert fit is not None
        amps, cov = fit
        assert np.all(amps > 0)
        np.testing.assert_allclose(amps.sum(), single, rtol=1e-6)
        np.testing.assert_allclose(cov.sum(), 1.0 / np.dot(psf * wgt, psf), rtol=1e-6)
    # distinct templates: the ordinary least-squares solution
    other = np.exp(-(xx**2 + yy**2) / 30.0).ravel()
    pair = np.stack([psf, other / other.sum()], axis=1)
    amps, cov = _joint_amplitudes(pair, data + 3e4 * pair[:, 1], wgt)  # type: ignore[misc]
    want = np.linalg.solve(
        pair.T @ (pair * wgt[:, None]), pair.T @ ((data + 3e4 * pair[:, 1]) * wgt)
    )
    np.testing.assert_allclose(amps, want, rtol=1e-9)
    assert _joint_amplitudes(np.zeros((10, 2)), np.ones(10), np.ones(10)) is None


def test_reference_band_follows_priority(multiband: dict[str, Any]) -> None:
    meas = multiband["meas"]
    ref_r_first = choose_reference(meas, priority=("r", "i"))
    multiband["ref"]
    bright = (meas[0]["psf_flux"] / meas[0]["psf_flux_err"] > 50).to_numpy()
    bright = (
        bright & ~meas[0][["flag_centroid", "flag_psf_flux", "flag_masked"]].any(axis=1).to_numpy()
    )
    assert (ref_r_first["ref_band"].to_numpy()[bright] == "r").all()
    with pytest.raises(ValueError, match="same ids"):
        choose_reference([meas[0], meas[1].iloc[::-1]])


def test_saturated_cores_flagged() -> None:
    """Stars whose cores no visit could use because they saturated (NO_DATA, INEXACT_PSF
    and SAT in the coadd's mask, as the coadd marks them) are one object each (not a
    parent split into pieces of the ring around the hole), centred, flag_saturated and
    flag_masked; one over a defect (BAD) only flag_masked; an untouched one neither. A
    star saturated in some visits (SAT and INEXACT_PSF, with the others' values) is
    measured from all its pixels: flag_saturated and flag_inexact_psf, not flag_masked."""
    from lsstlite.data.masks import mask_bits, mask_planes

    wcs = make_wcs((200, 200))
    where = [(50.3, 50.6), (150.2, 50.1), (50.7, 150.4), (150.5, 150.2), (100.4, 99.7)]
    rows = []
    for k, (x, y) in enumerate(where):
        ra, dec = wcs.all_pix2world([x], [y], 0)
        rows.append({"id": k + 1, "ra": ra[0], "dec": dec[0], "is_star": True,
                     "flux_i": 2e6, "blend_group": 0})  # fmt: skip
    coadd = render_coadd(pd.DataFrame(rows), "i", shape=(200, 200), noise_njy=1.0, seed=3)
    planes = mask_planes(coadd)
    hole = mask_bits(planes, ["NO_DATA", "INEXACT_PSF"])
    why = {0: mask_bits(planes, "SAT"), 1: mask_bits(planes, "SAT"), 2: mask_bits(planes, "BAD")}
    image, mask = coadd["image"].values.copy(), coadd["mask"].values.copy()
    yy, xx = np.mgrid[0:200, 0:200]
    for k, bits in why.items():
        core = (xx - where[k][0]) ** 2 + (yy - where[k][1]) ** 2 <= 4.0
        mask[core] |= hole | bits
        image[core] = np.nan
    core = (xx - where[4][0]) ** 2 + (yy - where[4][1]) ** 2 <= 4.0
    mask[core] |= mask_bits(planes, ["SAT", "INEXACT_PSF"])  # saturated in some visits
    coadd = coadd.assign(image=coadd["image"].copy(data=image), mask=coadd["mask"].copy(data=mask))
    det, seg = detect_sources(coadd)
    coadd = mark_detected(coadd, seg)
    meas = deblend_measure(coadd, merge_detections([det], [coadd], priority=["i"]),
                           do_cmodel=False)  # fmt: skip
    assert len(meas) == 5
    k = np.argmin(np.hypot(meas["x"].to_numpy()[:, None] - [w[0] for w in where],
                           meas["y"].to_numpy()[:, None] - [w[1] for w in where]), axis=1)  # fmt: skip
    assert sorted(k) == [0, 1, 2, 3, 4]
    # one peak each (before: a parent and two children on the ring around the hole),
    # centred from the pixels around the hole
    assert (meas["parent_id"] == 0).all() and (meas["deblend_n_child"] == 0).all()
    dx = meas["x"].to_numpy() - np.array([where[i][0] for i in k])
    dy = meas["y"].to_numpy() - np.array([where[i][1] for i in k])
    assert np.hypot(dx, dy).max() < 0.15  # (was 1.5-2 px: the peak on the ring)
    saturated, masked = meas["flag_saturated"].to_numpy(), meas["flag_masked"].to_numpy()
    inexact = meas["flag_inexact_psf"].to_numpy()
    assert saturated[(k < 2) | (k == 4)].all() and not saturated[(k == 2) | (k == 3)].any()
    assert masked[k < 3].all() and not masked[k >= 3].any()
    assert inexact[k != 3].all() and not inexact[k == 3].any()
    # all its pixels measured: the PSF flux of the partly saturated star is right
    flux = meas["psf_flux"].to_numpy()
    assert abs(flux[k == 4][0] / flux[k == 3][0] - 1.0) < 0.01
