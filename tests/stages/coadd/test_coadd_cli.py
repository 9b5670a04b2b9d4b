"""``lsstlite coadd``: the same coadd as ``coadd_exposures``, from files, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import lsstlite.data as lld
from lsstlite.cli.main import main
from lsstlite.data.wcs import wcs_from_cards
from lsstlite.stages.coadd import coadd_exposures
from lsstlite.stages.coadd.cli import read_grid
from tests.stages.coadd._synthetic import synthetic_calexp, synthetic_patch

PATCH = synthetic_patch((180, 200))


def _head(path: Path, naxis: bool = True) -> Path:
    header = wcs_from_cards(PATCH.wcs_cards).to_header()
    if naxis:
        header["NAXIS"] = 2
        header["NAXIS1"], header["NAXIS2"] = PATCH.shape[1], PATCH.shape[0]
    path.write_text(header.tostring(sep="\n", endcard=True, padding=False) + "\n")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[xr.Dataset]]:
    tmp = tmp_path_factory.mktemp("coadd_cli")
    paths, exposures = [], []
    for k in range(3):
        ds = synthetic_calexp((170, 190), seed=k, offset_px=(1.7 * k, -2.1 * k), chunks=64)
        ds = ds.compute()
        path = tmp / (f"c{k}.fits" if k == 2 else f"c{k}.zarr")
        if k == 2:
            lld.write_exposure_fits(ds, path)
        else:
            lld.write_exposure_zarr(ds, path, chunks=(64, 64))
        paths.append(path)
        exposures.append(ds)
    return paths, exposures


def test_the_command_writes_the_coadd_of_the_library(
    inputs: tuple[list[Path], list[xr.Dataset]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths, exposures = inputs
    out, fits_out = tmp_path / "coadd.zarr", tmp_path / "coadd.fits"
    args = ["coadd", *map(str, paths), "--grid", str(_head(tmp_path / "g.head"))]
    args += ["--out", str(out), "--fits", str(fits_out), "--method", "clipped", "--chunk", "64"]
    assert main(args) == 0
    assert "3 of 3 calexps onto 200 × 180 (clipped, lanczos3)" in capsys.readouterr().out
    got = lld.open_exposure_zarr(out).compute()
    want = coadd_exposures(exposures, PATCH, method="clipped", chunks=(64, 64)).compute()
    for name in ("image", "variance", "mask"):
        np.testing.assert_array_equal(got[name].values, want[name].values)
    assert got.attrs["coadd_inputs"] == want.attrs["coadd_inputs"]
    assert np.isfinite(got["image"].values).mean() > 0.9
    back = lld.read_exposure_fits(fits_out)
    np.testing.assert_array_equal(back["image"].values, got["image"].values)
    # a FITS file's own header serves as the grid too
    assert read_grid(fits_out) == read_grid(tmp_path / "g.head")


def test_errors_name_the_file_and_keep_what_exists(
    inputs: tuple[list[Path], list[xr.Dataset]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths, _ = inputs
    calexps = [str(p) for p in paths]
    head = _head(tmp_path / "g.head")
    assert main(["coadd", *calexps, "--grid", str(tmp_path / "none.head"), "--out", "x"]) == 2
    assert "none.head: no such file" in capsys.readouterr().err
    bad = _head(tmp_path / "bad.head", naxis=False)
    assert main(["coadd", *calexps, "--grid", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.head: NAXIS1 and NAXIS2" in capsys.readouterr().err
    missing = str(tmp_path / "nothing.zarr")
    assert main(["coadd", missing, "--grid", str(head), "--out", str(tmp_path / "o")]) == 2
    assert "nothing.zarr: no such file" in capsys.readouterr().err
    # an existing output is refused, and left as it was
    out = tmp_path / "kept"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["coadd", *calexps, "--grid", str(head), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"


def test_a_calexp_off_the_grid_is_reported(
    inputs: tuple[list[Path], list[xr.Dataset]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths, _ = inputs
    far = synthetic_calexp((50, 50), seed=9, offset_px=(5000.0, 0.0)).compute()
    lld.write_exposure_zarr(far, tmp_path / "far.zarr")
    args = ["coadd", str(paths[0]), str(tmp_path / "far.zarr"), "--grid"]
    args += [str(_head(tmp_path / "g.head")), "--out", str(tmp_path / "c.zarr")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 of 2 calexps" in out and "no overlap with the patch" in out


def test_a_failed_run_leaves_the_existing_output(
    inputs: tuple[list[Path], list[xr.Dataset]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths, exposures = inputs
    broken = tmp_path / "broken.zarr"
    lld.write_exposure_zarr(exposures[0], broken, chunks=(64, 64))
    (broken / "image" / "c" / "1" / "1").write_bytes(b"truncated")
    out = tmp_path / "coadd.zarr"
    head = str(_head(tmp_path / "g.head"))
    assert main(["coadd", str(paths[0]), "--grid", head, "--out", str(out)]) == 0
    before = lld.open_exposure_zarr(out).compute()
    capsys.readouterr()
    args = ["coadd", str(broken), "--grid", head, "--out", str(out), "--overwrite"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "broken.zarr/image/c/1/1: 9 bytes, expected" in err
    xr.testing.assert_identical(lld.open_exposure_zarr(out).compute(), before)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def _store_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(
    ("method", "stored"), [("clipped", None), ("compare_warp", (100, 96)), ("median", (64, 64))]
)
def test_write_coadd_stores_what_write_exposure_zarr_stores(
    inputs: tuple[list[Path], list[xr.Dataset]],
    tmp_path: Path,
    method: str,
    stored: tuple[int, int] | None,
) -> None:
    """The streaming writer of the command gives the very files (metadata and chunks) of
    the library's coadd written by xarray, whatever the stored chunks (here not multiples
    of the 64² output chunks, or one chunk), from zarr calexps opened without xarray and
    a FITS calexp (a Dask dependency)."""
    from lsstlite.data._zarr_chunks import read_stored_group
    from lsstlite.stages.coadd.ops import plan_coadd, write_coadd

    paths, exposures = inputs
    calexps = [read_stored_group(paths[0]), read_stored_group(paths[1]), exposures[2]]
    plan = plan_coadd(calexps, PATCH, method=method, chunks=(64, 64))  # type: ignore[arg-type]
    write_coadd(plan, tmp_path / "stream.zarr", chunks=stored)
    coadd = coadd_exposures(exposures, PATCH, method=method, chunks=(64, 64))  # type: ignore[arg-type]
    lld.write_exposure_zarr(coadd, tmp_path / "xarray.zarr", chunks=stored)
    got, want = _store_files(tmp_path / "stream.zarr"), _store_files(tmp_path / "xarray.zarr")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name
    with pytest.raises(FileExistsError):
        write_coadd(plan, tmp_path / "stream.zarr")


def test_the_command_loads_no_xarray_for_zarr_calexps(
    inputs: tuple[list[Path], list[xr.Dataset]], tmp_path: Path
) -> None:
    import json
    import os
    import subprocess
    import sys

    import lsstlite

    src = str(Path(lsstlite.__file__).resolve().parents[1])  # the lsstlite under test
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    paths, _ = inputs
    code = (
        "import json, sys\n"
        "from lsstlite.cli.main import main\n"
        f"args = ['coadd', {str(paths[0])!r}, {str(paths[1])!r}, '--grid', "
        f"{str(_head(tmp_path / 'g.head'))!r}, '--out', {str(tmp_path / 'c.zarr')!r}]\n"
        "assert main(args) == 0\n"
        "heavy = ['xarray', 'pandas', 'pyarrow', 'dask.array', 'dask.dataframe', 'distributed']\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.splitlines()[-1]) == []
    assert lld.open_exposure_zarr(tmp_path / "c.zarr")["image"].notnull().any()
