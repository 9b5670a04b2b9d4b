"""Tests of lsstlite.stages.calibrate."""
