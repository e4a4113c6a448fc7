"""metrics.jsonl (trainer.runs.metrics_file): what an epoch record is, in files of this
version and of older ones, read whole (tolerantly, strictly) or as they are appended."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainer.errors import UserError
from trainer.runs.metrics_file import (
    MetricsFile,
    MetricsTail,
    is_epoch_record,
    mark_epoch,
    read_metrics,
    read_records,
)


def step(epoch: int, step: int, **metrics: float) -> dict[str, Any]:
    return {"epoch": epoch, "step": step, "train/loss": 1.0, **metrics}


def epoch_end(epoch: int, step: int) -> dict[str, Any]:
    """An epoch record as versions before the marker wrote it."""
    return {"epoch": epoch, "step": step, "train/g_loss": 0.5, "train/samples_per_s": 10.0}


def write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def epochs_read(path: Path) -> list[tuple[int, int]]:
    """(epoch, step) of the epoch records, read whole and read as appended (which agree)."""
    whole = [(r["epoch"], r["step"]) for r in read_metrics(path) if is_epoch_record(r)]
    tail = MetricsTail(path, warn=pytest.fail)
    appended = [(r["epoch"], r["step"]) for r in tail.read_new() if is_epoch_record(r)]
    assert appended == whole
    return whole


def test_the_writer_marks_what_the_loop_gives_as_an_epoch_record(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    metrics = MetricsFile(path)
    metrics.write(step(1, 2))
    metrics.write(mark_epoch(epoch_end(1, 4)))
    metrics.close()
    assert path.read_text().splitlines()[1].endswith(', "epoch_end": true}')
    assert epochs_read(path) == [(1, 4)]


def test_a_step_metric_named_like_the_old_rule_is_a_step_once_records_are_marked(
    tmp_path: Path,
) -> None:
    # A step that logs `samples_per_s` itself: its step records carry train/samples_per_s.
    path = tmp_path / "metrics.jsonl"
    own = {"train/samples_per_s": 3.0}
    write_lines(path, [mark_epoch(epoch_end(1, 4)), step(2, 6, **own), mark_epoch(epoch_end(2, 8))])
    assert epochs_read(path) == [(1, 4), (2, 8)]


def test_files_of_older_versions_are_read_by_their_rule(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_lines(path, [step(1, 2), epoch_end(1, 4), step(2, 6), epoch_end(2, 8)])
    assert epochs_read(path) == [(1, 4), (2, 8)]
    # Resumed by this version: the older epochs are still epochs, and so are the marked.
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(step(3, 10)) + "\n" + json.dumps(mark_epoch(epoch_end(3, 12))) + "\n")
    assert epochs_read(path) == [(1, 4), (2, 8), (3, 12)]


def test_resume_cuts_the_later_epochs_of_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_lines(path, [step(1, 4), epoch_end(1, 4), step(2, 8), epoch_end(2, 8)])
    metrics = MetricsFile(path)
    assert metrics.cut_after(step=8, epoch=1) == 1  # epoch 2's record: logged again
    metrics.close()
    assert epochs_read(path) == [(1, 4)]
    assert [r["step"] for r in read_metrics(path)] == [4, 4, 8]


def test_the_appended_lines_are_read_as_they_are_completed(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    warnings: list[str] = []
    tail = MetricsTail(path, warn=warnings.append)
    assert tail.read_new() == []  # no file yet
    with open(path, "w", encoding="utf-8") as file:
        file.write(json.dumps(step(1, 2)) + "\n" + '{"epoch": 1, "st')
        file.flush()
        assert tail.read_new() == [step(1, 2)]  # the unfinished line waits
        file.write('ep": 4, "train/samples_per_s": 10.0}\n[1, 2]\n\n')
        file.write(json.dumps({"epoch": 1, "step": 4, "epoch_end": 1}) + "\n")
        file.flush()
        new = tail.read_new()
    assert new == [mark_epoch({"epoch": 1, "step": 4, "train/samples_per_s": 10.0})]
    assert warnings == [
        f"{path}, line 3: a JSON array, not an object; the line is skipped",
        f"{path}, line 5: epoch_end is 1, not true; the line is skipped",
    ]


def test_the_readers_name_the_damaged_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(step(1, 2)) + '\n{"epoch": 1, "step": 4, "epoch_end": false}\n')
    warnings: list[str] = []
    assert read_records(path, warn=warnings.append) == [step(1, 2)]
    assert warnings == [f"{path}, line 2: epoch_end is false, not true; the line is skipped"]
    with pytest.raises(UserError) as raised:
        read_metrics(path)
    assert raised.value.problems == [f"{path}, line 2: epoch_end is false, not true"]
