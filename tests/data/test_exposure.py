"""The exposure model and its accessor."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import matplotlib
import numpy as np
import pytest
import xarray as xr

import lsstlite.data as lld

matplotlib.use("Agg")


def test_layout(exposure: xr.Dataset) -> None:
    assert exposure["image"].dims == ("y", "x")
    assert exposure["image"].dtype == np.float32
    assert exposure["mask"].dtype == np.int32
    assert exposure["variance"].dtype == np.float32
    assert exposure.lsst.xy0 == (10, 20)
    assert exposure.lsst.bbox == (10, 20, 210, 320)
    planes = exposure.lsst.mask_planes
    for name in (
        "BAD",
        "SAT",
        "INTRP",
        "CR",
        "EDGE",
        "DETECTED",
        "DETECTED_NEGATIVE",
        "SUSPECT",
        "NO_DATA",
        "CLIPPED",
        "REJECTED",
        "SENSOR_EDGE",
        "INEXACT_PSF",
        "STREAK",
    ):
        assert name in planes
    assert len(set(planes.values())) == len(planes), "two planes share a bit"


def test_lazy_inputs_stay_lazy() -> None:
    image = da.ones((256, 256), chunks=64, dtype=np.float64)
    ds = lld.make_exposure(image)
    for name in ("image", "mask", "variance"):
        assert isinstance(ds[name].data, da.Array)
    assert ds["image"].data.chunks == image.chunks


def test_metadata_accessors(exposure: xr.Dataset) -> None:
    assert exposure.lsst.visit_info is not None and exposure.lsst.visit_info.band == "r"
    psf = exposure.lsst.psf
    assert isinstance(psf, lld.MoffatPsf) and psf.fwhm == 4.0
    pc = exposure.lsst.photo_calib
    assert pc is not None and pc.zero_point == pytest.approx(28.0, abs=1e-12)
    # 1 count at zp 28 is 10**(-0.4 * (28 - 31.4)) nJy
    assert pc.njy_per_count == pytest.approx(10 ** (1.36), rel=1e-12)


def test_pixel_sky_round_trip_and_cutout(exposure: xr.Dataset) -> None:
    x = np.array([10.0, 50.5, 209.0])
    y = np.array([20.0, 100.25, 319.0])
    ra, dec = exposure.lsst.pixel_to_sky(x, y)
    xb, yb = exposure.lsst.sky_to_pixel(ra, dec)
    np.testing.assert_allclose(xb, x, atol=1e-8)
    np.testing.assert_allclose(yb, y, atol=1e-8)
    cut = exposure.lsst.cutout(50, 100, 80, 140)
    assert cut.sizes == {"y": 40, "x": 30}
    assert cut.lsst.xy0 == (50, 100)
    # the cut-out keeps the parent-frame WCS: same sky position for the same parent pixel
    np.testing.assert_allclose(cut.lsst.pixel_to_sky(50.5, 100.25), (ra[1], dec[1]), atol=1e-12)


def test_mask_of(exposure: xr.Dataset) -> None:
    sat = exposure.lsst.mask_of("SAT")
    expected = (exposure["mask"].values & 2) != 0
    np.testing.assert_array_equal(sat.values, expected)
    with pytest.raises(KeyError, match="NOPE"):
        exposure.lsst.mask_of("NOPE")


def test_add_mask_plane(exposure: xr.Dataset) -> None:
    out = lld.add_mask_plane(exposure, "GHOST")
    planes = out.lsst.mask_planes
    assert planes["GHOST"] not in lld.DEFAULT_MASK_PLANES.values()
    assert "GHOST" not in exposure.lsst.mask_planes, "input was modified"


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="variance shape"):
        lld.make_exposure(np.zeros((4, 4)), variance=np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2-D"):
        lld.make_exposure(np.zeros(4))
    with pytest.raises(ValueError, match="units"):
        lld.make_exposure(np.zeros((4, 4)), units="furlongs")


def test_plot_writes_an_image(exposure: xr.Dataset, tmp_path: Path) -> None:
    ax = exposure.lsst.plot(show_mask="SAT")
    ax.figure.savefig(tmp_path / "e.png")
    assert (tmp_path / "e.png").stat().st_size > 1000
    assert "exposure=3" in ax.get_title()
    with pytest.raises(ValueError, match="stretch"):
        exposure.lsst.plot(stretch="wild")
    import matplotlib.pyplot as plt

    plt.close("all")


def test_exposure_label_names_file_and_data_id() -> None:
    """Error messages name an exposure by its file and data ID, as far as it knows them."""
    from lsstlite.data.exposure import exposure_label

    exp = lld.make_exposure(np.zeros((4, 4), np.float32))
    assert exposure_label(exp) == "(an exposure in memory)"
    exp.attrs["visit_info"] = {"exposure": 103, "detector": 0, "band": "r"}
    assert exposure_label(exp) == "exposure 103, detector 0"
    exp.attrs["filename"] = "/data/raw_103_0.fits"
    assert exposure_label(exp) == "'/data/raw_103_0.fits' (exposure 103, detector 0)"
    exp.attrs["visit_info"] = {}
    assert exposure_label(exp) == "'/data/raw_103_0.fits'"
