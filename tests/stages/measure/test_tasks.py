"""The multi-band tasks chained by hand (as the executor would: get → run → put)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lsstlite.stages.detect.task import MergeDetectionsTask
from lsstlite.stages.measure.task import (
    DeblendMeasureTask,
    ForcedPhotometryTask,
    MakeObjectTableTask,
    MergeMeasurementsTask,
)


def test_tasks_chain(multiband: dict[str, Any]) -> None:
    coadds, dets = multiband["coadds"], multiband["detections"]
    merged = MergeDetectionsTask({"priority": ["i", "r"]}).run(detections=dets, coadds=coadds)
    merged = merged.merged
    config = {"do_cmodel": False}
    meas = [DeblendMeasureTask(config).run(coadd=c, merged=merged).measurement for c in coadds]
    ref = MergeMeasurementsTask({"priority": ["i", "r"]}).run(measurements=meas).reference
    forced = [
        ForcedPhotometryTask(config).run(coadd=c, merged=merged, reference=ref).forced
        for c in coadds
    ]
    objects = MakeObjectTableTask().run(references=[ref], forced=forced[::-1]).objects
    assert np.array_equal(ref["id"], multiband["ref"]["id"])
    assert len(objects) == len(merged) and objects["id"].is_unique
    np.testing.assert_allclose(objects["r_psf_flux"].to_numpy(),
                               forced[0].set_index("id").loc[objects["id"], "psf_flux"])  # fmt: skip
