"""The true TAN-SIP WCS, the header's pointing error, and the optical distortion."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from astropy.coordinates import SkyCoord

from lsstlite.data.wcs import wcs_from_cards
from lsstlite.instruments.simcam import GEOMETRIES, SimCam
from lsstlite.sim import true_wcs
from lsstlite.sim.raw import raw_path


def test_header_wcs_is_off_by_one_to_two_arcsec(small_dir) -> None:
    cam = SimCam("small")
    exposures = pd.read_parquet(small_dir / "truth" / "exposures.parquet")
    for row in exposures.itertuples():
        raw = cam.read_raw(raw_path(small_dir, "science", row.visit, row.detector))
        head = wcs_from_cards(raw.attrs["wcs"])
        true = true_wcs(small_dir, row.visit, row.detector)
        x, y = np.array([0.0, 511.0, 255.5]), np.array([0.0, 1023.0, 511.5])
        a = SkyCoord(*head.all_pix2world(x, y, 0), unit="deg")
        b = SkyCoord(*true.all_pix2world(x, y, 0), unit="deg")
        sep = a.separation(b).arcsec
        # CRVAL off by 1-2″; the ≤0.01° rotation error adds < 0.1″ on this small camera.
        assert np.all((sep > 0.9) & (sep < 2.2)), sep
        assert not np.allclose(sep, sep[0], atol=1e-6)  # the rotation is off too
        assert math.isclose(row.header_pointing_error_arcsec, sep[2], abs_tol=0.15)


def test_true_wcs_round_trips_through_the_truth_table(small_dir) -> None:
    from astropy.io import fits
    from astropy.wcs import WCS

    exposures = pd.read_parquet(small_dir / "truth" / "exposures.parquet")
    row = exposures.iloc[2]
    table = WCS(fits.Header.fromstring(row.wcs_header))
    true = true_wcs(small_dir, int(row.visit), int(row.detector))
    x, y = np.array([3.0, 500.0]), np.array([7.0, 1000.0])
    assert np.allclose(table.all_pix2world(x, y, 0), true.all_pix2world(x, y, 0), atol=1e-10)
    xx, yy = true.all_world2pix(*true.all_pix2world(x, y, 0), 0, tolerance=1e-10)
    assert np.allclose(xx, x, atol=1e-6) and np.allclose(yy, y, atol=1e-6)


def test_sip_distortion_reaches_stated_amplitude(small_dir) -> None:
    """At the focal-plane corner the SIP terms move pixels by the stated edge distortion."""
    geom = GEOMETRIES["small"]
    cam = SimCam("small")
    worst = 0.0
    for det in cam.detectors:
        wcs = true_wcs(small_dir, 101, det)
        corners = np.array([[0, 0], [511, 0], [0, 1023], [511, 1023]], float)
        u = corners[:, 0] - (wcs.wcs.crpix[0] - 1)
        v = corners[:, 1] - (wcs.wcs.crpix[1] - 1)
        with_sip = SkyCoord(*wcs.all_pix2world(corners[:, 0], corners[:, 1], 0), unit="deg")
        linear = SkyCoord(*wcs.wcs_pix2world(corners[:, 0], corners[:, 1], 0), unit="deg")
        shift = with_sip.separation(linear).arcsec / 0.2  # pixels moved by the SIP terms
        radius = np.hypot(u, v)
        # The radial cubic gives D (r / R)³, plus the 5% non-radial term.
        predicted = geom.distortion_edge_px * (radius / geom.field_radius) ** 3
        assert np.allclose(shift, predicted, rtol=0.1)
        worst = max(worst, shift.max())
    assert 0.7 * geom.distortion_edge_px < worst < 1.1 * geom.distortion_edge_px
