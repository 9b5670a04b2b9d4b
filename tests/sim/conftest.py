"""The small simulated survey, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsstlite.sim import SurveySummary, simulate_survey


@pytest.fixture(scope="session")
def small_survey(tmp_path_factory: pytest.TempPathFactory) -> SurveySummary:
    """The ``small`` preset, seed 1, written with 2 worker processes."""
    out = tmp_path_factory.getbasetemp() / "sim_small"  # shared with tests/instruments
    return simulate_survey(out, preset="small", seed=1, n_workers=2)


@pytest.fixture(scope="session")
def small_dir(small_survey: SurveySummary) -> Path:
    return small_survey.outdir
