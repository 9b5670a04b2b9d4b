"""WCS cards: TAN, TAN-SIP, TPV and ZPX survive exposures' zarr and FITS round trips."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

import lsstlite.data as lld


def _header(path: Path) -> fits.Header:
    with fits.open(path) as hdul:
        return hdul[0].header.copy()


def _wcs(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


@pytest.mark.parametrize("name", ["sipsample.fits", "tpv.fits.gz", "zpx.fits.gz"])
def test_real_distorted_wcs_round_trips(real_data: Path, tmp_path: Path, name: str) -> None:
    path = real_data / "wcs_distortion_samples" / name
    header = _header(path)
    reference = _wcs(header)
    cards = lld.wcs_to_cards(header)
    ny, nx = header["NAXIS2"], header["NAXIS1"]
    ds = lld.make_exposure(np.zeros((ny, nx), np.float32), wcs=cards)
    lld.write_exposure_zarr(ds, tmp_path / "e.zarr")
    lld.write_exposure_fits(ds, tmp_path / "e.fits")
    x = np.array([0.0, nx / 3, nx - 1.0])
    y = np.array([0.0, ny / 2, ny - 1.0])
    expected = reference.all_pix2world(x, y, 0)
    for back in (
        lld.open_exposure_zarr(tmp_path / "e.zarr"),
        lld.read_exposure_fits(tmp_path / "e.fits"),
    ):
        assert back.attrs["wcs"] == cards
        got = back.lsst.wcs.all_pix2world(x, y, 0)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # and a FITS reader that knows nothing of lsstlite places the pixels the same way
    file_wcs = _wcs(fits.getheader(tmp_path / "e.fits", "IMAGE"))
    np.testing.assert_allclose(file_wcs.all_pix2world(x, y, 0), expected, rtol=0, atol=1e-12)


def test_sip_from_astropy_object(real_data: Path) -> None:
    reference = _wcs(_header(real_data / "wcs_distortion_samples" / "sipsample.fits"))
    assert reference.sip is not None
    cards = lld.wcs_to_cards(reference)
    assert cards["CTYPE1"].endswith("-SIP") and "A_2_0" in cards
    rebuilt = lld.wcs_from_cards(cards)
    x = np.linspace(0, 255, 7)
    np.testing.assert_allclose(
        rebuilt.all_pix2world(x, x[::-1], 0), reference.all_pix2world(x, x[::-1], 0), atol=1e-12
    )


def test_tan_wcs_orientation() -> None:
    wcs = lld.make_tan_wcs(10.0, -30.0, (50.0, 50.0), 0.2)
    ra0, dec0 = wcs.all_pix2world(50.0, 50.0, 0)
    assert (float(ra0), float(dec0)) == pytest.approx((10.0, -30.0))
    ra1, _ = wcs.all_pix2world(60.0, 50.0, 0)
    _, dec1 = wcs.all_pix2world(50.0, 60.0, 0)
    assert ra1 < ra0, "east should be to the left (x increasing = RA decreasing)"
    assert dec1 - dec0 == pytest.approx(10 * 0.2 / 3600, rel=1e-6)
