"""Session fixtures shared by the stage tests: master calibrations built once."""

from __future__ import annotations

from typing import Any

import pytest

CALIB_TYPES = ["bias", "dark", "flat", "defects", "fringe"]
CALIB_BUILD = "SimCam/calib/build"
CALIB_COLLECTION = "SimCam/calib"


@pytest.fixture(scope="session")
def calib_client() -> Any:
    """One in-process Dask client for the calibration runs (cheap to start)."""
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        yield c


def _register_types_keeping_calibrations(butler: Any, graph: Any) -> None:
    """``lsstlite.pipe.run._register_types`` re-registers outputs with
    ``is_calibration=False``, which clashes with the standard calibration types (bias,
    dark, flat, fringe, defects). Until the pipe layer keeps the registered definition,
    register only the types that are not registered yet. (Reported to the lead.)"""
    from lsstlite.pipe.graph import canonical_dims
    from lsstlite.repo._dataset_types import STANDARD_DATASET_TYPES, DatasetType

    for label, task in graph.tasks.items():
        for conn in task.active_outputs().values():
            std = STANDARD_DATASET_TYPES.get(conn.dataset_type)
            butler.register_dataset_type(
                std
                or DatasetType(conn.dataset_type, canonical_dims(conn.dimensions),
                               conn.storage_class, doc=conn.doc)
            )
        butler.register_dataset_type(
            DatasetType(f"{label}_log", canonical_dims(task.dimensions), "Json")
        )
        butler.register_dataset_type(DatasetType(f"{label}_config", (), "Json"))
    butler.register_dataset_type(DatasetType("packages", (), "Json"))


@pytest.fixture(scope="session")
def pipe_calib_types() -> Any:
    """Patch the pipe layer's dataset-type registration (see above) for the session."""
    import lsstlite.pipe.run as run_mod

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_mod, "_register_types", _register_types_keeping_calibrations)
        yield


@pytest.fixture(scope="session")
def calib_repo(sim_repo: str, calib_client: Any, pipe_calib_types: Any) -> str:
    """``sim_repo`` with master bias, dark, flats, defects and the fringe frame built by
    ``calibs.yaml`` (output ``SimCam/calib/build``) and certified (unbounded validity)
    into CALIBRATION collection ``SimCam/calib``."""
    from lsstlite.pipe.run import run_pipeline
    from lsstlite.repo import Butler, certify

    report = run_pipeline(sim_repo, "calibs.yaml", inputs=["SimCam/raw/all"],
                          output=CALIB_BUILD, client=calib_client)
    assert report.ok, report.table()
    certify(Butler(sim_repo), report.output_run, CALIB_COLLECTION, dataset_types=CALIB_TYPES)
    return sim_repo
