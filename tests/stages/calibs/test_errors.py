"""Bad input to the master calibrations: frames of another shape, and dark times or flat
levels that are not positive, are refused naming the frame (before anything is computed)."""

from __future__ import annotations

import numpy as np
import pytest

from lsstlite.data.exposure import make_exposure
from lsstlite.stages.calibs import ops


def _frame(shape: tuple[int, int], name: str) -> object:
    exp = make_exposure(np.ones(shape, np.float32), variance=np.ones(shape, np.float32))
    exp.attrs["filename"] = name
    return exp


def test_frame_of_another_shape_named() -> None:
    frames = [_frame((20, 10), "a.fits"), _frame((20, 10), "b.fits"), _frame((10, 20), "c.fits")]
    with pytest.raises(ValueError, match=r"input 2 \('c\.fits'\) has shape \(10, 20\), input 0"):
        ops.combine_exposures(frames)


@pytest.mark.parametrize("bad", [0.0, -30.0, float("nan"), float("inf")])
def test_scale_not_positive_named(bad: float) -> None:
    """A dark with no dark time, or a flat with no light, would divide by zero."""
    frames = [_frame((20, 10), "a.fits"), _frame((20, 10), "dark_0007.fits")]
    with pytest.raises(ValueError, match=r"input 1 \('dark_0007\.fits'\) has scale"):
        ops.combine_exposures(frames, scales=[30.0, bad])
    # positive scales: each frame divided by its own (1/30 and 1/15, neither clipped)
    good = ops.combine_exposures(frames, scales=[30.0, 15.0])
    np.testing.assert_allclose(good["image"].values, (1 / 30 + 1 / 15) / 2, rtol=1e-6)
