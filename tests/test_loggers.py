"""TensorBoard: event files read back with TensorBoard's own reader hold metrics.jsonl's values."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import Result

from trainer.config import Config, validate_config
from trainer.runs.loggers import check_loggers, open_loggers, scalars
from trainer.runs.metrics_file import is_epoch_record, mark_epoch, read_metrics

GROUPS = {
    "groups": [
        {
            "name": "default",
            "rule": None,
            "lr": 0.1,
            "weight_decay": 0.0,
            "options": {"momentum": 0.9},
            "params": ["0.weight", "0.bias"],
            "numel": 36,
        }
    ],
    "frozen": [],
    "unmatched_rules": [],
}


def config(**logging: Any) -> Config:
    sections = {"model": {"name": "small_cnn"}, "data": {"name": "shapes"}}
    return validate_config({"name": "t", **sections, "logging": logging})


def read_events(directory: Path) -> EventAccumulator:
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def steps_by_tag(events: EventAccumulator) -> dict[str, dict[int, float]]:
    """tag -> step -> value; a step logged twice under one tag fails the test."""
    found: dict[str, dict[int, float]] = {}
    for tag in events.Tags()["scalars"]:
        points = events.Scalars(tag)
        steps = [p.step for p in points]
        assert len(steps) == len(set(steps)), f"{tag}: repeated steps {steps}"
        found[tag] = {p.step: p.value for p in points}
    return found


def assert_events_match(records: list[dict[str, Any]], events: EventAccumulator) -> None:
    """Every number of every record is in the events, at its step, as a float32."""
    logged = steps_by_tag(events)
    compared = 0
    for record in records:
        for tag, value in scalars(record):
            assert logged[tag][record["step"]] == np.float32(value), (tag, record["step"])
            compared += 1
    assert compared == sum(len(points) for points in logged.values())  # nothing extra either


def step_record(step: int, loss: float) -> dict[str, Any]:
    return {"epoch": 1 + (step - 1) // 4, "step": step, "train/loss": loss, "lr/default": 0.1}


def epoch_record(epoch: int, loss: float) -> dict[str, Any]:
    return mark_epoch(
        {
            "epoch": epoch,
            "step": 4 * epoch,
            "train/loss": loss,
            "val/loss": loss + 0.5,
            "val/acc": 0.25 * epoch,
            "lr/default": 0.1,
            "train/samples_per_s": 1000.0 + epoch,
        }
    )


def test_records_come_back_from_tensorboards_reader(tmp_path: Path) -> None:
    records = [step_record(2, 1.5), step_record(4, 1.25), epoch_record(1, 1.375)]
    loggers = open_loggers(config(tensorboard=True), tmp_path, enabled=True, start_step=0)
    loggers.describe("name: t\nmodel:\n  name: small_cnn\n", GROUPS)
    for record in records:
        loggers.write(record)
    loggers.close()
    events = read_events(tmp_path / "tb")
    assert_events_match(records, events)
    # The epoch's mean loss and the last window's loss share step 4 under different tags.
    logged = steps_by_tag(events)
    assert logged["train/loss"][4] == np.float32(1.25)
    assert logged["epoch/train/loss"][4] == np.float32(1.375)
    texts = {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in
             events.Tags()["tensors"]}  # fmt: skip
    assert "    model:\n      name: small_cnn" in texts["config/text_summary"]
    assert "| default | - | 2 | 36 | 0.1 | 0 | momentum=0.9 |" in texts["param_groups/text_summary"]


def test_a_resumed_run_replaces_what_was_logged_after_its_checkpoint(tmp_path: Path) -> None:
    first = open_loggers(config(tensorboard=True), tmp_path, enabled=True, start_step=0)
    for record in [step_record(2, 1.5), step_record(4, 1.25), epoch_record(1, 1.375)]:
        first.write(record)
    first.write(step_record(6, 9.0))  # logged, then killed before a checkpoint at step 6
    first.close()
    resumed = open_loggers(config(tensorboard=True), tmp_path, enabled=True, start_step=4)
    for record in [step_record(6, 1.0), step_record(8, 0.75), epoch_record(2, 0.875)]:
        resumed.write(record)
    resumed.close()
    logged = steps_by_tag(read_events(tmp_path / "tb"))  # asserts no repeated step
    assert logged["train/loss"] == {2: 1.5, 4: 1.25, 6: 1.0, 8: 0.75}
    assert sorted(logged["val/loss"]) == [4, 8]


def test_ranks_other_than_0_and_runs_without_logging_write_nothing(tmp_path: Path) -> None:
    for loggers in (
        open_loggers(config(tensorboard=True), tmp_path, enabled=False, start_step=0),
        open_loggers(config(), tmp_path, enabled=True, start_step=0),
    ):
        loggers.describe("name: t\n", GROUPS)
        loggers.write(step_record(2, 1.0))
        loggers.close()
    assert not (tmp_path / "tb").exists()


@pytest.fixture
def without_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args),
    )


@pytest.mark.usefixtures("without_tensorboard")
def test_without_tensorboard_the_error_names_the_extra() -> None:
    assert check_loggers(config(tensorboard=True)) == [
        "logging.tensorboard: needs tensorboard, an optional extra: "
        "`uv sync --extra tensorboard` or `pip install 'trainer[tensorboard]'`"
    ]
    assert check_loggers(config()) == []


@pytest.mark.usefixtures("without_tensorboard")
def test_fit_without_tensorboard_is_exit_2_before_anything_is_written(
    user_error: Callable[..., str],
    write_config: Callable[..., Path],
    tiny_yaml: str,
    tmp_path: Path,
) -> None:
    """Acceptance: the loop checks loggers before building (with the other config checks)."""
    write_config(tiny_yaml + "logging: {tensorboard: true}\n")
    user_error("fit", "cfg.yaml", expect=["logging.tensorboard: needs tensorboard"])
    assert not (tmp_path / "runs").exists()


def test_a_real_run_and_its_resume_log_what_metrics_jsonl_holds(
    run_cli: Callable[..., Result],
    write_config: Callable[..., Path],
    tiny_yaml: str,
    tmp_path: Path,
) -> None:
    """Acceptance: `trainer fit` with `logging: {tensorboard: true}`, then `--resume auto`."""
    write_config(tiny_yaml + "logging: {tensorboard: true}\n")
    for args in (["trainer.epochs=1"], ["--resume", "auto"]):
        result = run_cli("fit", "cfg.yaml", *args)
        assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records if is_epoch_record(r)] == [1, 2]
    events = read_events(run_dir / "tb")
    assert_events_match(records, events)
    assert "config/text_summary" in events.Tags()["tensors"]
