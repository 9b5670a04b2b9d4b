"""put/get round trips, ids, replace, removal, queries and path safety."""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import xarray as xr

from lsstlite.repo import (
    Butler,
    DataId,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetType,
    DatasetTypeError,
    RepoError,
    dataset_id,
)

from .conftest import small_exposure

DID = {"instrument": "SimCam", "exposure": 12, "detector": 3}


def test_create_twice_and_open_non_repo(tmp_path: Path, repo_path: Path) -> None:
    with pytest.raises(RepoError, match="already exists"):
        Butler.create(repo_path)
    Butler.create(repo_path, exist_ok=True)
    with pytest.raises(RepoError, match="not an lsstlite repository"):
        Butler(tmp_path / "nothing")
    assert (repo_path / "zarr.json").exists()


def test_exposure_round_trip_is_lazy(butler: Butler, repo_path: Path) -> None:
    ds = small_exposure(2.0)
    ref = butler.put(ds, "calexp", DID)
    assert ref.path == "runs/demo/calexp/instrument=SimCam/exposure=12/detector=3/image.zarr"
    assert (repo_path / ref.path / "zarr.json").exists()
    out = butler.get("calexp", DID)
    assert isinstance(out, xr.Dataset)
    assert isinstance(out["image"].data, da.Array)
    xr.testing.assert_identical(out.compute(), ds)
    assert out.attrs == ds.attrs


def test_table_json_raw_round_trips(butler: Butler, tmp_path: Path) -> None:
    df = pd.DataFrame({"flux": np.arange(5.0), "id": np.arange(5)})
    butler.put(df, "src", DID)
    pd.testing.assert_frame_equal(butler.get("src", DID), df)
    assert list(butler.get("src", DID, parameters={"columns": ["id"]}).columns) == ["id"]
    butler.put(pa.Table.from_pandas(df), "visit_summary", instrument="SimCam", visit=12)
    pd.testing.assert_frame_equal(butler.get("visit_summary", instrument="SimCam", visit=12), df)
    butler.put({"sigma": 1.5, "kind": "gauss"}, "psf", DID)
    assert butler.get("psf", DID) == {"sigma": 1.5, "kind": "gauss"}
    raw = tmp_path / "raw.fits"
    raw.write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    ref = butler.put(raw, "raw", DID)
    got = butler.get("raw", DID)
    assert Path(got).read_bytes() == raw.read_bytes()
    assert ref.storage_class == "Raw"


def test_wrong_object_type_is_refused(butler: Butler) -> None:
    with pytest.raises(TypeError, match="takes a dict"):
        butler.put([1, 2], "psf", DID)
    assert not butler.exists("psf", DID)


def test_deterministic_ids(butler: Butler, repo_path: Path) -> None:
    ref = butler.put({"a": 1}, "psf", DID)
    assert ref.id == dataset_id(
        "psf", {"instrument": "SimCam", "exposure": 12, "detector": 3}, "demo"
    )
    assert ref.id.version == 5
    other = Butler(repo_path, run="other").put({"a": 1}, "psf", DID)
    assert other.id != ref.id
    # visit is an alias of exposure: same id
    assert dataset_id("psf", DataId(instrument="SimCam", visit=12, detector=3), "demo") == ref.id
    assert isinstance(ref.id, uuid.UUID)


def test_put_existing_fails_unless_replace(butler: Butler) -> None:
    butler.put({"v": 1}, "psf", DID)
    with pytest.raises(DatasetExistsError, match=r"'psf'.*exposure.*12.*demo"):
        butler.put({"v": 2}, "psf", DID)
    assert butler.get("psf", DID) == {"v": 1}
    ref = butler.put({"v": 3}, "psf", DID, replace=True)
    assert butler.get("psf", DID) == {"v": 3}
    refs = butler.query_datasets("psf", collections="demo")
    assert refs == [ref]


def test_missing_dataset_error_names_everything(butler: Butler) -> None:
    butler.register_run("other")
    butler.set_chain("chain", ["demo", "other"])
    with pytest.raises(LookupError) as info:
        butler.get("calexp", DID, collections="chain")
    msg = str(info.value)
    assert isinstance(info.value, DatasetNotFoundError)
    for part in ("'calexp'", "'exposure': 12", "'chain'", "'demo'", "'other'"):
        assert part in msg


