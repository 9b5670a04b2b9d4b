"""Tests of lsstlite.stages.detect."""
