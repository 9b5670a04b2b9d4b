"""Collection semantics: runs, chains of chains, tagged, calibration by time."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsstlite.repo import (
    Butler,
    CollectionCycleError,
    CollectionError,
    CollectionType,
    DatasetNotFoundError,
    MissingCollectionError,
    certify,
)

from .conftest import small_exposure

DID = {"instrument": "SimCam", "exposure": 1, "detector": 0}


@pytest.fixture
def three_runs(repo_path: Path) -> Butler:
    b = Butler(repo_path)
    for run in ("r1", "r2", "r3"):
        b.put({"run": run}, "psf", DID, run=run)
    b.put({"run": "r3", "only": True}, "psf", {**DID, "detector": 1}, run="r3")
    return b


def test_chain_search_order_and_chains_of_chains(three_runs: Butler) -> None:
    b = three_runs
    b.set_chain("inner", ["r2", "r3"])
    b.set_chain("outer", ["r1", "inner"])
    assert b.get("psf", DID, collections="outer") == {"run": "r1"}
    assert b.get("psf", DID, collections="inner") == {"run": "r2"}
    assert b.get("psf", {**DID, "detector": 1}, collections="outer")["only"]
    assert b.get("psf", DID, collections=["r3", "outer"]) == {"run": "r3"}
    refs = b.query_datasets("psf", collections="outer")
    assert [(r.run, r.data_id["detector"]) for r in refs] == [("r1", 0), ("r3", 1)]
    all_refs = b.query_datasets("psf", collections="outer", find_first=False)
    assert len(all_refs) == 4
    assert b.query_collections("outer", flatten_chains=True) == ["r1", "r2", "r3"]
    assert b.collection_type("outer") is CollectionType.CHAINED
    b.set_chain("inner", ["r3"])  # redefinition
    assert b.query_collections("outer", flatten_chains=True) == ["r1", "r3"]


def test_cycles_are_refused(three_runs: Butler) -> None:
    b = three_runs
    b.set_chain("a", ["r1"])
    b.set_chain("b", ["a"])
    b.set_chain("c", ["b", "r2"])
    with pytest.raises(CollectionCycleError, match="a -> b -> a"):
        b.set_chain("a", ["b"])
    with pytest.raises(CollectionCycleError, match="a -> c -> b -> a"):
        b.set_chain("a", ["r1", "c"])
    with pytest.raises(CollectionCycleError):
        b.set_chain("d", ["d"])
    assert b.get_chain("a") == ["r1"]
    with pytest.raises(MissingCollectionError, match="'nope' does not exist"):
        b.set_chain("x", ["nope"])
    with pytest.raises(CollectionError, match="RUN"):
        b.set_chain("r1", ["r2"])


def test_query_collections_glob(three_runs: Butler) -> None:
    b = three_runs
    b.set_chain("chain", ["r1"])
    assert b.query_collections() == ["chain", "r1", "r2", "r3"]
    assert b.query_collections("r[12]") == ["r1", "r2"]
    assert b.query_collections(types=[CollectionType.CHAINED]) == ["chain"]


def test_tagged(three_runs: Butler) -> None:
    b = three_runs
    refs = b.query_datasets("psf", collections="r3")
    b.associate("good", refs[:1])
    assert b.collection_type("good") is CollectionType.TAGGED
    assert b.get("psf", DID, collections="good") == {"run": "r3"}
    with pytest.raises(DatasetNotFoundError):
        b.get("psf", {**DID, "detector": 1}, collections="good")
    b.disassociate("good", refs[:1])
    assert b.query_datasets("psf", collections="good") == []
    with pytest.raises(CollectionError, match="RUN collection"):
        b.remove_collection("r1")
    b.remove_collection("good")
    assert "good" not in b.query_collections()


@pytest.fixture
def calib_butler(repo_path: Path) -> Butler:
    b = Butler(repo_path)
    det = {"instrument": "SimCam", "detector": 0}
    b.put(small_exposure(1.0), "bias", det, run="calib/run1")
    b.put(small_exposure(2.0), "bias", det, run="calib/run2")
    certify(b, "calib/run1", "calib", begin="2022-05-01", end="2022-05-26")
    certify(b, "calib/run2", "calib", begin=59725.0, end=None)  # 59725 = 2022-05-26
    b.register_exposures(
        [
            {"instrument": "SimCam", "exposure": 10, "mjd": 59724.9, "band": "r"},
            {"instrument": "SimCam", "exposure": 11, "mjd": 59725.0, "band": "r"},
            {"instrument": "SimCam", "exposure": 12},
        ]
    )
    return b


def _bias_level(ds) -> float:
    return round(float(ds["image"].mean()))


def test_calibration_lookup_by_time(calib_butler: Butler) -> None:
    b = calib_butler
    det = {"instrument": "SimCam", "detector": 0}
    assert _bias_level(b.get("bias", det, collections="calib", mjd=59710.0)) == 1
    # boundary: end is exclusive, begin inclusive
    assert _bias_level(b.get("bias", det, collections="calib", mjd=59725.0)) == 2
    assert _bias_level(b.get("bias", det, collections="calib", mjd=59724.999)) == 1
    with pytest.raises(DatasetNotFoundError, match="'bias'"):
        b.get("bias", det, collections="calib", mjd=59600.0)  # before everything
    assert _bias_level(b.get("bias", det, collections="calib", timespan=("2030-01-01", None))) == 2


def test_calibration_lookup_from_exposure(calib_butler: Butler) -> None:
    b = calib_butler
    assert (
        _bias_level(
            b.get("bias", instrument="SimCam", exposure=10, detector=0, collections="calib")
        )
        == 1
    )
    assert (
        _bias_level(
            b.get("bias", instrument="SimCam", exposure=11, detector=0, collections="calib")
        )
        == 2
    )
    with pytest.raises(LookupError, match="without a time"):
        b.get("bias", instrument="SimCam", exposure=12, detector=0, collections="calib")
    refs = b.query_datasets("bias", collections="calib", mjd=59710.0)
    assert [r.run for r in refs] == ["calib/run1"]


def test_certify_refuses_overlaps_and_non_calibrations(calib_butler: Butler) -> None:
    b = calib_butler
    b.put(small_exposure(3.0), "bias", instrument="SimCam", detector=0, run="calib/run3")
    with pytest.raises(CollectionError, match="overlaps"):
        certify(b, "calib/run3", "calib", begin="2022-05-20", end="2022-06-01")
    b.put({}, "psf", instrument="SimCam", exposure=1, detector=0, run="calib/run3")
    with pytest.raises(CollectionError, match="not a calibration type"):
        certify(b, "calib/run3", "calib2", dataset_types=["psf"])
    with pytest.raises(ValueError, match="cannot read begin"):
        certify(b, "calib/run3", "calib3", begin="yesterday-ish")
    with pytest.raises(CollectionError, match="not a RUN"):
        b.put({}, "psf", instrument="SimCam", exposure=1, detector=0, run="calib")
