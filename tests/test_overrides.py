"""Dotted overrides into sections the config file leaves `null`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trainer.config import load_config

NULL_SECTIONS = """\
trainer: {epochs: 2, device: cpu, early_stopping: null}
scheduler: null
"""


def test_an_override_fills_a_section_that_is_null_in_the_file(
    tiny_yaml: str, write_config: Callable[..., Path]
) -> None:
    without_trainer = tiny_yaml.replace("trainer: {epochs: 2, device: cpu, log_every: 2}\n", "")
    path = write_config(without_trainer + NULL_SECTIONS)
    assert load_config(path).scheduler is None  # the file alone: no scheduler

    config = load_config(
        path,
        [
            "scheduler.name=StepLR",
            "scheduler.step_size=1",
            "trainer.early_stopping.patience=2",
        ],
    )
    assert (config.scheduler.name, config.scheduler.kwargs) == ("StepLR", {"step_size": 1})
    assert config.trainer.early_stopping.patience == 2


def test_the_cli_takes_an_override_into_a_null_section(
    tiny_yaml: str, write_config: Callable[..., Path], run_cli: Callable
) -> None:
    path = write_config(tiny_yaml + "scheduler: null\n")
    result = run_cli("config", path, "scheduler.name=StepLR", "scheduler.step_size=1")
    assert result.exit_code == 0, result.output
    assert "name: StepLR" in result.stdout and "step_size: 1" in result.stdout
