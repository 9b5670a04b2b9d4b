"""Functions run in spawned processes by the safety tests (must be importable)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


def put_many(
    root: str, run: str, start: int, n: int, n_threads: int, compact_threshold: int
) -> int:
    """Put ``n`` psf datasets (detectors start..start+n-1) from ``n_threads`` threads."""
    from lsstlite.repo import Butler

    butler = Butler(root, run=run)
    butler.registry.compact_threshold = compact_threshold

    def one(i: int) -> int:
        det = start + i
        butler.put(
            {"detector": det, "run": run}, "psf", instrument="SimCam", exposure=1, detector=det
        )
        if i % 7 == 0:  # readers refresh (and compact) while others write
            butler.query_datasets("psf", "detector >= 0", collections=run)
        return 1

    with ThreadPoolExecutor(n_threads) as pool:
        return sum(pool.map(one, range(n)))
