from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pipe.toy_tasks import make_toy_repo


@pytest.fixture
def toy_repo(tmp_path: Path) -> str:
    root = str(tmp_path / "repo")
    make_toy_repo(root)
    return root


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two single-threaded worker processes on loopback, shared by a test module."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c
