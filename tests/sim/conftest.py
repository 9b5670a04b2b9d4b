"""The simulator's tests use the session's small survey (tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def small_survey(sim_small: Any) -> Any:
    """The ``small`` preset, seed 1 (the shared session fixture under its local name)."""
    return sim_small
