"""Exposure round trips: zarr (lazy) and multi-extension FITS, exact to the bit."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS

import lsstlite.data as lld


def test_zarr_round_trip_is_exact_and_lazy(exposure: xr.Dataset, tmp_path: Path) -> None:
    lld.write_exposure_zarr(exposure, tmp_path / "e.zarr", chunks=(128, 96))
    back = lld.open_exposure_zarr(tmp_path / "e.zarr")
    for name in ("image", "mask", "variance"):
        assert isinstance(back[name].data, da.Array), f"{name} is not lazy"
        assert back[name].data.chunks[0][0] == 128 and back[name].data.chunks[1][0] == 96
    xr.testing.assert_identical(back.compute(), exposure)
    assert back.attrs == exposure.attrs
    assert back["mask"].attrs["planes"] == exposure["mask"].attrs["planes"]


def test_zarr_refuses_to_overwrite(exposure: xr.Dataset, tmp_path: Path) -> None:
    lld.write_exposure_zarr(exposure, tmp_path / "e.zarr")
    with pytest.raises(FileExistsError, match="overwrite"):
        lld.write_exposure_zarr(exposure, tmp_path / "e.zarr")
    changed = exposure.copy()
    changed["image"] = changed["image"] + 1
    lld.write_exposure_zarr(changed, tmp_path / "e.zarr", overwrite=True)
    np.testing.assert_array_equal(
        lld.open_exposure_zarr(tmp_path / "e.zarr")["image"], exposure["image"] + 1
    )


def test_zarr_subgroup_and_lazy_input(exposure: xr.Dataset, tmp_path: Path) -> None:
    lazy = exposure.chunk({"y": 64, "x": 64})
    lld.write_exposure_zarr(lazy, tmp_path / "repo.zarr", path="run/calexp/1")
    back = lld.open_exposure_zarr(tmp_path / "repo.zarr", path="run/calexp/1")
    xr.testing.assert_identical(back.compute(), exposure)


def test_zarr_chunks_written_as_zarr_writes_them(
    exposure: xr.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stored chunk is written by one task from the blocks it overlaps (blocks that
    do not line up with the chunks, an all-NaN image chunk that gets no file): the store
    is the one xarray and zarr write, file for file, byte for byte."""
    from lsstlite.data import _zarr_chunks

    calls = []
    original = _zarr_chunks.write_chunk_from_blocks
    monkeypatch.setattr(
        _zarr_chunks,
        "write_chunk_from_blocks",
        lambda *a: calls.append(a[2]) or original(*a),
    )
    exp = exposure.copy(deep=True)
    exp["image"][:64, :48] = np.nan
    ref = exp.chunk({"y": 64, "x": 48})
    for name in ref.variables:
        ref[name].encoding = {"_FillValue": None}
        if ref[name].dtype.kind == "f":
            ref[name].encoding["compressors"] = None
    ref.to_zarr(tmp_path / "ref.zarr", zarr_format=3, consolidated=False)
    files = {p.relative_to(tmp_path / "ref.zarr") for p in (tmp_path / "ref.zarr").rglob("*")}
    assert not (tmp_path / "ref.zarr" / "image" / "c" / "0" / "0").exists()
    ny, nx = exp["image"].shape
    # blocks across chunk edges, and blocks of whole chunks
    for blocks in ({"y": 50, "x": 70}, {"y": 128, "x": 96}):
        calls.clear()
        out = tmp_path / f"e{blocks['y']}.zarr"
        lld.write_exposure_zarr(exp.chunk(blocks), out, chunks=(64, 48))
        assert sorted(calls) == [(i, j) for i in range(-(-ny // 64)) for j in range(-(-nx // 48))]
        assert {p.relative_to(out) for p in out.rglob("*")} == files
        for rel in files:
            if (tmp_path / "ref.zarr" / rel).is_file():
                want = (tmp_path / "ref.zarr" / rel).read_bytes()
                assert (out / rel).read_bytes() == want, (blocks, rel)


def test_open_missing_zarr_names_the_place(tmp_path: Path) -> None:
    with pytest.raises(lld.ExposureReadError, match="nothing"):
        lld.open_exposure_zarr(tmp_path / "nothing.zarr")


def test_fits_round_trip_is_exact(exposure: xr.Dataset, tmp_path: Path) -> None:
    path = tmp_path / "e.fits"
    lld.write_exposure_fits(exposure, path)
    back = lld.read_exposure_fits(path)
    xr.testing.assert_identical(back, exposure)
    assert back.attrs == exposure.attrs


def test_fits_layout_is_standard(exposure: xr.Dataset, tmp_path: Path) -> None:
    """ds9 / astropy see IMAGE, MASK, VARIANCE with a WCS on the file's own pixel grid."""
    path = tmp_path / "e.fits"
    exposure.lsst.to_fits(path)
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "METADATA"]
        assert hdul["IMAGE"].data.dtype.kind == "f" and hdul["MASK"].data.dtype.kind == "i"
        assert hdul[0].header["FILTER"] == "SIM-r" and hdul[0].header["EXPTIME"] == 30.0
        assert hdul["MASK"].header["MP_SAT"] == 1
        assert hdul["MASK"].header["MP_DETECTED_NEGATIVE"] == 6
        file_wcs = WCS(hdul["IMAGE"].header)
    # file pixel (0, 0) is parent pixel (10, 20)
    ra, dec = file_wcs.all_pix2world(0.0, 0.0, 0)
    ra_p, dec_p = exposure.lsst.pixel_to_sky(10.0, 20.0)
    assert abs(ra - ra_p) < 1e-10 and abs(dec - dec_p) < 1e-10


def test_fits_refuses_to_overwrite(exposure: xr.Dataset, tmp_path: Path) -> None:
    lld.write_exposure_fits(exposure, tmp_path / "e.fits")
    with pytest.raises(FileExistsError):
        lld.write_exposure_fits(exposure, tmp_path / "e.fits")


@pytest.mark.parametrize(
    "content, match",
    [(b"this is not a FITS file at all" * 100, "not a readable FITS"), (None, "missing extension")],
)
def test_bad_fits_names_the_file(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "bad.fits"
    if content is None:
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((3, 3)), name="IMAGE")]).writeto(
            path
        )
    else:
        path.write_bytes(content)
    with pytest.raises(lld.ExposureReadError, match=match) as info:
        lld.read_exposure_fits(path)
    assert "bad.fits" in str(info.value)


def test_truncated_fits_names_the_file(exposure: xr.Dataset, tmp_path: Path) -> None:
    path = tmp_path / "cut.fits"
    lld.write_exposure_fits(exposure, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(lld.ExposureReadError, match=r"cut\.fits"):
        lld.read_exposure_fits(path)
