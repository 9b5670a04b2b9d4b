"""Instrument tests read raws of the small simulated survey."""

from tests.sim.conftest import small_dir, small_survey

__all__ = ["small_dir", "small_survey"]
