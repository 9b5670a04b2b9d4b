"""Visit quality: per-detector summaries, selection for coaddition, focal-plane plots."""

from lsstlite.stages.quality.ops import (
    SUMMARY_COLUMNS,
    SelectVisitsConfig,
    make_visit_summary,
    plot_visit_quality,
    select_good_detectors,
    summarize_detector,
)
from lsstlite.stages.quality.task import (
    VisitSummaryConfig,
    VisitSummaryTask,
    select_visits,
    select_visits_cli,
)

__all__ = [
    "SUMMARY_COLUMNS",
    "SelectVisitsConfig",
    "VisitSummaryConfig",
    "VisitSummaryTask",
    "make_visit_summary",
    "plot_visit_quality",
    "select_good_detectors",
    "select_visits",
    "select_visits_cli",
    "summarize_detector",
]
