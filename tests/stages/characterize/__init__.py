"""Tests of lsstlite.stages.characterize."""
