"""The simulated survey: SimCam raws, calibration raws, a reference catalog and the truth.

It plays the role ``ci_hsc`` plays for the LSST pipelines: a complete small survey in raw
form plus everything that went into it, so that every later stage is tested against known
answers. See ``docs/design/simulation.md`` for the physics, the decisions and the column
reference of every truth table.

>>> import lsstlite.sim as sim
>>> summary = sim.simulate_survey("/tmp/survey", preset="small", seed=1)  # doctest: +SKIP
>>> image = sim.true_image(summary, exposure=101, detector=0)  # doctest: +SKIP
"""

from lsstlite.sim.config import PRESETS, SurveyConfig
from lsstlite.sim.survey import SurveySummary, simulate_survey, true_image, true_psf, true_wcs

__all__ = [
    "PRESETS",
    "SurveyConfig",
    "SurveySummary",
    "simulate_survey",
    "true_image",
    "true_psf",
    "true_wcs",
]
