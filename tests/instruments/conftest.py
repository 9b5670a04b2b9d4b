"""Instrument tests read raws of the small simulated survey."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsstlite.sim import simulate_survey


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small preset (seed 1) in the same place as ``tests/sim``'s fixture: whichever
    runs second finds it complete and returns at once."""
    out = tmp_path_factory.getbasetemp() / "sim_small"
    return simulate_survey(out, preset="small", seed=1).outdir
