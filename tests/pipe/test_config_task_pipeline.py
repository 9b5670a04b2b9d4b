"""Configs validate and name keys; tasks check their connections; pipelines load from YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from lsstlite.pipe.config import Config, ConfigError, config_diff
from lsstlite.pipe.pipeline import Pipeline, PipelineError, load_pipeline
from lsstlite.pipe.task import (
    Input,
    Output,
    PrerequisiteInput,
    Task,
    TaskDefinitionError,
    TaskResult,
)


class BackgroundConfig(Config):
    mesh_size: int = Field(64, description="mesh cell side [pixel]")


class ToyConfig(Config):
    n_sigma: float = 3.0
    do_flat: bool = True
    background: BackgroundConfig = BackgroundConfig()


class ToyTask(Task):
    ConfigClass = ToyConfig
    dimensions = ("instrument", "exposure", "detector")
    inputs = {
        "raw": Input("raw", ("instrument", "exposure", "detector"), storage_class="Raw"),
        "flat": PrerequisiteInput(
            "flat", ("instrument", "detector", "physical_filter"), calibration=True
        ),
    }
    outputs = {"post_isr": Output("post_isr", ("instrument", "exposure", "detector"))}

    def active_inputs(self):  # type: ignore[no-untyped-def]
        inputs = dict(self.inputs)
        if not self.config.do_flat:
            inputs.pop("flat")
        return inputs

    def run(self, raw, flat=None):  # type: ignore[no-untyped-def]
        return TaskResult(post_isr=raw)


class SummaryTask(Task):
    dimensions = ("instrument", "exposure")
    inputs = {"images": Input("post_isr", ("instrument", "exposure", "detector"), multiple=True)}
    outputs = {"summary": Output("summary", ("instrument", "exposure"), storage_class="Json")}

    def run(self, images):  # type: ignore[no-untyped-def]
        return TaskResult(summary={"n": len(images)})


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^isr\.n_sigma: expected a number, got 'ten'$"):
        ToyConfig.build({"n_sigma": "ten"}, label="isr")
    with pytest.raises(
        ConfigError, match=r"isr\.background\.mesh_size: expected an integer, got 'big'"
    ):
        ToyConfig.build({"background": {"mesh_size": "big"}}, label="isr")
    with pytest.raises(ConfigError, match=r"isr\.nsigma: unknown key"):
        ToyConfig.build({"nsigma": 2}, label="isr")


def test_config_is_frozen_and_round_trips() -> None:
    cfg = ToyConfig.build({}).with_overrides({"background.mesh_size": 32, "n_sigma": 4})
    assert cfg.background.mesh_size == 32 and cfg.n_sigma == 4.0
    with pytest.raises(Exception, match="frozen"):
        cfg.n_sigma = 5.0  # type: ignore[misc]
    assert ToyConfig.from_yaml(cfg.to_yaml()) == cfg
    assert config_diff(cfg.to_dict(), ToyConfig().to_dict()) == ["background.mesh_size", "n_sigma"]


def test_task_connections_must_match_run() -> None:
    with pytest.raises(TaskDefinitionError, match="not in run"):

        class Bad(Task):
            dimensions = ("instrument",)
            inputs = {"a": Input("x", ("instrument",))}
            outputs = {}

            def run(self, b):  # type: ignore[no-untyped-def]
                return TaskResult()

    with pytest.raises(TaskDefinitionError, match="multiple=True"):

        class Bad2(Task):
            dimensions = ("instrument", "exposure")
            inputs = {"a": Input("x", ("instrument", "exposure", "detector"))}
            outputs = {}

            def run(self, a):  # type: ignore[no-untyped-def]
                return TaskResult()


def test_task_config_from_mapping_and_label() -> None:
    task = ToyTask({"do_flat": False})
    assert task.label == "toy" and task.config.do_flat is False
    assert "flat" not in task.active_inputs()
    with pytest.raises(ConfigError, match=r"toy\.n_sigma"):
        ToyTask({"n_sigma": "x"})


PIPELINE = """
description: toy pipeline
tasks:
  isr:
    class: tests.pipe.test_config_task_pipeline.ToyTask
    config: {n_sigma: 5}
  summary: tests.pipe.test_config_task_pipeline.SummaryTask
subsets:
  step1: {subset: [isr], description: detector level}
  step2: [summary]
"""


def test_pipeline_yaml(tmp_path: Path) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text(PIPELINE)
    pipe = load_pipeline(path)
    assert list(pipe.tasks) == ["isr", "summary"]
    tasks = pipe.make_tasks()
    assert [t.label for t in tasks] == ["isr", "summary"]
    assert tasks[0].config.n_sigma == 5.0
    step1 = load_pipeline(f"{path}#step1")
    assert list(step1.tasks) == ["isr"]
    assert list(load_pipeline(f"{path}#summary").tasks) == ["summary"]
    text = pipe.describe(config_label="isr")
    assert "n_sigma: 5.0" in text and "post_isr" in text
    dot = pipe.to_dot()
    assert '"task:isr" -> "ds:post_isr"' in dot and '"ds:post_isr" -> "task:summary"' in dot


def test_pipeline_imports_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(PIPELINE)
    (tmp_path / "child.yaml").write_text(
        "imports:\n  - location: base.yaml\n    exclude: [summary]\n"
        "tasks:\n  isr:\n    class: tests.pipe.test_config_task_pipeline.ToyTask\n    config: {do_flat: false}\n"
    )
    pipe = load_pipeline(tmp_path / "child.yaml")
    assert list(pipe.tasks) == ["isr"]
    cfg = pipe.make_tasks()[0].config
    assert cfg.n_sigma == 5.0 and cfg.do_flat is False, "import's config must be kept and extended"
    # excluding a label the import does not have is an error, not silently nothing
    (tmp_path / "typo.yaml").write_text(
        "imports:\n  - location: base.yaml\n    exclude: [sumary]\n"
    )
    with pytest.raises(
        PipelineError, match=r"excluding \['sumary'\].*labels: \['isr', 'summary'\]"
    ):
        load_pipeline(tmp_path / "typo.yaml")


@pytest.mark.parametrize(
    "text, match",
    [
        (
            "tasks:\n  isr:\n    class: tests.pipe.test_config_task_pipeline.ToyTask\n    config: {n_sigma: ten}\n",
            r"isr\.n_sigma: expected a number",
        ),
        ("tasks:\n  isr: no.such.module.Task\n", "cannot import task class"),
        (
            "tasks:\n  isr: tests.pipe.test_config_task_pipeline.ToyTask\nsubsets:\n  s: [nope]\n",
            "unknown label",
        ),
        ("taks: {}\n", "unknown top-level key"),
    ],
)
def test_bad_pipelines(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError, match=match):
        load_pipeline(path)


def test_unknown_subset_names_choices(tmp_path: Path) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text(PIPELINE)
    with pytest.raises(PipelineError, match="subsets: \\['step1', 'step2'\\]"):
        load_pipeline(f"{path}#step9")


def test_pipeline_from_tasks() -> None:
    pipe = Pipeline.from_tasks([SummaryTask, ("isr", ToyTask, {"do_flat": False})])
    assert [t.label for t in pipe.make_tasks()] == ["isr", "summary"]
