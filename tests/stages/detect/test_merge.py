"""Detection on a coadd and the merge of detections across bands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lsstlite.data.objects import MERGED_DETECTION_COLUMNS
from lsstlite.stages.detect.ops import (
    detect_sources,
    footprints_from_merged,
    mark_detected,
    merge_detections,
)
from tests.stages._coadds import make_wcs, render_coadd


def _stars(xy: list[tuple[float, float]], flux: float = 20000.0) -> pd.DataFrame:
    wcs = make_wcs((120, 120))
    ra, dec = wcs.all_pix2world([p[0] for p in xy], [p[1] for p in xy], 0)
    return pd.DataFrame({"id": np.arange(1, len(xy) + 1), "ra": ra, "dec": dec,
                         "is_star": True, "flux_r": flux, "flux_i": flux,
                         "blend_group": 0})  # fmt: skip


def test_detect_finds_stars_with_segmentation() -> None:
    coadd = render_coadd(_stars([(30.2, 40.7), (90.0, 80.0)]), "r", shape=(120, 120))
    table, seg = detect_sources(coadd)
    assert len(table) == 2 and (table["band"] == "r").all()
    np.testing.assert_allclose(np.sort(table["x"]), [30.2, 90.0], atol=0.3)
    assert set(np.unique(seg.values)) == {0, 1, 2}
    assert (table["footprint_id"] > 0).all()


def test_merge_keeps_priority_positions_and_adds_new_peaks() -> None:
    coadd_r = render_coadd(_stars([(30, 40), (90, 80)]), "r", shape=(120, 120))
    coadd_i = render_coadd(_stars([(30, 40), (60, 20)]), "i", shape=(120, 120))
    dets, coadds = [], []
    for c in (coadd_r, coadd_i):
        t, s = detect_sources(c)
        dets.append(t)
        coadds.append(mark_detected(c, s))
    merged = merge_detections(dets, coadds, priority=["i", "r"])
    assert list(merged.columns) == list(MERGED_DETECTION_COLUMNS)
    assert len(merged) == 3 and merged["id"].is_unique
    both = merged[merged["detected_bands"] == "i,r"]
    assert len(both) == 1 and both["first_band"].iloc[0] == "i"
    i_pos = dets[1].sort_values("x").iloc[0]
    assert both["x"].iloc[0] == pytest.approx(i_pos["x"])
    fps = footprints_from_merged(merged)
    assert len(fps) == 3
    for (y0, y1, x0, x1), mask in fps.values():
        assert mask.shape == (y1 - y0, x1 - x0) and mask.any()


def test_merge_needs_band_column() -> None:
    coadd = render_coadd(_stars([(30, 40)]), "r", shape=(120, 120))
    table, _ = detect_sources(coadd)
    with pytest.raises(ValueError, match="band"):
        merge_detections([table.drop(columns="band")], [coadd])
    with pytest.raises(ValueError, match="√2 pixels"):
        merge_detections([table], [coadd], match_radius_arcsec=0.1)


def test_one_peak_where_the_variance_jumps() -> None:
    """A bright star whose core some visits left out (a block of higher variance, as a
    coadd has where they saturated) is one peak, at the star: the maxima of the
    significance were a ring around the block."""
    coadd = render_coadd(_stars([(60.4, 60.6)], flux=2e6), "r", shape=(120, 120))
    image = coadd["image"].values
    variance = coadd["variance"].values + 0.05 * np.maximum(image, 0.0)  # shot noise
    variance[57:64, 57:63] *= 4.0  # a quarter of the visits there
    coadd = coadd.assign(variance=coadd["variance"].copy(data=variance.astype(np.float32)))
    table, _ = detect_sources(coadd)
    assert len(table) == 1, table[["x", "y", "peak"]]
    assert np.hypot(table["x"].iloc[0] - 60.4, table["y"].iloc[0] - 60.6) < 0.3


def test_one_peak_per_saturated_core() -> None:
    """A star saturated in every visit is a hole in the coadd (NO_DATA, INEXACT_PSF,
    SAT), not centred on it when the charge bled along a column: one peak, in the hole;
    a star 12 px away stays its own."""
    from lsstlite.data.masks import mask_bits, mask_planes

    coadd = render_coadd(_stars([(60.4, 60.6), (72.3, 60.2)], flux=2e6), "r", shape=(120, 120))
    planes = mask_planes(coadd)
    image, mask = coadd["image"].values.copy(), coadd["mask"].values.copy()
    yy, xx = np.mgrid[0:120, 0:120]
    # the core, and a bleed trail up the column
    hole = ((xx - 60.4) ** 2 + (yy - 60.6) ** 2 <= 5.0) | (
        (abs(xx - 60.4) < 1) & (yy > 60) & (yy < 69)
    )
    mask[hole] |= mask_bits(planes, ["NO_DATA", "INEXACT_PSF", "SAT"])
    image[hole] = np.nan
    coadd = coadd.assign(image=coadd["image"].copy(data=image), mask=coadd["mask"].copy(data=mask))
    table, _ = detect_sources(coadd)
    assert len(table) == 2, table[["x", "y", "peak"]]
    near = table.iloc[np.argmin(np.hypot(table["x"] - 60.4, table["y"] - 60.6))]
    assert hole[round(near["y"]), round(near["x"])]
    assert np.hypot(table["x"] - 72.3, table["y"] - 60.2).min() < 0.3
