"""Visit summaries, selection into a TAGGED collection, plots, and the tasks end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsstlite.pipe import Pipeline
from lsstlite.pipe.run import run_pipeline
from lsstlite.repo import Butler
from lsstlite.stages.calibrate import CalibrateTask
from lsstlite.stages.characterize import CharacterizeTask
from lsstlite.stages.quality import (
    SUMMARY_COLUMNS,
    SelectVisitsConfig,
    VisitSummaryTask,
    make_visit_summary,
    plot_visit_quality,
    select_good_detectors,
    select_visits,
)
from tests.stages._postisr import Processed

Results = dict[tuple[int, int], Processed]


def _summary(processed: Results) -> Any:
    calexps = [p.calibrated.calexp for p in processed.values()]
    srcs = [p.calibrated.src for p in processed.values()]
    return make_visit_summary(calexps, srcs)


def test_visit_summary_against_truth(processed: Results) -> None:
    table = _summary(processed)
    assert list(table.columns) == list(SUMMARY_COLUMNS)
    assert len(table) == len(processed)
    truth = {(p.visit, p.detector): p.truth for p in processed.values()}
    for row in table.itertuples():
        t = truth[(row.visit, row.detector)]
        assert row.psf_fwhm_arcsec == pytest.approx(t["psf_fwhm_arcsec"], rel=0.02)
        assert row.psf_e1 == pytest.approx(t["psf_e1"], abs=0.01)
        assert row.zero_point == pytest.approx(t["zero_point"], abs=0.01)
        assert row.n_ref_matched >= 20
        assert row.sky == pytest.approx(t["sky"], rel=0.02)
        # Gaussian-equivalent size of Moffat stars: larger than their FWHM.
        assert 1.0 < row.star_fwhm_arcsec / t["psf_fwhm_arcsec"] < 1.25


def test_selection_cuts_and_plot(processed: Results, tmp_path: Path) -> None:
    table = _summary(processed)
    fwhm = np.sort(table["psf_fwhm_arcsec"].to_numpy())
    cut = float(fwhm[len(fwhm) // 2])
    sel = select_good_detectors(
        table, SelectVisitsConfig(max_fwhm_arcsec=cut, min_good_detectors=2)
    )
    bad = sel[~sel["good_detector"]]
    assert (bad["psf_fwhm_arcsec"] >= cut).all() and bad["reason"].str.contains("fwhm").all()
    # A visit needs both detectors to be good.
    for _, rows in sel.groupby("visit"):
        assert rows["good_visit"].all() == rows["good_detector"].all()
    assert not select_good_detectors(table, SelectVisitsConfig(min_ref_matched=10_000))[
        "good_detector"
    ].any()
    png = plot_visit_quality(table, tmp_path / "fp.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_tasks_through_the_executor(processed: Results, sim_repo: str, tmp_path: Path) -> None:
    """post_isr → characterize → calibrate → visit_summary → select_visits (TAGGED)."""
    butler = Butler(sim_repo, run="sf_test/post_isr")
    from lsstlite.repo._dataset_types import STANDARD_DATASET_TYPES

    butler.register_dataset_type(STANDARD_DATASET_TYPES["post_isr"])
    for (visit, detector), p in processed.items():
        if visit in (101, 105):
            butler.put(
                p.post_isr,
                "post_isr",
                {"instrument": "SimCam", "exposure": visit, "detector": detector},
            )
    pipeline = Pipeline.from_tasks([CharacterizeTask, CalibrateTask, VisitSummaryTask])
    report = run_pipeline(
        sim_repo,
        pipeline,
        inputs=["sf_test/post_isr", "refcats"],
        output="sf_test/out",
        n_workers=1,
    )
    assert report.ok, report.table()
    butler = Butler(sim_repo, collections=["sf_test/out"])
    summary = butler.get("visit_summary", {"instrument": "SimCam", "exposure": 105})
    assert sorted(summary["detector"]) == [0, 1]
    table = select_visits(
        butler,
        "sf_test/out",
        "sf_test/good",
        {"max_fwhm_arcsec": 1.2, "min_good_detectors": 2},
        plot=tmp_path / "q.png",
    )
    n_good = int((table["good_detector"] & table["good_visit"]).sum())
    tagged = butler.query_datasets("calexp", collections="sf_test/good")
    assert len(tagged) == n_good > 0
