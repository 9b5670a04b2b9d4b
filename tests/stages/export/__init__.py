"""Tests of lsstlite.stages.export."""
