"""Bad input: missing calibrations are reported with their type and the exposure's date."""

from __future__ import annotations

from typing import Any

import pytest

from lsstlite.pipe import Pipeline
from lsstlite.pipe.graph import GraphBuildError
from lsstlite.pipe.run import prepare_run
from lsstlite.stages.isr import IsrTask
from tests.stages.isr.conftest import raw_file, true_calibs


def test_run_without_flat_names_type_and_date(sim_small: Any) -> None:
    calibs = true_calibs(sim_small, 0, "r")
    calibs.pop("flat")
    with pytest.raises(ValueError, match=r"no 'flat' calibration.*day_obs \d{8}.*MJD 6\d{4}") as e:
        IsrTask().run(raw=str(raw_file(sim_small, 103, 0)), flat=None, **calibs)
    assert "do_flat" in str(e.value)
    IsrTask({"do_flat": False}).run(raw=str(raw_file(sim_small, 103, 0)), **calibs)  # fine


def test_graph_without_flat_reports_it(sim_repo: str) -> None:
    """do_flat=True but no flat in the collections: caught at graph building, by data ID."""
    pipe = Pipeline.from_tasks([("isr", IsrTask, {"do_fringe": False})])
    with pytest.raises(GraphBuildError) as e:
        prepare_run(
            sim_repo,
            pipe,
            inputs=["SimCam/raw/all"],
            output="u/test/isr_noflat",
            where="exposure = 103 AND detector = 0",
        )
    flat = [p for p in e.value.problems if "'flat'" in p]
    assert len(flat) == 1, e.value.problems
    assert "exposure" in flat[0] and "MJD" in flat[0] and "day_obs" in flat[0], flat[0]
    assert any("'bias'" in p for p in e.value.problems)
    # switching the steps off removes the problems
    off = {f"do_{k}": False for k in ("bias", "dark", "flat", "defects", "fringe")}
    pipe_off = Pipeline.from_tasks([("isr", IsrTask, off)])
    _, graph = prepare_run(
        sim_repo,
        pipe_off,
        inputs=["SimCam/raw/all"],
        output="u/test/isr_noflat2",
        where="exposure = 103 AND detector = 0",
    )
    assert len(graph.quanta) == 1
