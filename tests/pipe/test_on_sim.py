"""The execution layer on the simulated survey's raws (no science: sums and failures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from lsstlite.pipe.graph import GraphBuildError
from lsstlite.pipe.pipeline import Pipeline
from lsstlite.pipe.run import prepare_run, run_pipeline
from lsstlite.repo import Butler
from tests.pipe.toy_tasks import (
    NeedsMasterFlatTask,
    NeedsRefcatTask,
    RawStatsTask,
    RawVisitSumTask,
)


def test_sum_raws_with_one_failing_exposure(sim_repo: str, client: Any) -> None:
    pipe = Pipeline.from_tasks(
        [("stats", RawStatsTask, {"fail_exposure": 102}), ("visit_sum", RawVisitSumTask, {})]
    )
    report = run_pipeline(
        sim_repo, pipe, inputs="SimCam/raw/all", output="u/test/sums", client=client
    )
    n_det = 2
    # 6 science exposures × 2 detectors; exposure 102 fails on both detectors and blocks its sum
    assert report.count("failed") == n_det and report.count("blocked") == 1
    assert report.count("succeeded") == 5 * n_det + 5
    butler = Butler(sim_repo, collections="u/test/sums")
    ref = butler.query_datasets("raw_visit_sum")[0]
    expected = 0.0
    for det in range(n_det):
        path = butler.get("raw", {**ref.data_id, "detector": det}, collections="SimCam/raw/all")
        with fits.open(path) as hdul:
            expected += sum(float(h.data.astype(np.float64).sum()) for h in hdul[1:])
    total = butler.get(ref)
    assert total["n"] == n_det and total["sum"] == pytest.approx(expected, rel=1e-12)


def test_missing_master_flat_is_reported_for_every_exposure(sim_repo: str) -> None:
    with pytest.raises(GraphBuildError) as info:
        prepare_run(
            sim_repo,
            Pipeline.from_tasks([NeedsMasterFlatTask]),
            inputs=["SimCam/raw/all"],
            output="u/test/flat",
        )
    problems = info.value.problems
    assert len(problems) == 12  # every science raw: 6 exposures × 2 detectors
    assert all("missing calibration 'flat'" in p and "SimCam/raw/all" in p for p in problems)
    assert any("physical_filter: 'SIM-r'" in p and "day_obs" in p for p in problems)


def test_problems_downstream_of_a_broken_quantum_are_reported_too(sim_repo: str) -> None:
    """A missing calibration and, downstream of it, a missing reference catalog: one
    build reports both (the outputs of the broken quanta are predicted all the same)."""
    with pytest.raises(GraphBuildError) as info:
        prepare_run(
            sim_repo,
            Pipeline.from_tasks([NeedsMasterFlatTask, NeedsRefcatTask]),
            inputs=["SimCam/raw/all"],
            output="u/test/refcat",
        )
    problems = info.value.problems
    assert sum("missing calibration 'flat'" in p for p in problems) == 12
    assert sum("missing prerequisite 'refcat'" in p for p in problems) == 6  # per exposure
    assert len(problems) == 18


def test_qgraph_dot_on_the_survey(sim_repo: str, tmp_path: Path) -> None:
    pipe = Pipeline.from_tasks([("stats", RawStatsTask, {}), ("visit_sum", RawVisitSumTask, {})])
    _, graph = prepare_run(
        sim_repo, pipe, inputs=["SimCam/raw/all"], output="u/test/dot", where="band = 'i'"
    )
    assert graph.counts() == {"stats": 6, "visit_sum": 3}
    dot = graph.to_dot()
    assert dot.count("->") == 6  # each detector quantum feeds its visit's sum
