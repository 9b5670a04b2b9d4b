"""World coordinate systems as plain dicts of FITS header cards.

An exposure keeps its WCS as the FITS cards that define it (``ds.attrs["wcs"]``), not as
a pickled object: cards are JSON-serialisable, exact, readable by ds9 and astropy, and
cover every projection wcslib knows (TAN, TAN-SIP, TPV, ZPX, ...). The cards refer to
the *parent* pixel frame: 0-based pixel ``(x, y)`` of the exposure's ``x``/``y``
coordinates, so a cut-out keeps the WCS unchanged.

Note: astropy's ``WCS`` object is not thread-safe; build one per thread/block with
:func:`wcs_from_cards` (it is cheap) instead of sharing one across Dask tasks.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

__all__ = ["WcsCards", "make_tan_wcs", "wcs_from_cards", "wcs_to_cards"]

#: A WCS as FITS header cards: keyword → value (str, int, float or bool).
WcsCards = dict[str, Any]

# Keywords that describe the image rather than the WCS; dropped when extracting cards.
_NOT_WCS = {
    "SIMPLE",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "EXTEND",
    "PCOUNT",
    "GCOUNT",
    "XTENSION",
    "EXTNAME",
    "BZERO",
    "BSCALE",
    "COMMENT",
    "HISTORY",
    "",
}


def _clean(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def wcs_to_cards(wcs: WCS | fits.Header | Mapping[str, Any]) -> WcsCards:
    """FITS cards describing ``wcs``.

    Parameters
    ----------
    wcs
        An astropy ``WCS`` (written with SIP when it has SIP coefficients), or a header /
        mapping whose WCS keywords are kept verbatim (the lossless route for TPV, ZPX and
        other distortions that astropy can read but not write back identically).
    """
    if isinstance(wcs, WCS):
        # relax=True writes SIP (A_*, B_*, the -SIP suffix) when the WCS has it.
        items = wcs.to_header(relax=True).items()
    elif isinstance(wcs, fits.Header):
        items = wcs.items()
    else:
        items = wcs.items()
    cards: WcsCards = {}
    for key, value in items:
        if key in _NOT_WCS or key.startswith("NAXIS"):
            continue
        cards[str(key)] = _clean(value)
    return cards


def wcs_from_cards(cards: Mapping[str, Any]) -> WCS:
    """Build an astropy ``WCS`` from FITS cards (see :func:`wcs_to_cards`)."""
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    with warnings.catch_warnings():
        # astropy "fixes" harmless things (e.g. DATE-OBS formats) and says so.
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, relax=True)


_WCS_CACHE = threading.local()
_WCS_CACHE_SIZE = 64


def cached_wcs(cards: Mapping[str, Any]) -> WCS:
    """:func:`wcs_from_cards`, memoised per thread on the cards' content.

    For hot loops that evaluate the same few WCSs many times (PSF models of coadds
    evaluated at every object): building an astropy WCS from cards costs ~5 ms. The
    returned object is shared: treat it as read-only. Per-thread, because wcslib
    structures are not safe to share between threads.
    """
    key = tuple((k, repr(v)) for k, v in cards.items())
    cache: OrderedDict[tuple[tuple[str, str], ...], WCS] | None = getattr(
        _WCS_CACHE, "entries", None
    )
    if cache is None:
        cache = _WCS_CACHE.entries = OrderedDict()
    wcs = cache.get(key)
    if wcs is None:
        wcs = cache[key] = wcs_from_cards(cards)
        if len(cache) > _WCS_CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return wcs


def make_tan_wcs(
    ra_deg: float,
    dec_deg: float,
    crpix: tuple[float, float],
    pixel_scale_arcsec: float,
    *,
    rotation_deg: float = 0.0,
    flip_x: bool = True,
) -> WCS:
    """A simple TAN WCS: ``crpix`` is 0-based ``(x, y)``; north up, east left by default."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra_deg, dec_deg]
    wcs.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    scale = pixel_scale_arcsec / 3600.0
    theta = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    parity = np.diag([-scale if flip_x else scale, scale])
    wcs.wcs.cd = rot @ parity
    wcs.wcs.cunit = ["deg", "deg"]
    return wcs
