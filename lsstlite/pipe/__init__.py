"""Tasks, configs, YAML pipelines, graph building and execution on Dask."""

from lsstlite.pipe.config import Config, ConfigError
from lsstlite.pipe.pipeline import Pipeline, PipelineError, load_pipeline
from lsstlite.pipe.task import Connection, Input, Output, PrerequisiteInput, Task, TaskResult

__all__ = [
    "Config",
    "ConfigError",
    "Connection",
    "Input",
    "Output",
    "Pipeline",
    "PipelineError",
    "PrerequisiteInput",
    "Task",
    "TaskResult",
    "load_pipeline",
]
