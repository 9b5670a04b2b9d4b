"""The coadd tasks in a repository: spatial quantum grouping, run, detection."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lsstlite.data.objects import DETECTION_COLUMNS
from lsstlite.data.psf import psf_from_dict
from lsstlite.pipe import Pipeline
from lsstlite.pipe.graph import build_graph
from lsstlite.repo import Butler
from lsstlite.stages.coadd.task import AssembleCoaddTask, DetectCoaddTask
from lsstlite.stages.skymap import make_discrete_skymap
from lsstlite.stages.warp.task import MakeWarpTask
from tests.stages.coadd.conftest import SimCoadds


@pytest.fixture(scope="module")
def coadd_repo(sim_coadds: SimCoadds, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    root = str(tmp_path_factory.mktemp("coadd_repo") / "repo")
    butler = Butler.create(root, run="calexps")
    visits = sorted({s.calexp.attrs["visit_info"]["visit"] for s in sim_coadds.sims})
    butler.register_exposures(
        [
            {
                "instrument": "SimCam",
                "exposure": v,
                "band": "r",
                "physical_filter": "SIM-r",
                "mjd": 61000.0 + v,
                "day_obs": 20251121,
            }
            for v in visits
        ]
    )
    for s in sim_coadds.sims:
        vi = s.calexp.attrs["visit_info"]
        butler.put(
            s.calexp,
            "calexp",
            {"instrument": "SimCam", "exposure": vi["visit"], "detector": vi["detector"]},
        )
    skymap = make_discrete_skymap(
        [s.calexp for s in sim_coadds.sims], name="test", patch_inner=500, patch_border=20
    )
    butler.put(skymap.to_dict(), "skymap", {"skymap": "test"}, run="skymaps")
    return root, skymap


def test_graph_groups_calexps_by_patch(coadd_repo: tuple[str, Any]) -> None:
    root, skymap = coadd_repo
    pipeline = Pipeline.from_tasks(
        [
            ("assemble_coadd", AssembleCoaddTask, {"skymap_name": "test", "chunk_size": 256}),
            ("detect_coadd", DetectCoaddTask, {}),
            ("make_warp", MakeWarpTask, {"skymap_name": "test"}),
        ]
    )
    graph = build_graph(
        Butler(root), pipeline, input_collections=["calexps", "skymaps"], output_run="u/coadd"
    )
    coadds = [q for q in graph.quanta if q.label == "assemble_coadd"]
    detects = [q for q in graph.quanta if q.label == "detect_coadd"]
    warps = [q for q in graph.quanta if q.label == "make_warp"]
    tract = skymap.tract(0)
    assert 1 < len(coadds) <= len(tract.patches()) and len(detects) == len(coadds)
    for q in coadds:
        assert q.data_id["skymap"] == "test" and q.data_id["band"] == "r"
        patch = tract.patch(q.data_id["patch"])
        # every calexp given to a patch overlaps its outer box
        for node in q.inputs["calexps"]:
            assert node.dataset_type == "calexp"
        assert 1 <= len(q.inputs["calexps"]) <= 6
        assert q.inputs["skymap"][0].data_id == {"skymap": "test"}
        assert patch.id == q.data_id["patch"]
    assert {q.data_id["exposure"] for q in warps} == {101, 103, 105}
    # run one quantum's task with the data ID the executor would pass
    q = max(coadds, key=lambda q: len(q.inputs["calexps"]))
    butler = Butler(root, collections=["calexps", "skymaps"])
    calexps = [butler.get(n.ref) for n in q.inputs["calexps"]]
    task = AssembleCoaddTask({"skymap_name": "test", "chunk_size": 256})
    result = task.run(
        calexps=calexps, skymap=butler.get("skymap", {"skymap": "test"}), data_id=q.data_id
    )
    coadd = result.coadd
    assert coadd.sizes == {"y": 540, "x": 540}
    assert coadd["image"].chunks == ((256, 256, 28), (256, 256, 28))
    assert isinstance(psf_from_dict(coadd.attrs["psf"]).to_dict(), dict)
    det = DetectCoaddTask().run(coadd=coadd.compute()).detections
    assert list(det.columns) == list(DETECTION_COLUMNS) and len(det) > 20
    assert set(det["band"]) == {coadd.attrs["band"]}
    assert np.all(det["flux"] > 0) and det["footprint_id"].min() >= 1
    with pytest.raises(ValueError, match="needs data_id"):
        task.run(calexps=calexps, skymap=butler.get("skymap", {"skymap": "test"}))
