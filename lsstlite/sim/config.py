"""Survey presets: every number of the simulation is a field of :class:`SurveyConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PRESETS", "SurveyConfig"]


def _sky(**kw: float) -> dict[str, float]:
    return dict(kw)


@dataclass(frozen=True)
class SurveyConfig:
    """A complete, frozen description of one simulated survey (seed excluded).

    Magnitudes are AB; ``*_arcsec`` on the sky; ``*_px`` in detector pixels.
    """

    name: str
    #: SimCam geometry (``lsstlite.instruments.simcam.GEOMETRIES``).
    geometry: str
    bands: tuple[str, ...]
    n_visits_per_band: int
    exptime: float = 30.0
    #: Field centre (deg); a low-galactic-latitude field so there are many stars.
    ra_deg: float = 150.0
    dec_deg: float = 2.0
    first_mjd: float = 61000.0
    # -- calibration raws
    n_bias: int = 5
    n_dark: int = 3
    dark_exptime: float = 300.0
    n_flat: int = 5
    flat_exptime: float = 10.0
    flat_level_e: float = 20_000.0
    # -- sources
    star_density_deg2: float = 45_000.0  # stars with star_mag_range[0] <= r < star_mag_range[1]
    star_mag_range: tuple[float, float] = (14.0, 24.5)
    star_count_slope: float = 0.15  # dex / mag
    galaxy_dndm_at_21: float = 3_600.0  # galaxies / deg² / mag at r = 21
    galaxy_mag_range: tuple[float, float] = (17.0, 25.0)
    galaxy_count_slope: float = 0.35  # dex / mag
    galaxy_hlr_arcsec: tuple[float, float] = (0.2, 2.0)
    galaxy_fraction_dev: float = 0.3  # fraction of n = 4 (the rest n = 1)
    n_star_pairs_deg2: float = 1_500.0
    n_star_galaxy_pairs_deg2: float = 1_500.0
    pair_separation_fwhm: tuple[float, float] = (1.5, 4.0)
    # -- observing conditions
    dither_arcsec: float = 60.0
    max_rotation_deg: float = 0.5
    seeing_fwhm_arcsec: tuple[float, float] = (0.6, 1.0)
    moffat_beta: tuple[float, float] = (2.8, 3.3)
    airmass_range: tuple[float, float] = (1.0, 1.5)
    zero_point_jitter_mag: float = 0.02
    #: Zero points at airmass 0: AB mag of 1 e⁻ per second (LSST-like throughputs).
    zero_point_1s: dict[str, float] = field(
        default_factory=lambda: _sky(g=28.51, r=28.36, i=28.17, z=27.78)
    )
    extinction: dict[str, float] = field(
        default_factory=lambda: _sky(g=0.18, r=0.12, i=0.09, z=0.06)
    )
    #: Dark-sky brightness at zenith (mag / arcsec²).
    sky_mag: dict[str, float] = field(default_factory=lambda: _sky(g=22.3, r=21.2, i=20.5, z=19.6))
    moon_brightening_mag: tuple[float, float] = (0.0, 0.4)
    sky_gradient: float = 0.03  # max fractional change across the focal-plane radius
    fringe_fraction: tuple[float, float] = (0.01, 0.04)  # fringe amplitude / sky, reddest band
    # -- artefacts
    cr_rate_cm2_min: float = 3.0
    cr_readout_s: float = 2.0
    trail_probability: float = 0.3
    trail_surface_brightness_sky: tuple[float, float] = (2.0, 8.0)
    # -- header pointing errors
    pointing_error_arcsec: tuple[float, float] = (1.0, 2.0)
    rotation_error_deg: float = 0.01
    # -- reference catalog
    refcat_mag_limit: float = 21.0

    @property
    def fringe_band(self) -> str:
        """The reddest band: the one with fringes."""
        order = "ugrizy"
        return max(self.bands, key=order.index)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return dataclasses.asdict(self)


PRESETS: dict[str, SurveyConfig] = {
    # Tests: tiny detectors (0.0016 deg²), so the star density is that of a field ~10° from
    # the Galactic plane (≥ 100 stars with S/N > 20 per detector), the cosmic-ray rate is
    # boosted to put several on each science image and the pair densities are boosted so
    # each detector has a few blends.
    "small": SurveyConfig(
        name="small",
        star_density_deg2=130_000.0,
        geometry="small",
        bands=("r", "i"),
        n_visits_per_band=3,
        n_bias=3,
        n_dark=2,
        n_flat=3,
        dither_arcsec=30.0,
        cr_rate_cm2_min=20.0,
        n_star_pairs_deg2=4_000.0,
        n_star_galaxy_pairs_deg2=4_000.0,
    ),
    "ci": SurveyConfig(
        name="ci",
        geometry="ci",
        bands=("r", "i"),
        n_visits_per_band=5,
        dither_arcsec=120.0,
        galaxy_mag_range=(17.0, 24.0),  # keeps generation under ~90 s on 2 cores
    ),
    "full": SurveyConfig(
        name="full",
        geometry="full",
        bands=("g", "r", "i"),
        n_visits_per_band=6,
        dither_arcsec=200.0,
    ),
}
