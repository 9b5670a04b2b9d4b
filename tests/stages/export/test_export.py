"""Colour pictures and table exports."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from astropy.table import Table
from PIL import Image

from lsstlite.stages.export import make_rgb, write_rgb_png, write_table


def _source(shape: tuple[int, int], x: float, y: float, flux: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return flux * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 4.0) / (8 * np.pi)


def test_rgb_size_and_colour_preserving(tmp_path: Path) -> None:
    shape = (64, 96)
    ratios = {"i": 3.0, "r": 2.0, "g": 1.0}
    images = {b: _source(shape, 40.0, 20.0, 300.0 * f) for b, f in ratios.items()}
    rgb = make_rgb(images, ("i", "r", "g"), stretch=5.0, q=8.0)
    assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8
    # rows run from the top: parent y = 20 is row 64 - 1 - 20
    pix = rgb[63 - 20, 40].astype(float)
    np.testing.assert_allclose(pix / pix[0], [1.0, 2 / 3, 1 / 3], atol=0.02)
    faint = rgb[63 - 20, 40 + 5].astype(float)
    assert faint[0] > 20
    np.testing.assert_allclose(faint / faint[0], [1.0, 2 / 3, 1 / 3], atol=0.05)
    out = write_rgb_png(rgb, tmp_path / "p.png", comment="test")
    assert matplotlib.image.imread(out).shape[:2] == shape
    with Image.open(out) as png:
        np.testing.assert_array_equal(np.asarray(png), rgb)  # lossless, no alpha
        assert png.text == {"Software": "lsstlite", "Comment": "test"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]  # no partial file left
    # a write that fails half-way leaves the previous picture intact and no partial file
    before = out.read_bytes()

    def broken_save(self: Image.Image, fp: Path, *args: object, **kwargs: object) -> None:
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image.Image, "save", broken_save)
        with pytest.raises(OSError, match="disk full"):
            write_rgb_png(rgb[::-1], out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_rgb_two_bands_synthesises_green(caplog: pytest.LogCaptureFixture) -> None:
    shape = (32, 32)
    images = {"i": _source(shape, 16, 16, 900.0), "r": _source(shape, 16, 16, 300.0)}
    with caplog.at_level(logging.WARNING):
        rgb = make_rgb(images, ("i", "r", "g"), stretch=5.0)
    assert "synthesised" in caplog.text
    pix = rgb[15, 16].astype(float)
    np.testing.assert_allclose(pix / pix[0], [1.0, 2 / 3, 1 / 3], atol=0.02)
    with pytest.raises(ValueError, match="at least two"):
        make_rgb({"i": images["i"]})


def test_write_table_parquet_and_fits(tmp_path: Path) -> None:
    table = pd.DataFrame({"id": [1, 2], "ra": [10.0, 10.1], "i_psf_flux": [1.0, 2.0],
                          "flag_edge": [True, False]})  # fmt: skip
    p = write_table(table, tmp_path / "o.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(p), table)
    f = write_table(table, tmp_path / "o.fits")
    t = Table.read(f)
    assert list(t["id"]) == [1, 2] and str(t["i_psf_flux"].unit) == "nJy"
    with pytest.raises(ValueError, match="format"):
        write_table(table, tmp_path / "o.csv")


def test_rgb_strips_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_rgb maps strips of rows (bounded memory): the same bytes as one pass, also
    with uncovered pixels (NaN) and a synthesised green."""
    import lsstlite.stages.export.ops as export_ops

    rng = np.random.default_rng(8)
    images = {b: rng.normal(0.0, 1.0, (37, 23)) + 50.0 * (b == "i") for b in ("i", "r")}
    images["r"][3:9, 4:7] = np.nan
    monkeypatch.setattr(export_ops, "_STRIP_ROWS", 10**6)
    whole = make_rgb(images, ("i", "r", "g"), stretch=5.0)
    monkeypatch.setattr(export_ops, "_STRIP_ROWS", 5)
    np.testing.assert_array_equal(make_rgb(images, ("i", "r", "g"), stretch=5.0), whole)
    np.testing.assert_array_equal(make_rgb(images, ("i", "r", "g")), make_rgb(images, ("i", "r")))
    assert np.isnan(images["r"][3:9, 4:7]).all()  # the caller's arrays are left alone


def test_rgb_fills_cores_no_visit_could_use() -> None:
    """A coadd's pixels that inputs covered but none could use (NO_DATA + INEXACT_PSF: a
    star saturated in every visit) are filled in from around them, in the star's colour;
    pixels no input covered stay black, as does a hole with no data around it."""
    from lsstlite.data.exposure import make_exposure
    from lsstlite.data.masks import DEFAULT_MASK_PLANES

    shape = (48, 64)
    no_data = 1 << DEFAULT_MASK_PLANES["NO_DATA"]
    inexact = 1 << DEFAULT_MASK_PLANES["INEXACT_PSF"]
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    core = (xx - 30) ** 2 + (yy - 24) ** 2 <= 6  # 21 pixels
    wider = (xx - 30) ** 2 + (yy - 24) ** 2 <= 13  # in i, saturated further out
    uncovered = xx >= 56
    lonely = (yy == 2) & (xx >= 58)  # a "hole" inside the uncovered area
    coadds = {}
    for band, scale in (("i", 3.0), ("r", 2.0), ("g", 1.0)):
        image = _source(shape, 30.0, 24.0, 4.0e4 * scale)
        mask = np.zeros(shape, np.int32)
        mask[wider if band == "i" else core] = no_data | inexact
        mask[uncovered] = no_data
        mask[lonely] = no_data | inexact
        image[mask != 0] = np.nan
        coadds[band] = make_exposure(image.astype(np.float32), mask=mask)
    rgb = make_rgb(coadds, ("i", "r", "g"), stretch=5.0)
    rows = shape[0] - 1 - yy  # the picture's rows run from the top
    centre = rgb[rows[24, 30], 30].astype(float)
    assert centre[0] == 255  # as bright as the pixels around the core, not black
    np.testing.assert_allclose(centre / centre[0], [1.0, 2 / 3, 1 / 3], atol=0.02)
    # each band filled over the same pixels: the core keeps the star's colour
    filled = rgb[rows[wider], xx[wider]].astype(float)
    assert (filled.max(axis=1) == 255).all()
    np.testing.assert_allclose(filled / filled[:, :1], [[1.0, 2 / 3, 1 / 3]] * 45, atol=0.02)
    assert (rgb[rows[uncovered], xx[uncovered]] == 0).all()
    # without the mask (plain arrays, NaN): nothing to tell a core from a gap, left black
    plain = make_rgb(
        {b: c["image"].values for b, c in coadds.items()}, ("i", "r", "g"), stretch=5.0
    )
    assert (plain[rows[wider], xx[wider]] == 0).all()
    np.testing.assert_array_equal(plain[~wider[::-1]], rgb[~wider[::-1]])
