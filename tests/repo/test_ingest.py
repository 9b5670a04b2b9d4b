"""Ingest (raws, refcats), certify, export and the command line."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from lsstlite.repo import Butler, DatasetExistsError, certify, export, ingest_raws, ingest_refcat
from lsstlite.repo.cli import main as cli_main

from .conftest import small_exposure


class FakeCam:
    """A tiny instrument following the lsstlite.instruments interface."""

    name = "FakeCam"

    def read_raw_metadata(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = fits.getheader(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable FITS file ({exc})") from exc
        try:
            return {
                "instrument": header["INSTRUME"],
                "exposure": int(header["EXPNUM"]),
                "detector": int(header["DETECTOR"]),
                "band": header["BAND"],
                "physical_filter": header["FILTER"],
                "day_obs": int(header["DAYOBS"]),
                "obs_type": header["OBSTYPE"],
                "mjd": float(header["MJD-OBS"]),
                "exptime": float(header["EXPTIME"]),
                "ra": 10.0,
                "dec": -5.0,
            }
        except KeyError as exc:
            raise ValueError(f"{path}: header lacks {exc}") from None


def write_raw(path: Path, exposure: int, detector: int, *, drop: str | None = None) -> Path:
    header = fits.Header()
    cards = {
        "INSTRUME": "FakeCam",
        "EXPNUM": exposure,
        "DETECTOR": detector,
        "BAND": "r" if exposure % 2 else "g",
        "FILTER": "r_01" if exposure % 2 else "g_01",
        "DAYOBS": 20220526,
        "OBSTYPE": "science",
        "MJD-OBS": 59725.1 + exposure * 0.01,
        "EXPTIME": 30.0,
    }
    for k, v in cards.items():
        if k != drop:
            header[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(np.full((8, 8), exposure * 100 + detector, np.int16), header).writeto(path)
    return path


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    d = tmp_path / "raws"
    for e in (1, 2):
        for det in (0, 1):
            write_raw(d / f"e{e}" / f"raw_{e}_{det}.fits", e, det)
    return d


def _bad_files(d: Path) -> dict[str, Path]:
    trunc = write_raw(d / "bad" / "truncated.fits", 9, 0)
    trunc.write_bytes(trunc.read_bytes()[:1000])
    text = d / "bad" / "notfits.fits"
    text.write_text("this is not FITS\n")
    missing = write_raw(d / "bad" / "missing.fits", 9, 1, drop="EXPNUM")
    return {"truncated": trunc, "notfits": text, "missing": missing}


def test_ingest_good_and_bad_files(butler: Butler, raw_dir: Path, tmp_path: Path) -> None:
    bad = _bad_files(raw_dir)
    quarantine = tmp_path / "quarantine"
    report = ingest_raws(
        butler, raw_dir, transfer="copy", quarantine=quarantine, instrument=FakeCam()
    )
    assert len(report.ingested) == 4
    failed = dict(report.failed)
    assert set(failed) == {str(p) for p in bad.values()}
    assert "EXPNUM" in failed[str(bad["missing"])]
    assert all(str(p) in reason for p, reason in report.failed)
    assert sorted(os.listdir(quarantine)) == ["missing.fits", "notfits.fits", "truncated.fits"]
    assert not bad["truncated"].exists()
    refs = butler.query_datasets("raw", collections="FakeCam/raw/all")
    assert len(refs) == 4
    # dimension records are registered: implied band, day_obs, mjd
    refs = butler.query_datasets(
        "raw",
        "band = 'r' AND exposure.day_obs = 20220526 AND exposure.mjd > 59725",
        collections="FakeCam/raw/all",
    )
    assert {r.data_id["exposure"] for r in refs} == {1}
    path = butler.get(
        "raw", instrument="FakeCam", exposure=2, detector=1, collections="FakeCam/raw/all"
    )
    assert fits.getdata(path)[0, 0] == 201
    # re-ingest: a no-op, reported as such
    again = ingest_raws(butler, raw_dir, transfer="copy", instrument=FakeCam())
    assert again.ingested == [] and len(again.skipped) == 4 and again.failed == []
    summary = str(again)  # the summary names each file skipped
    assert summary.count("  skipped: ") == 4 and all(p in summary for p, _ in again.skipped)
    assert len(butler.query_datasets("raw", collections="FakeCam/raw/all")) == 4


def test_reingest_of_a_different_file_is_refused(
    butler: Butler, raw_dir: Path, tmp_path: Path
) -> None:
    ingest_raws(butler, raw_dir, transfer="copy", instrument=FakeCam())
    other = write_raw(tmp_path / "other" / "x.fits", 1, 0)
    with fits.open(other, mode="update") as hdul:
        hdul[0].data[:] = 7
    report = ingest_raws(butler, other, transfer="copy", instrument=FakeCam())
    assert report.ingested == [] and len(report.failed) == 1
    assert "different file is already ingested" in report.failed[0][1]


@pytest.mark.parametrize("transfer", ["direct", "copy", "link", "symlink", "move"])
def test_transfer_modes(butler: Butler, raw_dir: Path, repo_path: Path, transfer: str) -> None:
    src = raw_dir / "e1" / "raw_1_0.fits"
    content = src.read_bytes()
    report = ingest_raws(butler, [src], transfer=transfer, run="raws", instrument=FakeCam())
    (ref,) = report.ingested
    stored = Path(butler.get(ref))
    assert stored.read_bytes() == content
    inside = str(stored).startswith(str(repo_path))
    assert inside == (transfer != "direct")
    if transfer == "direct":
        assert stored == src
    if transfer == "link":
        assert os.path.samefile(stored, src)
    if transfer == "symlink":
        assert stored.is_symlink()
    if transfer == "move":
        assert not src.exists()
    else:
        assert src.exists()
    # removing the run never touches files outside the repository
    butler.remove_runs("raws")
    if transfer != "move":
        assert src.read_bytes() == content


def test_ingest_uses_instrument_for_header(monkeypatch, butler: Butler, raw_dir: Path) -> None:
    import lsstlite.instruments as instruments

    seen = []

    def fake_for_header(header):
        seen.append(header["INSTRUME"])
        return FakeCam()

    monkeypatch.setattr(instruments, "instrument_for_header", fake_for_header)
    report = ingest_raws(butler, raw_dir / "e1", transfer="direct")
    assert len(report.ingested) == 2 and seen == ["FakeCam", "FakeCam"]


def test_calibration_lookup_uses_ingested_exposure_time(butler: Butler, raw_dir: Path) -> None:
    ingest_raws(butler, raw_dir, transfer="direct", instrument=FakeCam())
    butler.put(small_exposure(1.0), "bias", instrument="FakeCam", detector=0, run="bias/a")
    butler.put(small_exposure(2.0), "bias", instrument="FakeCam", detector=0, run="bias/b")
    certify(butler, "bias/a", "calib", begin=None, end=59725.115)  # exposure 1 at 59725.11
    certify(butler, "bias/b", "calib", begin=59725.115, end=None)  # exposure 2 at 59725.12
    b1 = butler.get("bias", instrument="FakeCam", exposure=1, detector=0, collections="calib")
    b2 = butler.get("bias", instrument="FakeCam", visit=2, detector=0, collections="calib")
    assert round(float(b1["image"].mean())) == 1 and round(float(b2["image"].mean())) == 2


def test_ingest_refcat_parquet_and_fits(butler: Butler, tmp_path: Path) -> None:
    df = pd.DataFrame({"ra": [1.0, 2.0], "dec": [3.0, 4.0], "r_flux": [10.0, 20.0]})
    pq_file = tmp_path / "cat.parquet"
    df.to_parquet(pq_file)
    ref = ingest_refcat(butler, pq_file, "gaia")
    assert ref.run == "refcats/gaia"
    from astropy.table import Table

    fits_file = tmp_path / "cat.fits"
    Table.from_pandas(df).write(fits_file)
    ingest_refcat(butler, fits_file, "ps1")
    assert butler.get_chain("refcats") == ["refcats/gaia", "refcats/ps1"]
    pd.testing.assert_frame_equal(butler.get("refcat", {}, collections="refcats/ps1"), df)
    pd.testing.assert_frame_equal(butler.get("refcat", {}, collections="refcats"), df)
    with pytest.raises(ValueError, match="refcat name"):
        ingest_refcat(butler, pq_file, "../x")
    # catalogs calibration could not use are refused at ingest, naming the file
    bad = {
        "no_ra": (df.drop(columns="ra"), r"column 'ra' is missing"),
        "no_flux": (df.drop(columns="r_flux"), r"no numeric <band>_flux column"),
        "str_flux": (df.assign(r_flux=["10", "20"]), r"\['r_flux'\] are not numbers"),
        "empty": (df.iloc[:0], r"it has no rows"),
    }
    for name, (frame, message) in bad.items():
        path = tmp_path / f"{name}.parquet"
        frame.to_parquet(path)
        with pytest.raises(
            ValueError, match=f"reference catalog {re.escape(str(path))}: .*{message}"
        ):
            ingest_refcat(butler, path, name)
    with pytest.raises(FileNotFoundError, match=r"nothing\.parquet: no such file"):
        ingest_refcat(butler, tmp_path / "nothing.parquet", "x")
    assert butler.get_chain("refcats") == ["refcats/gaia", "refcats/ps1"]  # nothing added
    with pytest.raises(DatasetExistsError, match=r"named 'gaia' is already in run .*remove-runs"):
        ingest_refcat(butler, pq_file, "gaia")


def test_export(butler: Butler, tmp_path: Path) -> None:
    from lsstlite.data import read_exposure_fits

    ds = small_exposure(3.0)
    did = {"instrument": "SimCam", "exposure": 12, "detector": 3}
    butler.put(ds, "calexp", did)
    butler.put(pd.DataFrame({"flux": [1.0, 2.0]}), "src", did)
    butler.put({"sigma": 2.0}, "psf", did)
    out = tmp_path / "out"
    (f,) = export(butler, "demo", "calexp", "detector = 3", out)
    assert f.name == "calexp_instrument-SimCam_exposure-12_detector-3.fits"
    back = read_exposure_fits(f)
    np.testing.assert_array_equal(back["image"].values, ds["image"].values)
    (t,) = export(butler, "demo", "src", None, out)
    table = pd.read_parquet(t)
    assert list(table["exposure"]) == [12, 12] and list(table["instrument"]) == ["SimCam"] * 2
    (j,) = export(butler, "demo", "psf", None, out)
    assert json.loads(j.read_text()) == {"sigma": 2.0}
    assert export(butler, "demo", "calexp", "detector = 4", out) == []


def test_export_threads(butler: Butler, tmp_path: Path) -> None:
    """Several files at once: the same files in query order as one at a time; an existing
    destination stops the export before anything is written."""
    from lsstlite.data import read_exposure_fits

    for det in range(5):
        butler.put(
            small_exposure(float(det)),
            "calexp",
            {"instrument": "SimCam", "exposure": 12, "detector": det},
        )
    serial = export(butler, "demo", "calexp", None, tmp_path / "a")
    threaded = export(butler, "demo", "calexp", None, tmp_path / "b", threads=3)
    assert [f.name for f in threaded] == [f.name for f in serial] and len(serial) == 5
    for f, g in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(
            read_exposure_fits(f)["image"].values, read_exposure_fits(g)["image"].values
        )
    keep = threaded[2].read_bytes()
    threaded[0].unlink()
    with pytest.raises(FileExistsError, match=threaded[1].name):
        export(butler, "demo", "calexp", None, tmp_path / "b", threads=3)
    assert not threaded[0].exists() and threaded[2].read_bytes() == keep
    # on the workers of a dask cluster (processes: the butler travels by its root)
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        remote = export(butler, "demo", "calexp", None, tmp_path / "c", client=client)
    assert [f.name for f in remote] == [f.name for f in serial]
    for f, g in zip(serial, remote, strict=True):
        assert g.parent == tmp_path / "c"
        np.testing.assert_array_equal(
            read_exposure_fits(f)["image"].values, read_exposure_fits(g)["image"].values
        )


def test_cli(tmp_path: Path, raw_dir: Path, capsys, monkeypatch) -> None:
    import lsstlite.instruments as instruments

    monkeypatch.setattr(instruments, "instrument_for_header", lambda header: FakeCam())
    repo = str(tmp_path / "clirepo")
    assert cli_main(["repo", "create", repo]) == 0
    assert cli_main(["ingest", repo, str(raw_dir), "--transfer", "copy"]) == 0
    assert cli_main(["query", "collections", repo, "FakeCam/*"]) == 0
    assert "FakeCam/raw/all  RUN" in capsys.readouterr().out
    assert (
        cli_main(["query", "datasets", repo, "raw", "--where", "band='r'", "--format", "json"]) == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert {r["data_id"]["exposure"] for r in rows} == {1} and len(rows) == 2
    assert cli_main(["query", "datasets", repo, "raw", "--collections", "FakeCam/raw/all"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5
    assert (
        cli_main(
            [
                "export",
                repo,
                "--collections",
                "FakeCam/raw/all",
                "--dataset-type",
                "raw",
                "--where",
                "detector=0",
                "--to",
                str(tmp_path / "exp"),
            ]
        )
        == 0
    )
    assert len(os.listdir(tmp_path / "exp")) == 2
    # errors: one line, exit code 2, no traceback
    capsys.readouterr()
    assert cli_main(["query", "datasets", repo, "raw", "--where", "visit IN (1, 2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lsstlite query: error:") and "Traceback" not in err
    assert cli_main(["remove-runs", repo, "nope"]) == 2
    assert "'nope' does not exist" in capsys.readouterr().err
    assert cli_main(["repo", "create", repo]) == 2
    assert cli_main(["certify", repo, "--input-run", "FakeCam/raw/all", "--collection", "c"]) == 2
    assert "no calibration datasets" in capsys.readouterr().err
    assert cli_main(["remove-runs", repo, "FakeCam/raw/all"]) == 0
    assert not (Path(repo) / "runs" / "FakeCam~2Fraw~2Fall").exists()