def test_data_id_validation(butler: Butler) -> None:
    with pytest.raises(ValueError, match="'detector' must be an integer"):
        butler.put({}, "psf", instrument="SimCam", exposure=1, detector="3")
    with pytest.raises(ValueError, match="'instrument' must be a string"):
        butler.put({}, "psf", instrument=3, exposure=1, detector=3)
    with pytest.raises(ValueError, match=r"lacks required dimension.*detector"):
        butler.put({}, "psf", instrument="SimCam", exposure=1)
    with pytest.raises(ValueError, match="unknown dimension 'colour'"):
        butler.put({}, "psf", DID, colour="red")
    with pytest.raises(ValueError, match="two different values"):
        butler.put({}, "psf", DID, visit=13)
    with pytest.raises(ValueError, match="must be an integer"):
        butler.put({}, "psf", instrument="SimCam", exposure=True, detector=1)
    ref = butler.put({}, "psf", instrument="SimCam", visit=np.int64(4), detector=np.int32(1))
    assert ref.data_id == {"instrument": "SimCam", "exposure": 4, "detector": 1}
    assert ref.data_id["visit"] == 4


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("'instrument'", {"data_id": {**DID, "instrument": "../../etc"}}),
        ("'instrument'", {"data_id": {**DID, "instrument": "/etc/passwd"}}),
        ("'instrument'", {"data_id": {**DID, "instrument": "a\x00b"}}),
        ("'instrument'", {"data_id": {**DID, "instrument": ".."}}),
        ("'instrument'", {"data_id": {**DID, "instrument": "a\\b"}}),
        ("collection name", {"data_id": DID, "run": "../outside"}),
        ("collection name", {"data_id": DID, "run": "/abs/run"}),
        ("collection name", {"data_id": DID, "run": "a/../../b"}),
        ("collection name", {"data_id": DID, "run": "bad\x00run"}),
        ("collection name", {"data_id": DID, "run": ""}),
    ],
)
def test_path_escapes_are_refused(butler: Butler, repo_path: Path, field, kwargs) -> None:
    with pytest.raises(ValueError, match=field):
        butler.put({"x": 1}, "psf", **kwargs)
    outside = [p for p in repo_path.parent.iterdir() if p.name != "repo"]
    assert outside == []


def test_bad_dataset_type_names(butler: Butler) -> None:
    for name in ("../x", "a/b", "", "x\x00", "1abc"):
        with pytest.raises(ValueError, match="dataset type name"):
            butler.register_dataset_type(name, ("instrument",), "Json")
    with pytest.raises(ValueError, match="dataset type name"):
        butler.get("../calexp", DID)


def test_dataset_type_conflicts(butler: Butler) -> None:
    assert butler.register_dataset_type("thing", ("instrument", "detector"), "Json")
    assert not butler.register_dataset_type("thing", ("detector", "instrument"), "Json")
    with pytest.raises(DatasetTypeError, match="already registered"):
        butler.register_dataset_type("thing", ("instrument",), "Json")
    with pytest.raises(DatasetTypeError, match="already registered"):
        butler.register_dataset_type(DatasetType("calexp", ("instrument", "visit"), "Table"))
    with pytest.raises(DatasetTypeError, match="not registered"):
        butler.get("nonesuch", DID)
    names = {d.name for d in butler.query_dataset_types()}
    assert {"raw", "calexp", "coadd", "object", "refcat", "thing"} <= names


def test_implied_metadata_is_queryable(butler: Butler) -> None:
    butler.put({}, "psf", DID, band="r", physical_filter="r_01", day_obs=20220526)
    butler.put({}, "psf", {**DID, "exposure": 13}, band="g")
    refs = butler.query_datasets("psf", "band = 'r' AND day_obs = 20220526")
    assert [r.data_id["exposure"] for r in refs] == [12]
    frame = butler.query_datasets("psf", "band IN ('r', 'g')", as_frame=True)
    assert isinstance(frame, pd.DataFrame) and len(frame) == 2


def test_query_data_ids(grid_butler: Butler) -> None:
    ids = grid_butler.query_data_ids(["visit"], datasets="psf", where="band = 'g'")
    assert ids == [{"exposure": e} for e in (2, 4, 6, 8, 10)]
    ids = grid_butler.query_data_ids(["band", "day_obs"], datasets="psf")
    assert {(i["band"], i["day_obs"]) for i in ids} == {
        ("g", 20220525),
        ("r", 20220525),
        ("g", 20220526),
        ("r", 20220526),
    }
    ids = grid_butler.query_data_ids(("instrument", "exposure", "detector"), where="visit = 3")
    assert len(ids) == 4 and all(i["exposure"] == 3 for i in ids)
    with pytest.raises(ValueError, match="unknown dimension"):
        grid_butler.query_data_ids(["nope"])


