"""A two-band synthetic patch from the sim_small truth, detected, merged and measured once."""

from __future__ import annotations

from typing import Any

import pytest

from lsstlite.stages.detect.ops import detect_sources, mark_detected, merge_detections
from lsstlite.stages.measure.ops import choose_reference, deblend_measure, forced_photometry
from tests.stages._coadds import render_coadd, truth_catalog

BANDS = ("r", "i")


@pytest.fixture(scope="session")
def multiband() -> dict[str, Any]:
    truth = truth_catalog(BANDS)
    coadds, dets = [], []
    for k, band in enumerate(BANDS):
        coadd = render_coadd(truth, band, seed=10 + k)
        det, seg = detect_sources(coadd)
        coadds.append(mark_detected(coadd, seg))
        dets.append(det)
    merged = merge_detections(dets, coadds, priority=("i", "r"))
    meas = [deblend_measure(c, merged, do_cmodel=False) for c in coadds]
    ref = choose_reference(meas, priority=("i", "r"))
    forced = [forced_photometry(c, merged, ref, do_cmodel=False) for c in coadds]
    return {
        "truth": truth,
        "coadds": coadds,
        "detections": dets,
        "merged": merged,
        "meas": meas,
        "ref": ref,
        "forced": forced,
    }
