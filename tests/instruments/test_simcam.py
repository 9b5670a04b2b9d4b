"""SimCam: registry, metadata, raw reading errors and camera constants."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from astropy.io import fits

from lsstlite.instruments import (
    METADATA_KEYS,
    Instrument,
    RawReadError,
    get_instrument,
    instrument_for_header,
    known_instruments,
)
from lsstlite.instruments.simcam import SimCam, day_obs_from_mjd, parse_section
from lsstlite.sim.raw import raw_path


def test_registry_and_header_lookup(small_dir) -> None:
    assert "SimCam" in known_instruments()
    cam = get_instrument("SimCam")
    assert isinstance(cam, Instrument) and cam.geometry.name == "full"
    header = fits.getheader(raw_path(small_dir, "science", 101, 0))
    found = instrument_for_header(header)
    assert isinstance(found, SimCam) and found.geometry.name == "small"
    with pytest.raises(KeyError, match="unknown instrument"):
        get_instrument("NoCam")
    with pytest.raises(KeyError, match="INSTRUME"):
        instrument_for_header({})
    assert cam.band_for_filter("SIM-i") == "i"
    with pytest.raises(KeyError, match="SIM-y"):
        cam.band_for_filter("SIM-y")


def test_metadata(small_dir) -> None:
    cam = SimCam("small")
    meta = cam.read_raw_metadata(raw_path(small_dir, "science", 102, 1))
    assert set(METADATA_KEYS) <= set(meta)
    assert meta["instrument"] == "SimCam" and meta["exposure"] == 102 and meta["detector"] == 1
    assert meta["obs_type"] == "science" and meta["band"] in ("r", "i")
    assert meta["physical_filter"] == f"SIM-{meta['band']}"
    assert meta["exptime"] == 30.0 and 1.0 <= meta["airmass"] <= 1.5
    assert meta["day_obs"] == day_obs_from_mjd(meta["mjd"])
    flat = cam.read_raw_metadata(raw_path(small_dir, "flat", 8, 0))
    bias = cam.read_raw_metadata(raw_path(small_dir, "bias", 1, 0))
    assert flat["obs_type"] == "flat" and bias["obs_type"] == "bias" and bias["exptime"] == 0.0
    # calibrations are taken the afternoon before the first night: same observing day
    assert bias["day_obs"] == meta["day_obs"]
    assert day_obs_from_mjd(61001.05) == day_obs_from_mjd(61000.8)  # evening → same day
    raw = cam.read_raw(raw_path(small_dir, "science", 102, 1))
    vi = raw.attrs["visit_info"]
    assert vi["visit"] == vi["exposure"] == 102 and vi["boresight_ra"] == meta["ra"]
    assert raw["image"].dtype == np.float32 and raw["image"].dims == ("y", "x")


def test_truncated_file_raises(small_dir, tmp_path) -> None:
    src = raw_path(small_dir, "science", 101, 0)
    bad = tmp_path / "truncated.fits"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(RawReadError, match=r"truncated\.fits"):
        SimCam("small").read_raw(bad)


def test_non_fits_file_raises(tmp_path) -> None:
    bad = tmp_path / "notes.fits"
    bad.write_text("this is not FITS\n" * 200)
    for call in (SimCam().read_raw, SimCam().read_raw_metadata):
        with pytest.raises(RawReadError, match=r"notes\.fits"):
            call(bad)


def test_missing_key_raises(small_dir, tmp_path) -> None:
    bad = tmp_path / "noexptime.fits"
    shutil.copy(raw_path(small_dir, "science", 101, 0), bad)
    with fits.open(bad, mode="update") as hdul:
        del hdul[0].header["EXPTIME"]
    message = f"raw file '{bad}': missing required header key 'EXPTIME' in HDU 0"
    for call in (SimCam().read_raw, SimCam().read_raw_metadata):
        with pytest.raises(RawReadError) as info:
            call(bad)
        assert str(info.value) == message


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("DETECTOR", 7, r"DETECTOR = 7, but SimCam \(small\) has detectors 0\.\.1"),
        ("EXPTIME", -5.0, r"EXPTIME = -5\.0 is negative"),
        ("EXPTIME", "thirty", r"EXPTIME = 'thirty' is not a number"),
        ("EXPNUM", 101.5, r"EXPNUM = 101\.5 is not a whole number"),
    ],
)
def test_impossible_header_values_raise(small_dir, tmp_path, key, value, message) -> None:
    """A value the camera cannot have is refused with the file and the key: at ingest
    (the metadata) as when the raw is read."""
    bad = tmp_path / "bad.fits"
    shutil.copy(raw_path(small_dir, "science", 101, 0), bad)
    with fits.open(bad, mode="update") as hdul:
        hdul[0].header[key] = value
    for call in (SimCam("small").read_raw, SimCam("small").read_raw_metadata):
        with pytest.raises(RawReadError, match=f"raw file '{re.escape(str(bad))}': {message}"):
            call(bad)


def test_camera_constants_are_fixed_and_in_range() -> None:
    a, b = SimCam("ci"), SimCam("full")
    for det in (0, 3):
        pa, pb = a.amplifier_parameters(det), b.amplifier_parameters(det)
        assert [p.gain for p in pa] == [p.gain for p in pb]  # seed- and geometry-free
        gains = [p.gain for p in pa]
        assert len(set(gains)) == len(gains) and all(1.2 <= g <= 1.8 for g in gains)
        assert all(5 <= p.read_noise <= 7 and 1000 <= p.bias_level <= 3000 for p in pa)
        assert all(p.saturation_adu <= 65535 for p in pa)
        xt = a.crosstalk_matrix(det)
        off = xt[~np.eye(4, dtype=bool)]
        assert np.all((off >= 1e-4) & (off <= 1e-3)) and np.all(np.diag(xt) == 0)
        assert 3 <= len(a.defects(det)) and any(d["kind"] == "bad_column" for d in a.defects(det))
        for lin, amp in zip(a.linearity(det), pa, strict=True):
            e = np.linspace(100.0, amp.full_well, 50)
            deficit = 1 - lin.apply(e)[-1] / e[-1]
            assert 0.01 < deficit < 0.05  # a few per cent at full well
            assert np.allclose(lin.correct(lin.apply(e) / amp.gain), e / amp.gain, rtol=2e-4)


def test_parse_section() -> None:
    assert parse_section("[1024:513,1:4096]") == ((0, 4096, 512, 1024), True, False)
    assert parse_section("[1:8,1:10]") == ((0, 10, 0, 8), False, False)
    with pytest.raises(ValueError, match="IRAF"):
        parse_section("1:8,1:10")
