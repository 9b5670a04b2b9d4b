"""Instrument signature removal: raw ADU frames → ``post_isr`` exposures in electrons.

Public: the ops in :mod:`lsstlite.stages.isr.ops` and :class:`IsrTask` / :class:`IsrConfig`.
"""

from lsstlite.stages.isr.task import IsrConfig, IsrTask

__all__ = ["IsrConfig", "IsrTask"]
