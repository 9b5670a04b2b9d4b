"""Session fixtures shared by the stage tests: master calibrations built once."""

from __future__ import annotations

import pytest

CALIB_TYPES = ["bias", "dark", "flat", "defects", "fringe"]
CALIB_BUILD = "SimCam/calib/build"
CALIB_COLLECTION = "SimCam/calib"


@pytest.fixture(scope="session")
def calib_repo(sim_repo: str) -> str:
    """``sim_repo`` with master bias, dark, flats, defects and the fringe frame built by
    ``calibs.yaml`` (output ``SimCam/calib/build``) and certified (unbounded validity)
    into CALIBRATION collection ``SimCam/calib``."""
    from distributed import Client

    from lsstlite.pipe.run import run_pipeline
    from lsstlite.repo import Butler, certify

    # An in-process client, closed before the tests run: a client left open would become
    # every later test's default scheduler.
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        report = run_pipeline(
            sim_repo, "calibs.yaml", inputs=["SimCam/raw/all"], output=CALIB_BUILD, client=c
        )
    assert report.ok, report.table()
    certify(Butler(sim_repo), report.output_run, CALIB_COLLECTION, dataset_types=CALIB_TYPES)
    return sim_repo
