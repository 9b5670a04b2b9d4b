"""Tests of lsstlite.stages.measure."""
