"""``VisitSummaryTask`` (one row per detector) and ``select_visits`` (a TAGGED collection)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from lsstlite.pipe import Config, Input, Output, Task, TaskResult
from lsstlite.stages.quality.ops import (
    SelectVisitsConfig,
    make_visit_summary,
    plot_visit_quality,
    select_good_detectors,
)

__all__ = ["VisitSummaryConfig", "VisitSummaryTask", "select_visits", "select_visits_cli"]

log = logging.getLogger(__name__)

DETECTOR = ("instrument", "exposure", "detector")
VISIT = ("instrument", "visit")


class VisitSummaryConfig(Config):
    """No options: the summary reads what characterisation and calibration recorded."""


class VisitSummaryTask(Task):
    """Gather the calibrated detectors of a visit into a ``visit_summary`` table."""

    ConfigClass = VisitSummaryConfig
    dimensions = VISIT
    inputs = {
        "calexps": Input("calexp", DETECTOR, multiple=True, doc="calibrated exposures"),
        "srcs": Input("src", DETECTOR, storage_class="Table", multiple=True, doc="source tables"),
    }
    outputs = {
        "visit_summary": Output(
            "visit_summary", VISIT, storage_class="Table", doc="one row per detector"
        )
    }

    def run(self, calexps: list[xr.Dataset], srcs: list[pd.DataFrame]) -> TaskResult:
        """Summarise each detector (:func:`lsstlite.stages.quality.summarize_detector`)."""
        # The executor hands both lists in data-ID order, so they pair up by position.
        table = make_visit_summary(calexps, srcs if len(srcs) == len(calexps) else None)
        return TaskResult(visit_summary=table)


def select_visits(
    butler: Any,
    summaries_collection: str | Sequence[str],
    tagged_collection: str,
    config: SelectVisitsConfig | Mapping[str, Any] | None = None,
    *,
    plot: str | Path | None = None,
) -> pd.DataFrame:
    """Select good detectors and visits and tag their datasets for coaddition.

    Parameters
    ----------
    butler
        A :class:`lsstlite.repo.Butler` on the repository.
    summaries_collection
        Collection(s) holding ``visit_summary`` (and the ``calexp``/``src`` to tag).
    tagged_collection
        TAGGED collection to create or extend with the datasets of good detectors of good
        visits (``config.dataset_types``).
    config
        Cuts (:class:`SelectVisitsConfig`).
    plot
        Optional PNG path for :func:`lsstlite.stages.quality.plot_visit_quality`.

    Returns
    -------
    pandas.DataFrame
        The concatenated summaries with ``good_detector``, ``good_visit`` and ``reason``.

    Raises
    ------
    LookupError
        If ``summaries_collection`` holds no ``visit_summary``.
    """
    cfg = (
        config
        if isinstance(config, SelectVisitsConfig)
        else SelectVisitsConfig.build(config or {}, label="select_visits")
    )
    refs = butler.query_datasets("visit_summary", collections=summaries_collection)
    if not refs:
        raise LookupError(f"no visit_summary in collections {summaries_collection!r}")
    summary = pd.concat([butler.get(ref) for ref in refs], ignore_index=True)
    instruments = {int(r.data_id["exposure"]): r.data_id["instrument"] for r in refs}
    table = select_good_detectors(summary, cfg)
    tagged = []
    seen: set[Any] = set()
    registered = {dt.name for dt in butler.query_dataset_types("*")}
    row: Any
    for row in table[table["good_detector"] & table["good_visit"]].itertuples():
        data_id = {
            "instrument": instruments[int(row.visit)],
            "exposure": int(row.visit),
            "detector": int(row.detector),
        }
        for dataset_type in cfg.dataset_types:
            if dataset_type not in registered:
                continue
            dims = butler.get_dataset_type(dataset_type).dimensions
            did = {k: v for k, v in data_id.items() if k in dims or k == "instrument"}
            ref = butler.find_dataset(dataset_type, did, collections=summaries_collection)
            if ref is None and dataset_type == "calexp":
                raise LookupError(f"{dataset_type} {data_id} not found in {summaries_collection!r}")
            if ref is not None and ref.id not in seen:
                seen.add(ref.id)
                tagged.append(ref)
    butler.associate(tagged_collection, tagged)
    if plot is not None:
        plot_visit_quality(summary, plot)
    n_good = int((table["good_detector"] & table["good_visit"]).sum())
    log.info(
        "select_visits: %d of %d detectors tagged into %r (%d datasets)",
        n_good,
        len(table),
        tagged_collection,
        len(tagged),
    )
    return table


def select_visits_cli(
    repo: str,
    summaries_collection: str | Sequence[str],
    tagged_collection: str,
    *,
    plot: str | None = None,
    **cuts: Any,
) -> str:
    """Command-line front end of :func:`select_visits`: cuts as keywords
    (``max_fwhm_arcsec=1.0``); returns a printable report."""
    from lsstlite.repo import Butler

    table = select_visits(Butler(repo), summaries_collection, tagged_collection, cuts, plot=plot)
    good = table["good_detector"] & table["good_visit"]
    lines = [f"{int(good.sum())}/{len(table)} detectors selected into {tagged_collection!r}"]
    for row in table[~good].itertuples():
        lines.append(f"  visit {row.visit} detector {row.detector}: {row.reason}")
    return "\n".join(lines)
