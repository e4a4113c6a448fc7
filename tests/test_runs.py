"""`trainer runs`: status (finished / stopped / running / failed), progress, best, differences."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.damage import DAMAGES, damage
from typer.testing import Result

from trainer.errors import Interrupted, TrainingError
from trainer.runs.listing import compare, read_status, status_recorded, summarize
from trainer.runs.rundir import LOCK_FILE

CONFIG = """
    name: cmp
    seed: 0
    model: {name: "helpers.loop:tiny", image_size: 8}
    data: {name: shapes, size: 64, image_size: 8, batch_size: 16}
    optimizer: {name: SGD, lr: 0.1}
    trainer: {epochs: 2, device: cpu, log_every: 1}
"""


def make_run(
    root: Path,
    name: str,
    records: list[dict[str, Any]],
    *,
    config: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    base = {"name": name, "trainer": {"epochs": 2}, "checkpoint": {"monitor": "val/loss"}}
    (run_dir / "config.yaml").write_text(json.dumps(base | (config or {})))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if status is not None:
        (run_dir / "status.json").write_text(json.dumps(status))
    return run_dir


def epoch(number: int, val_loss: float, loss: float | None = 1.0) -> dict[str, Any]:
    return {
        "epoch": number,
        "step": 4 * number,
        "train/loss": loss,
        "val/loss": val_loss,
        "lr/default": 0.1,
        "train/samples_per_s": 100.0,
    }


# ---------------------------------------------------------------- status.json


def test_status_says_how_the_block_ended(tmp_path: Path) -> None:
    step = iter(range(100))
    with status_recorded(tmp_path, enabled=True, step=lambda: next(step)):
        assert read_status(tmp_path)["status"] == "running"
    saved = read_status(tmp_path)
    assert (saved["status"], saved["reason"], saved["step"]) == ("finished", None, 1)
    first = read_status(tmp_path)["seconds"]
    for error, status, reason in (
        (Interrupted("last.pt"), "stopped", "interrupted"),
        (TrainingError("train/loss is nan by step 3"), "failed", "train/loss is nan by step 3"),
    ):
        with pytest.raises(type(error)), status_recorded(tmp_path, enabled=True, step=lambda: 7):
            raise error
        saved = read_status(tmp_path)
        assert (saved["status"], saved["step"]) == (status, 7)
        assert reason in saved["reason"]
    assert read_status(tmp_path)["seconds"] >= first  # wall time adds up over sessions


def test_ranks_other_than_0_write_no_status(tmp_path: Path) -> None:
    with status_recorded(tmp_path, enabled=False, step=lambda: 0):
        pass
    assert read_status(tmp_path) == {}


def test_a_held_lock_is_a_running_run_and_a_dead_one_failed(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "r", [epoch(1, 0.5)], status={"status": "running", "step": 4})
    (run_dir / LOCK_FILE).touch()
    with open(run_dir / LOCK_FILE) as holder:  # what the runner holds while it trains
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert summarize(run_dir).label == "running (step 4)"
    died = summarize(run_dir)
    assert (died.status, died.label) == ("failed", "failed at step 4")
    assert "without recording how" in died.reason


def test_without_a_lock_file_a_running_status_asks_the_process(tmp_path: Path) -> None:
    status = {"status": "running", "step": 2, "pid": os.getpid()}
    alive = make_run(tmp_path, "alive", [], status=status | {"host": socket.gethostname()})
    assert summarize(alive).status == "running"
    gone = make_run(tmp_path, "gone", [], status=status | {"host": "another-machine"})
    assert summarize(gone).status == "failed"


def test_runs_without_status_are_judged_from_metrics_jsonl(tmp_path: Path) -> None:
    done = make_run(tmp_path, "done", [epoch(1, 0.5), epoch(2, 0.25)])
    cut = make_run(tmp_path, "cut", [epoch(1, 0.5), {"epoch": 2, "step": 6, "train/loss": 1.0}])
    nan = make_run(tmp_path, "nan", [epoch(1, 0.5), {"epoch": 2, "step": 5, "train/loss": None}])
    assert [summarize(r).label for r in (done, cut, nan)] == [
        "finished",
        "stopped at step 6",
        "failed at step 5",
    ]


def test_best_last_and_progress_come_from_the_epoch_records(tmp_path: Path) -> None:
    run = summarize(make_run(tmp_path, "r", [epoch(1, 0.5), epoch(2, 0.75)]))
    assert run.best == {"monitor": "val/loss", "mode": "min", "value": 0.5, "epoch": 1}
    assert run.last == {"train/loss": 1.0, "val/loss": 0.75}
    assert (run.epoch, run.epochs, run.step) == (2, 2, 8)


def test_only_config_keys_that_differ_are_compared(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", [], config={"optimizer": {"name": "SGD", "lr": 0.1}})
    b = make_run(tmp_path, "b", [], config={"optimizer": {"name": "SGD", "lr": 0.01}})
    c = make_run(tmp_path, "c", [], config={"optimizer": {"name": "SGD"}})
    summaries, differing = compare({"a": a, "b": b, "c": c})
    assert differing == ["optimizer.lr"]  # not name, which always differs
    assert [s.config for s in summaries] == [
        {"optimizer.lr": 0.1},
        {"optimizer.lr": 0.01},
        {"optimizer.lr": None},
    ]


# ---------------------------------------------------------------- the command


def test_the_table_and_a_missing_directory(
    run_cli: Callable[..., Result], user_error: Callable[..., str], tmp_path: Path
) -> None:
    make_run(tmp_path / "runs", "a", [epoch(1, 0.5), epoch(2, 0.25)], config={"seed": 1})
    make_run(tmp_path / "runs", "b", [epoch(1, 0.5)], config={"seed": 2})
    result = run_cli("runs")
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "finished" in rows["a"] and "val/loss 0.25 @2" in rows["a"]
    assert "stopped at step 4" in rows["b"] and "seed" in result.stdout
    user_error("runs", "elsewhere", expect=["DIR: elsewhere: no such directory"])


def test_three_real_runs_finished_stopped_by_sigterm_and_failed_with_a_nan(
    run_cli: Callable[..., Result],
    write_config: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """Acceptance: the loop keeps status.json (status_recorded) while it trains."""
    import helpers.resume

    write_config(textwrap.dedent(CONFIG))
    helpers.resume.Once.fired = False
    runs = {
        "finished": ([], 0),
        # SIGTERM when sample 70 is fetched: during the first batch of epoch 2 (step 5).
        "stopped": (['data.name="helpers.resume:signalling_shapes"', "data.at=70"], 130),
        # NaN outputs on the 3rd training forward: train/loss is nan at step 3.
        "failed": (['model.name="helpers.loop:tiny_nan_at"', "model.forward=3"], 1),
    }
    for out, (overrides, code) in runs.items():
        result = run_cli("fit", "cfg.yaml", f"trainer.out_dir=runs/{out}", *overrides)
        assert result.exit_code == code, result.output
    listed = run_cli("runs", "--json")
    assert listed.exit_code == 0, listed.output
    document = json.loads(listed.stdout)
    by_name = {run["name"]: run for run in document["runs"]}
    assert {name: run["label"] for name, run in by_name.items()} == {
        "finished": "finished",
        "stopped": "stopped at step 5",
        "failed": "failed at step 3",
    }
    assert "train/loss is nan" in by_name["failed"]["reason"]
    assert by_name["finished"]["epoch"] == 2 and by_name["finished"]["best"]["epoch"] in (1, 2)
    assert sorted(document["differing_keys"]) == [
        "data.at",
        "data.name",
        "model.forward",
        "model.name",
    ]
    assert by_name["failed"]["config"]["model.forward"] == 3


def test_a_sweeps_trials_are_listed_under_its_study(
    run_cli: Callable[..., Result], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "plain", [epoch(1, 0.5)])
    for number, lr in ((0, 0.1), (1, 0.01)):  # where `trainer sweep` puts them
        out_dir = f"runs/s/trial-000{number}"
        trial = {"optimizer": {"lr": lr}, "trainer": {"epochs": 2, "out_dir": out_dir}}
        make_run(runs / "s", f"trial-000{number}", [epoch(1, lr)], config=trial)
    (runs / "s" / "study.journal").write_text("")
    (runs / "s" / "best.yaml").write_text("name: s\n")
    listed = run_cli("runs", "--json")
    assert listed.exit_code == 0, listed.output
    document = json.loads(listed.stdout)
    assert [run["name"] for run in document["runs"]] == ["plain", "s/trial-0000", "s/trial-0001"]
    assert document["differing_keys"] == ["optimizer.lr"]
    table = run_cli("runs")
    rows = [line.split("│")[1].strip() for line in table.stdout.splitlines() if "│" in line]
    assert rows == ["plain", "s/trial-0000", "s/trial-0001"]
    assert table.stdout.count("├") == 1  # a rule above the sweep's trials
    study = json.loads(run_cli("runs", "runs/s", "--json").stdout)
    assert [run["name"] for run in study["runs"]] == ["trial-0000", "trial-0001"]


@pytest.mark.parametrize("kind", DAMAGES)
def test_runs_leaves_out_a_damaged_file_or_line_with_a_warning(
    run_cli: Callable[..., Result], tmp_path: Path, kind: str
) -> None:
    run_dir = make_run(
        tmp_path / "runs",
        "r",
        [epoch(1, 0.5), epoch(2, 0.25)],
        status={"status": "finished", "step": 8},
    )
    damaged = damage(run_dir, kind)
    for args in (["runs"], ["runs", "--json"]):
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output
        [warning] = result.stderr.splitlines()
        assert warning.startswith(f"warning: {Path('runs/r') / damaged.message}"), warning
    run = json.loads(result.stdout)["runs"][0]
    assert run["warnings"] == [warning.removeprefix("warning: ")]
    if damaged.file == "metrics.jsonl":  # the line left out, the others read
        assert (run["epoch"], run["best"]["value"], run["label"]) == (2, 0.25, "finished")
    if damaged.file == "config.yaml":
        assert (run["epochs"], run["best"]["monitor"]) == (None, "val/loss")
