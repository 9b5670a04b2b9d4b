"""Tests of lsstlite.stages.quality."""
