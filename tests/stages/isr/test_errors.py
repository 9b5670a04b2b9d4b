"""Bad input: missing calibrations are reported with their type and the exposure's date;
unreadable raws, calibrations of another detector and bad defect rows by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lsstlite.data.exposure import make_exposure
from lsstlite.data.masks import mask_bits, mask_planes
from lsstlite.instruments import RawReadError
from lsstlite.pipe import Pipeline
from lsstlite.pipe.graph import GraphBuildError
from lsstlite.pipe.run import prepare_run
from lsstlite.stages.isr import IsrTask
from tests.stages.isr.conftest import raw_file, true_calibs


def test_run_without_flat_names_type_and_date(sim_small: Any) -> None:
    calibs = true_calibs(sim_small, 0, "r")
    calibs.pop("flat")
    with pytest.raises(ValueError, match=r"no 'flat' calibration.*day_obs \d{8}.*MJD 6\d{4}") as e:
        IsrTask().run(raw=str(raw_file(sim_small, 103, 0)), flat=None, **calibs)
    assert "do_flat" in str(e.value)
    IsrTask({"do_flat": False}).run(raw=str(raw_file(sim_small, 103, 0)), **calibs)  # fine


def test_graph_without_flat_reports_it(sim_repo: str) -> None:
    """do_flat=True but no flat in the collections: caught at graph building, by data ID."""
    pipe = Pipeline.from_tasks([("isr", IsrTask, {"do_fringe": False})])
    with pytest.raises(GraphBuildError) as e:
        prepare_run(
            sim_repo,
            pipe,
            inputs=["SimCam/raw/all"],
            output="u/test/isr_noflat",
            where="exposure = 103 AND detector = 0",
        )
    flat = [p for p in e.value.problems if "'flat'" in p]
    assert len(flat) == 1, e.value.problems
    assert "exposure" in flat[0] and "MJD" in flat[0] and "day_obs" in flat[0], flat[0]
    assert any("'bias'" in p for p in e.value.problems)
    # switching the steps off removes the problems
    off = {f"do_{k}": False for k in ("bias", "dark", "flat", "defects", "fringe")}
    pipe_off = Pipeline.from_tasks([("isr", IsrTask, off)])
    _, graph = prepare_run(
        sim_repo,
        pipe_off,
        inputs=["SimCam/raw/all"],
        output="u/test/isr_noflat2",
        where="exposure = 103 AND detector = 0",
    )
    assert len(graph.quanta) == 1


def test_unreadable_raw_named(tmp_path: Path) -> None:
    """A file that is not FITS fails with the raw's path, not astropy's bare message."""
    bad = tmp_path / "not_a_raw.fits"
    bad.write_text("SIMPLE? no")
    with pytest.raises(RawReadError, match=r"raw file '.*not_a_raw\.fits': cannot read"):
        IsrTask({"do_flat": False}).run(raw=str(bad))


def test_calibration_of_another_detector_named(sim_small: Any) -> None:
    """A calibration whose shape is not the detector's names itself, the raw's file and
    its exposure and detector (at graph building: nothing is computed)."""
    calibs = true_calibs(sim_small, 0, "r")
    raw = raw_file(sim_small, 103, 0)
    calibs["dark"] = make_exposure(np.zeros((64, 32), np.float32))
    with pytest.raises(ValueError, match=r"dark has shape \(64, 32\)") as e:
        IsrTask().run(raw=str(raw), **calibs)
    assert raw.name in str(e.value) and "exposure 103, detector 0" in str(e.value)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"width": -3}, r"defects row 1: width -3 and height 4 must be positive \(1 such row\)"),
        ({"height": 0}, r"defects row 1: width 2 and height 0 must be positive"),
        ({"x0": np.nan}, r"defects row 1: x0 = nan is not an integer pixel"),
        ({"y0": 2.5}, r"defects row 1: y0 = 2.5 is not an integer pixel"),
        ({"x0": 10**6}, r"defects row 1 \(x0, y0, width, height = \(1000000, 7, 2, 4\)\) lies "),
        ({"y0": -9}, r"defects row 1 .* lies outside the \d+ × \d+ detector of raw '.*'"),
    ],
)
def test_bad_defect_rows_named(sim_small: Any, row: dict[str, float], match: str) -> None:
    """A defects table with a box without area, a value that is not an integer pixel, or a
    box wholly off the detector (another detector's table) is refused, naming the row."""
    calibs = true_calibs(sim_small, 0, "r")
    raw = raw_file(sim_small, 103, 0)
    table = pd.DataFrame({"x0": [3, 5], "y0": [0, 7], "width": [1, 2], "height": [9, 4]})
    bad = table.astype(float)
    for key, value in row.items():
        bad.loc[1, key] = value
    with pytest.raises(ValueError, match=match):
        IsrTask().run(raw=str(raw), **{**calibs, "defects": bad})


def test_defect_partly_off_detector_clipped(sim_small: Any) -> None:
    """A box partly off the detector is clipped: its pixels inside are BAD, no others."""
    calibs = true_calibs(sim_small, 0, "r")
    raw = raw_file(sim_small, 103, 0)
    edge = pd.DataFrame({"x0": [-2], "y0": [10], "width": [4], "height": [3]})
    post = IsrTask({"do_bf": False}).run(raw=str(raw), **{**calibs, "defects": edge}).post_isr
    bad_bit = mask_bits(mask_planes(post), "BAD")
    mask = post["mask"][8:15, 0:4].values
    assert ((mask[2:5, 0:2] & bad_bit) != 0).all()
    assert not (mask[:, 2:] & bad_bit).any() and not (mask[[0, 1, 5, 6]] & bad_bit).any()


def test_missing_or_bad_dark_time_named(sim_small: Any) -> None:
    """Dark subtraction needs the exposure's dark time: absent or not a duration, the
    error names the raw; ``dark_time=`` given, the header is not needed."""
    from lsstlite.stages.isr import ops
    from lsstlite.stages.isr.task import read_raw

    calibs = true_calibs(sim_small, 0, "r")
    raw = read_raw(raw_file(sim_small, 103, 0))
    info = dict(raw.attrs["visit_info"])
    for bad, match in ((None, "has no darktime/exptime"), (float("nan"), "not a duration")):
        ds = raw.copy()
        ds.attrs = {**raw.attrs, "visit_info": {**info, "darktime": bad, "exptime": bad}}
        with pytest.raises(ValueError, match=match) as e:
            ops.isr_stacked(ds, dark=calibs["dark"])
        assert "exposure 103, detector 0" in str(e.value)
        assert ops.isr_stacked(ds, dark=calibs["dark"], dark_time=30.0).attrs["isr_steps"]


def test_calibration_made_for_another_detector_or_filter_refused(
    calib_repo: str, sim_small: Any
) -> None:
    """The master calibrations record what they are for; the ISR refuses one of another
    detector or filter (the detectors have one shape, so nothing else would notice),
    naming it and the raw, at graph building. The right ones are taken."""
    from lsstlite.repo import Butler
    from tests.stages.conftest import CALIB_COLLECTION

    def get(kind: str, **data_id: Any) -> Any:
        return Butler(calib_repo).get(
            kind, {"instrument": "SimCam", **data_id}, collections=[CALIB_COLLECTION], mjd=61001.0
        )

    raw = str(raw_file(sim_small, 103, 0))  # detector 0, SIM-r
    right = {
        "bias": get("bias", detector=0),
        "dark": get("dark", detector=0),
        "flat": get("flat", detector=0, physical_filter="SIM-r"),
        "defects": get("defects", detector=0),
    }
    assert right["flat"].attrs["calib_for"] == {
        "instrument": "SimCam",
        "detector": 0,
        "physical_filter": "SIM-r",
    }
    assert right["bias"].attrs["calib_for"] == {"instrument": "SimCam", "detector": 0}
    assert set(right["defects"]["detector"]) == {0}
    assert IsrTask().run(raw=raw, **right).post_isr.attrs["isr_steps"]
    wrong = {
        "bias": get("bias", detector=1),
        "flat": get("flat", detector=0, physical_filter="SIM-i"),
        "defects": get("defects", detector=1),
    }
    for name, value in wrong.items():
        with pytest.raises(ValueError, match=rf"the {name} (is|are) for ") as e:
            IsrTask().run(raw=raw, **{**right, name: value})
        text = str(e.value)
        assert "SimCam_0000103_000.fits" in text and "exposure 103, detector 0" in text
        assert ("SIM-i" in text and "SIM-r" in text) if name == "flat" else "detector 1" in text
