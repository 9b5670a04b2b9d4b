"""Fixtures: every simulated detector through characterisation and calibration (cached)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.stages._postisr import Processed, process_all


@pytest.fixture(scope="session")
def processed(sim_small: Any) -> dict[tuple[int, int], Processed]:
    """``(visit, detector)`` → :class:`~tests.stages._postisr.Processed` (computed once)."""
    return process_all(str(sim_small.outdir))
