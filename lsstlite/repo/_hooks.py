"""Test hooks. Not for production use.

``before_commit(dataset_type, data_id, run)`` is called after a dataset's
payload is written and before its metadata and registry entry are; tests set
it to sleep so a process can be killed mid-put.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

before_commit: Callable[[str, Mapping[str, Any], str], None] | None = None
