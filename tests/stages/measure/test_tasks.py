"""The multi-band tasks chained by hand (as the executor would: get → run → put)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lsstlite.stages.detect.task import MergeDetectionsTask
from lsstlite.stages.measure.ops import forced_photometry
from lsstlite.stages.measure.task import (
    DeblendMeasureTask,
    ForcedPhotometryTask,
    MakeObjectTableTask,
    MergeMeasurementsTask,
)


def _parquet_round_trip(frame: pd.DataFrame) -> pd.DataFrame:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame), sink)
    return pq.read_table(io.BytesIO(sink.getvalue())).to_pandas()


def test_tasks_chain(multiband: dict[str, Any]) -> None:
    coadds, dets = multiband["coadds"], multiband["detections"]
    merged = MergeDetectionsTask({"priority": ["i", "r"]}).run(detections=dets, coadds=coadds)
    merged = merged.merged
    config = {"do_cmodel": False}
    results = [DeblendMeasureTask(config).run(coadd=c, merged=merged) for c in coadds]
    meas = [r.measurement for r in results]
    # the children's pixels go through the repository's Table format (Parquet)
    deblended = [_parquet_round_trip(r.deblended) for r in results]
    ref = MergeMeasurementsTask({"priority": ["i", "r"]}).run(measurements=meas).reference
    forced = [
        ForcedPhotometryTask(config).run(coadd=c, merged=merged, reference=ref, deblended=d).forced
        for c, d in zip(coadds, deblended, strict=True)
    ]
    # the same as deblending each band again, as the stand-alone op does
    for c, table in zip(coadds, forced, strict=True):
        again = forced_photometry(c, merged, ref, do_cmodel=False)
        pd.testing.assert_frame_equal(table, again)
    objects = MakeObjectTableTask().run(references=[ref], forced=forced[::-1]).objects
    assert np.array_equal(ref["id"], multiband["ref"]["id"])
    assert len(objects) == len(merged) and objects["id"].is_unique
    np.testing.assert_allclose(objects["r_psf_flux"].to_numpy(),
                               forced[0].set_index("id").loc[objects["id"], "psf_flux"])  # fmt: skip


def test_forced_rejects_foreign_deblend(multiband: dict[str, Any]) -> None:
    coadd, merged, ref = multiband["coadds"][0], multiband["merged"], multiband["ref"]
    results = DeblendMeasureTask({"do_cmodel": False}).run(coadd=coadd, merged=merged)
    children = results.deblended
    assert len(children) > 10
    broken = children.copy()
    broken.loc[0, "pixels"] = broken.loc[0, "pixels"][:-1]
    with pytest.raises(ValueError, match=rf"coadd_deblend of band 'r'.*object {children['id'][0]}"):
        forced_photometry(coadd, merged, ref, do_cmodel=False, deblended=broken)
    with pytest.raises(ValueError, match=r"coadd_deblend .*\(missing\)"):
        forced_photometry(coadd, merged, ref, do_cmodel=False, deblended=children.iloc[1:])
