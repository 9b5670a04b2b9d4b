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
    from lsstlite.pipe.clusters import cluster_client

    with cluster_client(n_workers=2) as c:
        yield c
