"""The direct stored-chunk reader equals zarr's own reader, bit for bit, or steps aside."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.codecs import BytesCodec, ShardingCodec

import lsstlite.data as lld
from lsstlite.data import _zarr_chunks
from lsstlite.data._zarr_chunks import local_store_root, stored_chunks_array


def _zarr_read(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(path), mode="r")[...])


def test_exposure_planes_equal_zarr_including_edges_and_unwritten_chunks(
    exposure: xr.Dataset, tmp_path: Path
) -> None:
    ds = exposure.copy()
    mask = np.zeros(ds["mask"].shape, np.int32)
    mask[5:9, 7:300] = 4  # only the first chunk row holds set bits: the rest is never written
    ds["mask"] = (("y", "x"), mask, ds["mask"].attrs)
    lld.write_exposure_zarr(ds, tmp_path / "e.zarr", chunks=(50, 70))  # edges: partial chunks
    unwritten = [p for p in (tmp_path / "e.zarr" / "mask" / "c").rglob("*") if p.is_file()]
    assert 0 < len(unwritten) < ds["mask"].size // (50 * 70)  # some chunks were skipped
    back = lld.open_exposure_zarr(tmp_path / "e.zarr")
    for name in ("image", "mask", "variance"):
        data = back[name].data
        assert data.name.startswith(f"zarr-{name}-"), f"{name}: not the direct reader"
        got = data.compute()
        np.testing.assert_array_equal(got, _zarr_read(tmp_path / "e.zarr" / name))
        assert got.dtype == ds[name].dtype and got.flags.writeable
    xr.testing.assert_identical(back.compute(), ds)


def test_group_inside_a_store_and_file_url(exposure: xr.Dataset, tmp_path: Path) -> None:
    lld.write_exposure_zarr(exposure, tmp_path / "r.zarr", path="run/calexp", chunks=(64, 64))
    back = lld.open_exposure_zarr(f"file://{tmp_path / 'r.zarr'}", path="run/calexp")
    assert back["image"].data.name.startswith("zarr-image-")
    xr.testing.assert_identical(back.compute(), exposure)


@pytest.mark.parametrize(
    ("codecs", "direct"),
    [
        ({"serializer": BytesCodec(endian="big"), "compressors": None}, True),
        ({"serializer": BytesCodec(endian="little"), "compressors": None}, True),
        ({"compressors": zarr.codecs.BloscCodec()}, False),
        ({"serializer": ShardingCodec(chunk_shape=(8, 8)), "compressors": None}, False),
    ],
)
def test_other_layouts_read_right_or_are_left_to_zarr(
    tmp_path: Path, codecs: dict, direct: bool
) -> None:
    values = np.arange(37 * 29, dtype=np.float32).reshape(37, 29) - 100.5
    shards = {"shards": (16, 16)} if isinstance(codecs.get("serializer"), ShardingCodec) else {}
    chunks = (8, 8) if shards else (16, 16)
    kwargs = {k: v for k, v in codecs.items() if not isinstance(v, ShardingCodec)}
    arr = zarr.create_array(
        str(tmp_path / "a"),
        shape=values.shape,
        chunks=chunks,
        dtype="float32",
        fill_value=np.nan,
        **shards,
        **kwargs,
    )
    arr[...] = values
    fast = stored_chunks_array(tmp_path / "a")
    if not direct:
        assert fast is None
        return
    np.testing.assert_array_equal(fast.compute(), values)
    assert fast.dtype == np.dtype("float32")


def test_unwritten_float_chunks_are_the_fill_value(tmp_path: Path) -> None:
    arr = zarr.create_array(
        str(tmp_path / "a"), shape=(20, 20), chunks=(10, 10), dtype="float32", fill_value=np.nan
    )
    arr[:10, :10] = 1.0
    got = stored_chunks_array(tmp_path / "a").compute()
    np.testing.assert_array_equal(got, _zarr_read(tmp_path / "a"))
    assert np.isnan(got[10:, :]).all() and (got[:10, :10] == 1).all()


@pytest.mark.parametrize(
    ("plane", "message"),
    [("image", "15 bytes, expected 16384"), ("mask", "cannot decode")],  # raw, zstd
)
def test_a_corrupt_chunk_names_its_file(
    exposure: xr.Dataset, tmp_path: Path, plane: str, message: str
) -> None:
    lld.write_exposure_zarr(exposure, tmp_path / "e.zarr", chunks=(64, 64))
    chunk = tmp_path / "e.zarr" / plane / "c" / "1" / "0"
    chunk.write_bytes(b"not zstd at all")
    back = lld.open_exposure_zarr(tmp_path / "e.zarr")
    with pytest.raises(OSError, match=f"{chunk}: {message}"):
        with dask.config.set(scheduler="sync"):
            back[plane].data.compute()
    # the other planes and the rest of the store are untouched and still read
    np.testing.assert_array_equal(back["variance"].values, exposure["variance"].values)


def test_float_planes_are_stored_uncompressed(exposure: xr.Dataset, tmp_path: Path) -> None:
    """Decoding zstd cost more than it saved on float noise (see io.UNCOMPRESSED_KINDS)."""
    lld.write_exposure_zarr(exposure, tmp_path / "e.zarr")
    codecs = {
        p: [
            c["name"]
            for c in json.loads((tmp_path / "e.zarr" / p / "zarr.json").read_text())["codecs"]
        ]
        for p in ("image", "variance", "mask", "x")
    }
    assert codecs == {
        "image": ["bytes"],
        "variance": ["bytes"],
        "mask": ["bytes", "zstd"],
        "x": ["bytes", "zstd"],
    }


def test_only_local_directories_are_read_directly(tmp_path: Path) -> None:
    assert local_store_root(tmp_path) == tmp_path
    assert local_store_root(f"file://{tmp_path}") == tmp_path
    assert local_store_root("s3://bucket/x.zarr") is None
    assert local_store_root("memory://x") is None
    assert local_store_root(tmp_path / "absent") is None
    assert local_store_root(zarr.storage.MemoryStore()) is None


def _xarray_open(path: Path, group: str | None = None) -> xr.Dataset:
    ds = xr.open_zarr(
        str(path),
        group=group,
        consolidated=False,
        zarr_format=3,
        chunks={},
        mask_and_scale=False,
        decode_times=False,
    )
    for name in ds.variables:
        ds[name].attrs.pop("_FillValue", None)
    return ds


def test_the_direct_open_is_the_dataset_xarray_opens(exposure: xr.Dataset, tmp_path: Path) -> None:
    lld.write_exposure_zarr(exposure, tmp_path / "e.zarr", chunks=(64, 80))
    lld.write_exposure_zarr(exposure, tmp_path / "r.zarr", path="run/x", chunks=(64, 80))
    for where, group in ((tmp_path / "e.zarr", None), (tmp_path / "r.zarr", "run/x")):
        direct = lld.open_exposure_zarr(where, path=group)
        assert direct["image"].data.name.startswith("zarr-image-")
        reference = _xarray_open(where, group)
        xr.testing.assert_identical(direct.compute(), reference.compute())
        assert list(direct.data_vars) == ["image", "variance", "mask"]
        for name in direct.variables:
            assert direct[name].attrs == reference[name].attrs, name
        assert direct.indexes.keys() == reference.indexes.keys() == {"x", "y"}


def test_groups_it_does_not_take_are_opened_by_xarray(exposure: xr.Dataset, tmp_path: Path) -> None:
    lld.write_exposure_zarr(exposure, tmp_path / "e.zarr")
    meta_path = tmp_path / "e.zarr" / "mask" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["coordinates"] = "y x"  # a CF coordinates attribute
    meta_path.write_text(json.dumps(meta))
    assert _zarr_chunks.open_stored_group(tmp_path / "e.zarr") is None
    back = lld.open_exposure_zarr(tmp_path / "e.zarr")  # still opens (through xarray)
    np.testing.assert_array_equal(back["image"].values, exposure["image"].values)


def test_written_chunks_are_zarrs_own(tmp_path: Path) -> None:
    """StoredArray.write as zarr writes: edge chunks padded, all-fill chunks not stored
    (and an old file of one removed); read back equal by zarr and by this module."""
    from lsstlite.data._zarr_chunks import create_stored_group, read_stored_group

    values = np.arange(70 * 50, dtype=np.float32).reshape(70, 50)
    values[32:, :32] = np.nan  # chunk (1, 0) all fill
    arrays = {
        "image": (("y", "x"), ((70, 50), np.float32, {"units": "nJy"})),
        "y": (("y",), np.arange(70, dtype=np.int64)),
        "x": (("x",), np.arange(50, dtype=np.int64)),
    }
    stores = create_stored_group(tmp_path / "g.zarr", {"a": 1}, arrays, (32, 32))
    image = stores["image"]
    (tmp_path / "g.zarr" / "image" / "c" / "1").mkdir(parents=True)
    (tmp_path / "g.zarr" / "image" / "c" / "1" / "0").write_bytes(b"old")
    for i, y0 in enumerate(range(0, 70, 32)):
        for j, x0 in enumerate(range(0, 50, 32)):
            image.write((i, j), values[y0 : y0 + 32, x0 : x0 + 32])
    assert not (tmp_path / "g.zarr" / "image" / "c" / "1" / "0").exists()
    np.testing.assert_array_equal(_zarr_read(tmp_path / "g.zarr" / "image"), values)
    group = read_stored_group(tmp_path / "g.zarr")
    assert group is not None and group.attrs == {"a": 1}
    np.testing.assert_array_equal(group["image"].data.values(), values)
    np.testing.assert_array_equal(group["x"].values, np.arange(50))
    assert group.sizes == {"y": 70, "x": 50} and group["image"].attrs == {"units": "nJy"}
    with pytest.raises(ValueError, match="shape"):
        image.write((0, 0), values[:10, :10])
    with pytest.raises(FileExistsError):
        create_stored_group(tmp_path / "g.zarr", {}, arrays, (32, 32))
