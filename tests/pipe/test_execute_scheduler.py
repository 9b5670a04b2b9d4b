"""A quantum's threaded scheduler holds while any quantum of the process runs."""

from __future__ import annotations

import threading

import dask

from lsstlite.pipe.execute import _threaded_scheduler


def test_overlapping_quanta_keep_the_threaded_scheduler_until_the_last_ends() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def first() -> None:
        with _threaded_scheduler():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with _threaded_scheduler():
            second_in.set()
            first_out.wait(5)
            # the first quantum has finished: this one still computes with threads
            seen["after_first"] = dask.config.get("scheduler", None)

    with dask.config.set(scheduler="sync"):
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert seen["after_first"] == "threads"
        assert dask.config.get("scheduler") == "sync"  # restored by the last one out
    before = dask.config.get("scheduler", None)
    with _threaded_scheduler():
        assert dask.config.get("scheduler") == "threads"
    assert dask.config.get("scheduler", None) == before
