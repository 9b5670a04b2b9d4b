"""Coadds of calexps stored in zarr: the tasks read the stored chunks themselves (through
the per-process chunk cache). Same pixels as from memory, bounded memory, each chunk
decoded once when the cache holds a row of them."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

import lsstlite.data as lld
from lsstlite.data import _zarr_chunks
from lsstlite.stages.coadd import coadd_exposures
from tests.stages.coadd._synthetic import synthetic_calexp, synthetic_patch


def _stored(tmp: Path, n: int, shape: tuple[int, int], chunks: int) -> list[xr.Dataset]:
    out = []
    for k in range(n):
        ds = synthetic_calexp(shape, seed=k, offset_px=(2.7 * k % 9, -1.9 * k % 7))
        if k == 1:  # a masked patch in one input (so a mask chunk is written)
            m = ds["mask"].values.copy()
            m[40:60, 30:90] |= 1 << lld.mask_planes(ds)["BAD"]
            ds["mask"] = (("y", "x"), m, ds["mask"].attrs)
        lld.write_exposure_zarr(ds, tmp / f"c{k}.zarr", chunks=(chunks, chunks))
        out.append(lld.open_exposure_zarr(tmp / f"c{k}.zarr"))
    return out


@pytest.mark.parametrize("method", ["clipped", "compare_warp"])
@pytest.mark.parametrize("cache_bytes", [0, 2**30])
def test_stored_inputs_give_the_same_coadd_as_in_memory(
    tmp_path: Path, method: str, cache_bytes: int
) -> None:
    calexps = _stored(tmp_path, 4, (300, 260), 128)
    patch = synthetic_patch((310, 280))
    stored = coadd_exposures(
        calexps, patch, method=method, chunks=(100, 120), chunk_cache_bytes=cache_bytes
    )
    # no read task in the graph: the block tasks read the chunks themselves
    assert not any(name.startswith("zarr-") for name in stored["image"].data.dask.layers)
    memory = coadd_exposures(
        [ds.compute() for ds in calexps], patch, method=method, chunks=(100, 120)
    )
    _zarr_chunks._CACHE.clear()
    with dask.config.set(scheduler="threads"):
        got = stored.compute()
    xr.testing.assert_identical(got, memory.compute())
    assert (got["mask"].values & (1 << lld.mask_planes(got)["INEXACT_PSF"])).any()


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = _zarr_chunks.read_stored_chunk

    def counting(path: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(_zarr_chunks, "read_stored_chunk", counting)
    return calls


def test_each_stored_chunk_is_decoded_once_when_the_cache_holds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calexps = _stored(tmp_path, 3, (512, 512), 256)  # 2 × 2 chunks of 256² per plane
    calls = _count_decodes(monkeypatch)
    for budget, config in ((2**30, None), (None, 2**30)):  # the argument, or the config
        with dask.config.set({"lsstlite.chunk-cache-bytes": config}):
            c = coadd_exposures(
                calexps,
                synthetic_patch((512, 512)),
                method="mean",
                weights=[1.0] * 3,
                chunks=(128, 128),
                chunk_cache_bytes=budget,
            )
        calls.clear()
        _zarr_chunks._CACHE.clear()
        c["image"].data.compute(scheduler="threads")
        assert len(calls) == len(set(calls)) == 3 * 3 * 4  # inputs × planes × chunks
        # ...and each left the cache after its last read
        assert _zarr_chunks._CACHE._bytes == 0
    # with no cache (the default) each 128² output chunk (+ halo) decodes what it overlaps
    c = coadd_exposures(
        calexps, synthetic_patch((512, 512)), method="mean", weights=[1.0] * 3, chunks=(128, 128)
    )
    calls.clear()
    c["image"].data.compute(scheduler="threads")
    assert len(calls) > 3 * 3 * 4


def test_the_cache_keeps_within_its_budget() -> None:
    cache = _zarr_chunks._ChunkCache()
    budget = 3 * 400
    for k in range(10):
        a = cache.get(k, lambda: np.zeros(100, np.float32), budget=budget)  # 400 bytes each
        assert a.nbytes == 400
    assert cache._bytes <= budget and list(cache._items) == [7, 8, 9]
    # a hit moves the entry to the end (least recently used goes first)
    cache.get(7, lambda: pytest.fail("7 is cached"), budget=budget)
    cache.get(10, lambda: np.zeros(100, np.float32), budget=budget)
    assert list(cache._items) == [9, 7, 10]
    # a broadcast fill value costs nothing
    cache.get("fill", lambda: np.broadcast_to(np.float32(0), (1000, 1000)), budget=budget)
    assert cache._bytes == budget
    # an entry read as often as its graph said leaves at once
    cache.get("twice", lambda: np.zeros(10, np.float32), uses=2, budget=budget)
    assert "twice" in cache._items
    cache.get("twice", lambda: pytest.fail("cached"), uses=2, budget=budget)
    assert "twice" not in cache._items
    # nothing is remembered of what was not cached (no growth with a budget of 0)
    for k in range(100):
        cache.get(("big", k), lambda: np.zeros(1000, np.float32), uses=3, budget=0)
    assert set(cache._reads) <= set(cache._items)


def _peak(tmp: Path, n: int, shape: tuple[int, int]) -> int:
    calexps = _stored(tmp, n, shape, 256)
    c = coadd_exposures(
        calexps,
        synthetic_patch(shape),
        method="mean",
        weights=[1.0] * n,
        chunks=(256, 256),
        chunk_cache_bytes=4 * 2**20,
    )
    _zarr_chunks._CACHE.clear()
    tracemalloc.start()
    try:
        for block in c["image"].data.to_delayed().ravel():  # one chunk at a time
            block.compute(scheduler="synchronous")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def test_memory_grows_with_inputs_times_chunk_not_with_the_patch(tmp_path: Path) -> None:
    peak_4 = _peak(tmp_path / "a", 4, (768, 768))
    peak_12 = _peak(tmp_path / "b", 12, (768, 768))
    peak_4_big = _peak(tmp_path / "c", 4, (768, 2304))
    # grows with the inputs (4 MB of it is the chunk cache budget, whatever N)
    assert 1.4 < peak_12 / peak_4 < 4.5, (peak_4, peak_12)
    assert peak_4_big < 1.3 * peak_4, (peak_4, peak_4_big)
    # far below the inputs themselves (12 × 768² × 12 bytes = 85 MB)
    assert peak_12 < 0.5 * 12 * 768**2 * 12, peak_12


def test_idle_chunks_leave_the_cache() -> None:
    cache = _zarr_chunks._ChunkCache()
    cache.get("a", lambda: np.zeros(100, np.float32), budget=10_000)
    cache.expire(60.0)
    assert "a" in cache._items  # read just now
    cache.expire(0.0)
    assert not cache._items and cache._bytes == 0 and not cache._touched


def test_the_sweeper_empties_an_idle_cache_and_returns_its_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading
    import time

    # (the sweeper of another cache, e.g. the process's shared one from an earlier test,
    # may also call the patched function: only this cache's sweeper thread is counted)
    released: list[bool] = []

    def release() -> None:
        if threading.current_thread() is sweeper:
            released.append(True)

    monkeypatch.setattr(_zarr_chunks, "CHUNK_CACHE_IDLE_S", 0.2)
    monkeypatch.setattr(_zarr_chunks, "_release_freed_memory", release)
    cache = _zarr_chunks._ChunkCache()
    cache.get("a", lambda: np.zeros(1000, np.float32), budget=10**6)
    sweeper = cache._sweeper
    assert sweeper is not None
    deadline = time.monotonic() + 5.0
    while (cache._items or not released) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cache._items and cache._bytes == 0 and released == [True]
    assert cache._sweeper is None  # and the thread is gone until something is cached
    _zarr_chunks._release_freed_memory()  # the real one runs here without error
