"""Running pipelines: outcomes, blocking, resume, provenance, same bytes everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsstlite.pipe.graph import GraphBuildError
from lsstlite.pipe.pipeline import Pipeline
from lsstlite.pipe.run import ConfigMismatchError, check_configs, prepare_run, run_pipeline
from lsstlite.repo import Butler
from lsstlite.repo._dataset_types import DatasetType
from tests.pipe.toy_tasks import NeedsFlatTask, ScaleTask, SumTask

PIPE = Pipeline.from_tasks([("scale", ScaleTask, {}), ("sum", SumTask, {})])


def _outputs(repo: str, collection: str) -> dict[str, Any]:
    butler = Butler(repo, collections=collection)
    out: dict[str, Any] = {}
    for ref in butler.query_datasets(["toy_scaled", "toy_sum"]):
        value = butler.get(ref)
        key = f"{ref.dataset_type} {sorted(ref.data_id.items())}"
        out[key] = value["image"].values if ref.dataset_type == "toy_scaled" else value
    return out


def test_run_succeeds_and_records_provenance(toy_repo: str, client: Any) -> None:
    report = run_pipeline(toy_repo, PIPE, inputs="toy/raw", output="u/out", client=client)
    assert report.ok and report.count("succeeded") == 12 + 3
    butler = Butler(toy_repo, collections="u/out")
    total = butler.get("toy_sum", {"instrument": "Toy", "exposure": 1})
    raw = [
        butler.get("toy_image", {"instrument": "Toy", "exposure": 1, "detector": d})
        for d in range(4)
    ]
    expected = 2.0 * sum(float(r["image"].sum()) for r in raw)
    assert total["n"] == 4 and total["sum"] == pytest.approx(expected, rel=1e-6)
    # OUT is a chain: new RUN first, then the inputs
    chain = butler.get_chain("u/out")
    assert chain[0].startswith("u/out/") and chain[-1] == "toy/raw"
    assert butler.get("scale_config", {})["factor"] == 2.0
    assert "numpy" in butler.get("packages", {})
    log = butler.get("scale_log", {"instrument": "Toy", "exposure": 0, "detector": 1})
    assert log["status"] == "succeeded" and any(
        "running scale" in r["message"] for r in log["records"]
    )
    # each output names the datasets it was made from: the four scaled detectors of
    # exposure 1, made earlier in this run, and for those the raw in the input collection
    sum_ref = butler.find_dataset("toy_sum", {"instrument": "Toy", "exposure": 1})
    assert sum_ref is not None
    prov = butler.get_metadata(sum_ref)["provenance"]
    assert prov["task"] == "sum" and prov["config"] == butler.get("sum_config", {})
    used = prov["inputs"]["images"]
    scaled = {str(r.id): r for r in butler.query_datasets("toy_scaled", where="exposure = 1")}
    assert len(used) == 4 and {u["id"] for u in used} == set(scaled)
    assert all(u["run"] == chain[0] and u["dataset_type"] == "toy_scaled" for u in used)
    assert sorted(u["data_id"]["detector"] for u in used) == [0, 1, 2, 3]
    one = scaled[used[0]["id"]]
    (raw,) = butler.get_metadata(one)["provenance"]["inputs"]["image"]
    raw_ref = butler.find_dataset("toy_image", dict(one.data_id), collections="toy/raw")
    assert raw_ref is not None and raw == {
        "dataset_type": "toy_image",
        "data_id": dict(raw_ref.data_id),
        "run": raw_ref.run,
        "id": str(raw_ref.id),
    }


def test_failure_blocks_dependents_only(toy_repo: str, client: Any) -> None:
    pipe = PIPE.with_config({"scale": {"fail_detector": 2}})
    report = run_pipeline(toy_repo, pipe, inputs="toy/raw", output="u/fail", client=client)
    assert not report.ok
    assert (
        report.count("succeeded") == 9
        and report.count("failed") == 3
        and report.count("blocked") == 3
    )
    failed = [o for o in report.outcomes if o.status == "failed"]
    assert {o.data_id["detector"] for o in failed} == {2}
    assert "broken on purpose" in (failed[0].traceback or "")
    assert "FAILED scale" in report.table()
    butler = Butler(toy_repo, collections="u/fail")
    log = butler.get("scale_log", {"instrument": "Toy", "exposure": 0, "detector": 2})
    assert log["status"] == "failed" and "RuntimeError" in log["traceback"]


def test_fail_fast_stops(toy_repo: str) -> None:
    pipe = PIPE.with_config({"scale": {"fail_detector": 0}})
    report = run_pipeline(
        toy_repo, pipe, inputs="toy/raw", output="u/ff", n_workers=1, fail_fast=True
    )
    assert report.count("failed") >= 1
    assert report.count("succeeded") + report.count("failed") < 15


def test_where_selects(toy_repo: str, client: Any) -> None:
    report = run_pipeline(
        toy_repo,
        PIPE,
        inputs="toy/raw",
        output="u/where",
        client=client,
        where="band = 'r' AND detector IN (0, 3)",
    )
    assert report.ok
    done = {(o.label, tuple(sorted(o.data_id.items()))) for o in report.outcomes}
    assert (
        len([d for d in done if d[0] == "scale"]) == 2
        and len([d for d in done if d[0] == "sum"]) == 1
    )


def test_missing_calibration_reported_all_at_once(toy_repo: str) -> None:
    butler = Butler(toy_repo)
    butler.register_dataset_type(
        DatasetType(
            "toy_flat",
            ("instrument", "detector", "physical_filter"),
            "Exposure",
            is_calibration=True,
        )
    )
    with pytest.raises(GraphBuildError) as info:
        prepare_run(
            toy_repo, Pipeline.from_tasks([NeedsFlatTask]), inputs=["toy/raw"], output="u/flat"
        )
    problems = info.value.problems
    assert len(problems) == 12, problems
    assert all("toy_flat" in p and "toy/raw" in p and "MJD" in p for p in problems)
    assert any("detector: 3" in p and "day_obs 20230103" in p for p in problems)


def test_where_selects_quanta_of_custom_grouping(toy_repo: str) -> None:
    """--where on dimensions only the quanta have (a tract of a spatial join) selects
    those quanta; one that selects none names the task and a data ID it has; a dimension
    that neither the tasks nor their inputs have is an error, not silently ignored."""
    from tests.pipe.toy_tasks import TractTask

    pipe = Pipeline.from_tasks([TractTask])
    _, graph = prepare_run(toy_repo, pipe, inputs=["toy/raw"], output="u/t1", where="tract = 1")
    assert [q.data_id["tract"] for q in graph.quanta] == [1]
    assert len(graph.quanta[0].inputs["images"]) == 6
    _, graph = prepare_run(
        toy_repo, pipe, inputs=["toy/raw"], output="u/t2", where="tract = 1 AND detector = 2"
    )
    assert [len(q.inputs["images"]) for q in graph.quanta] == [3]  # detector 2: 3 exposures
    with pytest.raises(GraphBuildError, match=r"selects none of the quanta of tract.*'toy'"):
        prepare_run(toy_repo, pipe, inputs=["toy/raw"], output="u/t3", where="skymap = 'other'")
    with pytest.raises(GraphBuildError, match=r"names \['patch'\]"):
        prepare_run(toy_repo, PIPE, inputs=["toy/raw"], output="u/t4", where="patch = 0")


def test_unregistered_prerequisite_is_named(toy_repo: str) -> None:
    with pytest.raises(GraphBuildError, match="'toy_flat' is not registered"):
        prepare_run(
            toy_repo, Pipeline.from_tasks([NeedsFlatTask]), inputs=["toy/raw"], output="u/flat"
        )


def test_empty_selection_and_unknown_collection(toy_repo: str) -> None:
    with pytest.raises(GraphBuildError, match="empty"):
        prepare_run(toy_repo, PIPE, inputs=["toy/raw"], output="u/x", where="detector > 100")
    # parsed on its own, not only inside "(where) AND (a connection's where)"
    with pytest.raises(GraphBuildError, match=r"--where .*unexpected token"):
        prepare_run(
            toy_repo, PIPE, inputs=["toy/raw"], output="u/x", where="detector = 1) OR (detector = 2"
        )
    with pytest.raises(GraphBuildError, match="do not exist"):
        prepare_run(toy_repo, PIPE, inputs=["no/such"], output="u/x")


def test_skip_existing_clobber_and_config_mismatch(toy_repo: str, client: Any) -> None:
    first = run_pipeline(
        toy_repo,
        PIPE.with_config({"scale": {"fail_detector": 1}}),
        inputs="toy/raw",
        output="u/resume",
        client=client,
    )
    assert first.count("failed") == 3
    # qgraph (prepare_run, then check_configs) says what run will refuse, writing nothing
    butler, graph = prepare_run(
        toy_repo, PIPE, inputs=["toy/raw"], output="u/resume", skip_existing=True
    )
    with pytest.raises(ConfigMismatchError, match=r"scale\.fail_detector"):
        check_configs(butler, graph)
    check_configs(*prepare_run(
        toy_repo, PIPE.with_config({"scale": {"fail_detector": 1}}), inputs=["toy/raw"],
        output="u/resume", skip_existing=True,
    ))  # fmt: skip
    # rerun into the same RUN without the failure: only the missing quanta run
    with pytest.raises(ConfigMismatchError, match=r"scale\.fail_detector"):
        run_pipeline(
            toy_repo, PIPE, inputs="toy/raw", output="u/resume", client=client, skip_existing=True
        )
    second = run_pipeline(
        toy_repo,
        PIPE,
        inputs="toy/raw",
        output="u/resume",
        client=client,
        skip_existing=True,
        clobber_config=True,
    )
    assert second.ok and second.output_run == first.output_run
    assert second.count("skipped") == 9 and second.count("succeeded") == 6
    chain = Butler(toy_repo).get_chain("u/resume")
    assert chain[0] == first.output_run and len(chain) == len(set(chain))  # the RUN once
    # existing outputs without a flag are refused at graph building
    with pytest.raises(GraphBuildError, match="--skip-existing"):
        prepare_run(toy_repo, PIPE, inputs=["toy/raw"], output="u/resume", extend_run=True)
    clobbered = run_pipeline(
        toy_repo,
        PIPE,
        inputs="toy/raw",
        output="u/resume",
        client=client,
        extend_run=True,
        clobber_outputs=True,
    )
    assert clobbered.ok and clobbered.count("succeeded") == 15


def test_same_bytes_on_one_process_and_a_client(toy_repo: str, client: Any) -> None:
    run_pipeline(toy_repo, PIPE, inputs="toy/raw", output="u/j1", n_workers=1)
    run_pipeline(toy_repo, PIPE, inputs="toy/raw", output="u/client", client=client)
    a, b = _outputs(toy_repo, "u/j1"), _outputs(toy_repo, "u/client")
    assert a.keys() == b.keys() and len(a) == 15
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].tobytes() == b[key].tobytes(), key
        else:
            assert a[key] == b[key], key


def test_cli_run_and_qgraph(
    toy_repo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lsstlite.cli.main import main

    pipe = tmp_path / "toy.yaml"
    pipe.write_text(
        "tasks:\n  scale: tests.pipe.toy_tasks.ScaleTask\n  sum: tests.pipe.toy_tasks.SumTask\n"
        "subsets:\n  step1: [scale]\n"
    )
    assert (
        main(
            [
                "qgraph",
                toy_repo,
                "-p",
                f"{pipe}#step1",
                "-i",
                "toy/raw",
                "-o",
                "u/cli",
                "--dot",
                str(tmp_path / "q.dot"),
            ]
        )
        == 0
    )
    assert "12 quanta" in capsys.readouterr().out
    assert (tmp_path / "q.dot").read_text().count("->") == 0
    code = main(
        [
            "run",
            toy_repo,
            "-p",
            str(pipe),
            "-i",
            "toy/raw",
            "-o",
            "u/cli",
            "-j",
            "1",
            "-c",
            "scale:fail_detector=3",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "failed" in out and "total" in out
    assert (
        main(
            [
                "run",
                toy_repo,
                "-p",
                str(pipe),
                "-i",
                "toy/raw",
                "-o",
                "u/cli2",
                "-j",
                "1",
                "-c",
                "scale:factor=ten",
            ]
        )
        == 2
    )
    assert "scale.factor: expected a number, got 'ten'" in capsys.readouterr().err


def test_grouping_by_implied_filter_with_connection_where(toy_repo: str) -> None:
    from tests.pipe.toy_tasks import StackTask

    _, graph = prepare_run(
        toy_repo, Pipeline.from_tasks([StackTask]), inputs=["toy/raw"], output="u/stack"
    )
    # exposures 0 and 2 are band i (filter T-i); the connection's where drops exposure 1
    assert len(graph) == 4
    for q in graph.quanta:
        assert q.data_id["physical_filter"] == "T-i"
        assert sorted(n.data_id["exposure"] for n in q.inputs["images"]) == [0, 2]


def test_custom_quantum_grouping(toy_repo: str, client: Any) -> None:
    from tests.pipe.toy_tasks import TractTask

    report = run_pipeline(
        toy_repo,
        Pipeline.from_tasks([TractTask]),
        inputs="toy/raw",
        output="u/tract",
        client=client,
    )
    assert report.ok and report.count("succeeded") == 2
    butler = Butler(toy_repo, collections="u/tract")
    assert butler.get("toy_tract", {"skymap": "toy", "tract": 1}) == {"n": 6}