def test_remove_prune_and_remove_runs(butler: Butler, repo_path: Path) -> None:
    refs = [butler.put({"d": d}, "psf", {**DID, "detector": d}) for d in range(3)]
    files = [repo_path / Path(r.path).parent for r in refs]
    assert all(f.exists() for f in files)
    butler.remove(refs[:1])
    assert not files[0].exists() and not butler.exists("psf", refs[0].data_id)
    assert butler.exists(refs[1]) and not butler.exists(refs[0])
    butler.associate("tagged", refs[1:])
    butler.prune(refs[1:2], purge=False)
    assert len(butler.query_datasets("psf", collections="tagged")) == 1
    assert butler.exists(refs[1])
    butler.set_chain("chain", ["demo"])
    butler.remove_runs(["demo"])
    assert not (repo_path / "runs" / "demo").exists()
    assert butler.query_datasets("psf", collections="tagged") == []
    assert "demo" not in butler.query_collections()
    assert butler.get_chain("chain") == []
    # the run can be written again afterwards
    butler.put({"again": 1}, "psf", DID)
    assert butler.get("psf", DID) == {"again": 1}
    assert len(butler.query_datasets("psf", collections="demo")) == 1


def test_run_names_with_slashes_are_separate(repo_path: Path) -> None:
    a = Butler(repo_path, run="a")
    ab = Butler(repo_path, run="a/b")
    a.put({"run": "a"}, "psf", DID)
    ab.put({"run": "a/b"}, "psf", DID)
    a.remove_runs("a")
    assert ab.get("psf", DID) == {"run": "a/b"}
    assert os.listdir(repo_path / "runs") == ["a~2Fb"]


def test_provenance_and_metadata(butler: Butler) -> None:
    ref = butler.put({"x": 1}, "psf", DID, provenance={"task": "fit_psf", "config": {"n": 3}})
    meta = butler.get_metadata(ref)
    assert meta["id"] == str(ref.id)
    assert meta["provenance"]["config"] == {"n": 3}
    assert "numpy" in meta["software"]
    assert meta["data_id"] == {"instrument": "SimCam", "exposure": 12, "detector": 3}


def test_butler_pickles(butler: Butler) -> None:
    butler.put({"x": 1}, "psf", DID)
    clone = pickle.loads(pickle.dumps(butler))
    assert clone.get("psf", DID) == {"x": 1}
    assert clone.run == "demo"


def test_registry_survives_compaction(butler: Butler, repo_path: Path) -> None:
    refs = [butler.put({"d": d}, "psf", {**DID, "detector": d}) for d in range(5)]
    butler.remove(refs[:2])
    assert butler.compact()
    assert os.listdir(repo_path / "_registry" / "log") == []
    fresh = Butler(repo_path, collections="demo")
    assert {r.data_id["detector"] for r in fresh.query_datasets("psf")} == {2, 3, 4}
    butler.put({"d": 9}, "psf", {**DID, "detector": 9})
    assert {r.data_id["detector"] for r in fresh.query_datasets("psf")} == {2, 3, 4, 9}


def test_bulk_register_and_fast_query(butler: Butler) -> None:
    n = 20_000
    rng = np.random.default_rng(1)
    rows = pd.DataFrame(
        {
            "dataset_type": "calexp",
            "run": "bulk",
            "instrument": "SimCam",
            "exposure": np.arange(n) // 10,
            "detector": np.arange(n) % 10,
            "band": rng.choice(["g", "r", "i"], n),
        }
    )
    butler._bulk_register(rows)
    refs = butler.query_datasets(
        "calexp", "band = 'r' AND visit IN (1..100) AND detector > 7", collections="bulk"
    )
    expected = rows[
        (rows.band == "r") & (rows.exposure <= 100) & (rows.exposure >= 1) & (rows.detector > 7)
    ]
    assert len(refs) == len(expected) > 0


def test_fsspec_repository() -> None:
    root = f"memory://lsstlite-test-{uuid.uuid4().hex[:8]}"
    b = Butler.create(root, run="demo")
    b.put({"a": 1}, "psf", DID)
    b.put(pd.DataFrame({"x": [1, 2]}), "src", DID)
    assert b.compact()
    fresh = Butler(root, collections="demo")
    assert fresh.get("psf", DID) == {"a": 1}
    assert list(fresh.get("src", DID)["x"]) == [1, 2]
    assert [r.dataset_type for r in fresh.query_datasets("*", "detector = 12 OR visit = 12")] == [
        "psf",
        "src",
    ]
