"""Checkpoints through the command line: bad checkpoints exit 2, a signalled `trainer fit`
exits 130 and resumes, `trainer inspect` and `trainer eval` read what a run saved."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import one_optimizer_layout
from helpers.resume import (
    Once,
    assert_same_training_state,
    epoch_records,
    load,
    step_lrs,
    write_config,
)
from typer.testing import CliRunner, Result

from trainer.cli import app
from trainer.runs.metrics_file import EPOCH_END, read_metrics

REPO = Path(__file__).resolve().parent.parent
LAST = "runs/r/checkpoints/last.pt"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Once.fired = False


def cli(*args: str | Path) -> Result:
    """`trainer ARGS...` in-process, in the current directory."""
    return CliRunner().invoke(app, [str(arg) for arg in args])


def assert_user_error(result: Result, *fragments: str) -> None:
    """Exit 2 with every fragment on stderr, and no traceback."""
    assert result.exit_code == 2, (result.exception, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr}"


@pytest.fixture
def copied(tmp_path: Path, two_epochs: Path) -> Path:
    """The 2-epoch run copied to ./runs/r, the config to ./cfg.yaml; returns the run dir."""
    shutil.copytree(two_epochs, tmp_path / "runs" / "r")
    write_config(tmp_path)
    return tmp_path / "runs" / "r"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- unusable checkpoints


def test_resume_auto_skips_a_truncated_last_pt(copied: Path, straight: Path) -> None:
    truncate(copied / "checkpoints/last.pt")
    result = cli("fit", "cfg.yaml", "trainer.epochs=3", "--resume", "auto")

    assert result.exit_code == 0, result.output
    assert f"--resume auto: skipping {LAST}: not a readable checkpoint" in result.stdout
    assert (
        "resumed from runs/r/checkpoints/epoch-0002.pt: epoch 2, step 20, batch 0 of the next "
        "epoch" in result.stdout
    )
    assert [p.name for p in copied.parent.iterdir()] == ["r"]
    assert [r["epoch"] for r in epoch_records(copied)] == [1, 2, 3]
    assert_same_training_state(
        load(copied / "checkpoints/last.pt"), load(straight / "checkpoints/epoch-0003.pt")
    )


def test_an_explicit_corrupt_checkpoint_is_an_error(copied: Path) -> None:
    truncate(copied / "checkpoints/last.pt")
    metrics = (copied / "metrics.jsonl").read_text()
    result = cli("fit", "cfg.yaml", "trainer.epochs=3", "--resume", LAST)

    assert_user_error(result, f"error: {LAST}: not a readable checkpoint")
    assert (copied / "metrics.jsonl").read_text() == metrics
    assert [p.name for p in copied.parent.iterdir()] == ["r"]


def test_a_missing_checkpoint_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    write_config(tmp_path)
    result = cli("fit", "cfg.yaml", "--resume", LAST)

    assert_user_error(result, f"error: --resume: no checkpoint at '{LAST}'")
    assert not (tmp_path / "runs").exists()


def test_a_missing_checkpoint_beside_a_run_starts_no_new_run(copied: Path) -> None:
    metrics = (copied / "metrics.jsonl").read_text()
    result = cli("fit", "cfg.yaml", "--resume", "runs/r/checkpoints/epoch-0009.pt")

    assert_user_error(result, "no checkpoint at 'runs/r/checkpoints/epoch-0009.pt'")
    assert [p.name for p in copied.parent.iterdir()] == ["r"]
    assert (copied / "metrics.jsonl").read_text() == metrics


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, id="state_dict"),
        pytest.param(torch.zeros(3), id="tensor"),
        pytest.param([1, 2, 3], id="list"),
    ],
)
def test_a_torch_file_that_is_not_a_checkpoint(tmp_path: Path, payload: object) -> None:
    write_config(tmp_path)
    torch.save(payload, tmp_path / "other.pt")

    assert_user_error(
        cli("fit", "cfg.yaml", "--resume", "other.pt"), "other.pt: not a trainer checkpoint"
    )
    assert not (tmp_path / "runs").exists()
    assert_user_error(cli("inspect", "other.pt"), "other.pt: not a trainer checkpoint")


def test_a_changed_model_shape_is_an_error_naming_the_weights(copied: Path) -> None:
    metrics = (copied / "metrics.jsonl").read_text()
    result = cli("fit", "cfg.yaml", "model.num_classes=5", "--resume", LAST)

    assert_user_error(
        result,
        "4.weight: shape (4, 32) in the checkpoint, (5, 32) in the model",
        "4.bias: shape (4,) in the checkpoint, (5,) in the model",
    )
    assert "1.weight" not in result.stderr
    assert (copied / "metrics.jsonl").read_text() == metrics


# The config's head rule, and a new one that takes the hidden layer out of `default`.
NEW_RULE = (
    "param_groups.rules=[{name: head, match: '^4\\.', lr_mult: 2}, "
    "{name: hidden, match: '^1\\.', lr_mult: 0.5}]"
)


def test_changed_param_groups_are_an_error_until_reset_optimizer(copied: Path) -> None:
    refused = cli("fit", "cfg.yaml", NEW_RULE, "trainer.epochs=3", "--resume", LAST)
    assert_user_error(
        refused,
        "1.weight: group default -> hidden",
        "1.bias: group default -> hidden",
        "--reset-optimizer",
    )
    assert "4.weight" not in refused.stderr  # the head group did not move

    result = cli(
        "fit", "cfg.yaml", NEW_RULE, "trainer.epochs=3", "--resume", LAST, "--reset-optimizer"
    )
    assert result.exit_code == 0, result.output
    assert "--reset-optimizer: loaded the weights only; fresh optimizer state" in result.stdout
    last = load(copied / "checkpoints/last.pt")
    assert last["epoch"] == 3
    assert last["groups"]["optimizer"]["hidden"] == ["1.weight", "1.bias"]
    # A fresh optimizer, with its scheduler fast-forwarded over the 2 epochs already run.
    record = epoch_records(copied)[-1]
    assert record["epoch"] == 3
    assert record["lr/hidden"] == step_lrs(1, 3, lr=0.05)[2]
    assert record["lr/head"] == step_lrs(1, 3, lr=0.2)[2]


def test_an_optimizer_state_for_fewer_tensors_is_an_error_naming_the_file(copied: Path) -> None:
    checkpoint = load(copied / "checkpoints/last.pt")
    head = checkpoint["optimizers"]["optimizer"]["param_groups"][0]
    head["params"] = head["params"][:1]  # 1 of head's 2 tensors: 3 of the 4
    torch.save(checkpoint, "short.pt")
    metrics = (copied / "metrics.jsonl").read_text()

    result = cli("fit", "cfg.yaml", "trainer.epochs=3", "--resume", "short.pt")
    assert_user_error(
        result,
        "error: optimizer: short.pt holds an optimizer state for 3 tensors in groups of 1, 2; "
        "the configured param groups have 4 (head: 2, default: 2); resume with "
        "--reset-optimizer to load the weights only",
    )
    assert (copied / "metrics.jsonl").read_text() == metrics


def test_another_optimizer_is_an_error_until_reset_optimizer(copied: Path) -> None:
    metrics = (copied / "metrics.jsonl").read_text()
    adam = ("optimizer={name: Adam, lr: 0.01}", "trainer.epochs=3", "--resume", LAST)
    assert_user_error(
        cli("fit", "cfg.yaml", *adam),
        f"error: optimizer.name: {LAST} holds SGD's state, the config names Adam; resume with "
        "--reset-optimizer to load the weights only (a fresh Adam state), or set "
        "optimizer.name: SGD",
    )
    assert (copied / "metrics.jsonl").read_text() == metrics

    result = cli("fit", "cfg.yaml", *adam, "--reset-optimizer")
    assert result.exit_code == 0, result.output
    assert load(copied / "checkpoints/last.pt")["epoch"] == 3


@pytest.mark.parametrize("junk", ["junk", 3, ["a"]])
def test_a_checkpoint_config_with_sections_of_another_type_resumes_without_a_traceback(
    copied: Path, junk: object
) -> None:
    # The saved config is only compared with the current one: sections of any type in a
    # damaged file make the scheduler rebuilt and the optimizer state loaded as it fits.
    checkpoint = torch.load(copied / "checkpoints/last.pt", weights_only=True)
    checkpoint["config"].update(optimizer=junk, scheduler=junk)
    torch.save(checkpoint, copied / "checkpoints/last.pt")
    result = cli("fit", "cfg.yaml", "trainer.epochs=3", "--resume", LAST)
    assert result.exit_code == 0, (result.exception, result.output)
    assert "scheduler: rebuilt StepLR from the config" in result.output


# ---------------------------------------------------------------- a signalled `trainer fit`


@dataclass
class Signalled:
    root: Path
    returncode: int
    stderr: str


@pytest.fixture(scope="module")
def signalled(tmp_path_factory: pytest.TempPathFactory) -> Signalled:
    """`python -m trainer fit cfg.yaml log.yaml ...` sent SIGTERM while it is held in its 14th
    training forward (the 4th batch of epoch 2), then let go."""
    root = tmp_path_factory.mktemp("signalled")
    write_config(root)
    (root / "log.yaml").write_text("trainer: {log_every: 1}\n", encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "trainer", "fit", "cfg.yaml", "log.yaml"]  # two files
    overrides = ["model.pause_after=14"]
    process = subprocess.Popen(
        command + overrides,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics, started = root / "runs/r/metrics.jsonl", time.monotonic()
        while not (root / "paused").exists() or len(metrics.read_text().splitlines()) < 3:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() - started < 180, "trainer fit never reached step 14"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        (root / "go").touch()
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return Signalled(root, process.returncode, stderr)


def test_sigterm_saves_last_pt_and_exits_130_with_the_resume_command(
    signalled: Signalled,
) -> None:
    assert signalled.returncode == 130, signalled.stderr
    assert "SIGTERM: finishing the current step" in signalled.stderr
    assert (
        f"resume with: trainer fit cfg.yaml log.yaml model.pause_after=14 --resume {LAST}"
        in signalled.stderr
    )
    assert "Traceback" not in signalled.stderr
    last = load(signalled.root / LAST)
    assert (last["epoch"], last["step"], last["batch_in_epoch"]) == (1, 14, 4)
    # metrics.jsonl: a record per step up to the stop (log_every 1), and epoch 1's.
    records = read_metrics(signalled.root / "runs/r/metrics.jsonl")
    assert [r["step"] for r in records if "val/loss" not in r] == list(range(1, 15))
    assert [r["epoch"] for r in records if "val/loss" in r] == [1]
    checkpoints = sorted(p.name for p in (signalled.root / "runs/r/checkpoints").iterdir())
    assert checkpoints == ["best.pt", "epoch-0001.pt", "last.pt"]


def test_the_printed_resume_command_finishes_like_a_straight_run(
    signalled: Signalled, straight: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = next(x for x in signalled.stderr.splitlines() if x.startswith("resume with: "))
    program, *args = shlex.split(line.removeprefix("resume with: "))
    assert program == "trainer"
    monkeypatch.chdir(signalled.root)
    result = cli(*args)

    assert result.exit_code == 0, result.output
    assert f"resumed from {LAST}: epoch 1, step 14, batch 4 of the next epoch" in result.stdout
    run_dir = signalled.root / "runs/r"
    assert [r["epoch"] for r in epoch_records(run_dir)] == [1, 2, 3, 4]
    assert_same_training_state(
        load(run_dir / "checkpoints/last.pt"), load(straight / "checkpoints/last.pt")
    )


# ---------------------------------------------------------------- inspect and eval


def parse_pairs(text: str) -> dict[str, float]:
    """`key value  key value` → {key: float(value)}."""
    tokens = text.split()
    return {k: float(v) for k, v in zip(tokens[::2], tokens[1::2], strict=True)}


def test_inspect_prints_position_lrs_metrics_and_best(two_epochs: Path) -> None:
    result = cli("inspect", two_epochs / "checkpoints/last.pt")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "epoch: 2 completed, step: 20, batch_in_epoch: 0" in lines
    # The lr the next epoch uses: two StepLR halvings of head 0.2 and default 0.1.
    assert "lr: head 0.05, default 0.025" in lines
    records = epoch_records(two_epochs)
    metrics = next(x for x in lines if x.startswith("metrics: "))
    printed = parse_pairs(metrics.removeprefix("metrics: "))
    logged = {k: v for k, v in records[-1].items() if k != EPOCH_END}  # not a metric
    assert printed.keys() == logged.keys()
    for key, value in logged.items():
        assert printed[key] == pytest.approx(value, rel=1e-3), key
    best = min(records, key=lambda r: r["val/loss"])  # checkpoint.monitor val/loss, mode min
    printed_best = re.fullmatch(
        r"best: val/loss (\S+) at epoch (\d+)", next(x for x in lines if x.startswith("best: "))
    )
    assert printed_best, lines
    assert float(printed_best[1]) == pytest.approx(best["val/loss"], rel=1e-3)
    assert int(printed_best[2]) == best["epoch"]
    assert "config:" in lines


def test_inspect_prints_an_old_layout_file_as_the_one_layout(
    tmp_path: Path, two_epochs: Path
) -> None:
    new = two_epochs / "checkpoints/last.pt"
    torch.save(one_optimizer_layout(load(new)), tmp_path / "old.pt")
    printed = [cli("inspect", path) for path in (new, tmp_path / "old.pt")]

    assert [result.exit_code for result in printed] == [0, 0], printed[1].output
    assert printed[1].stdout == printed[0].stdout
    assert "lr: head 0.05, default 0.025" in printed[1].stdout.splitlines()


@pytest.mark.parametrize("name", ["last.pt", "epoch-0001.pt"])
def test_eval_reproduces_the_runs_validation_metrics(
    tmp_path: Path, two_epochs: Path, name: str
) -> None:
    write_config(tmp_path)
    checkpoint = two_epochs / "checkpoints" / name
    record = epoch_records(two_epochs)[load(checkpoint)["epoch"] - 1]

    as_json = cli("eval", "cfg.yaml", "--checkpoint", checkpoint, "--json")
    assert as_json.exit_code == 0, as_json.output
    metrics = json.loads(as_json.stdout)
    assert metrics.keys() == {"val/loss", "val/acc"}
    for key, value in metrics.items():
        assert abs(value - record[key]) <= 1e-6, key

    plain = cli("eval", "cfg.yaml", "--checkpoint", checkpoint)
    assert plain.exit_code == 0, plain.output
    printed = parse_pairs(plain.stdout)
    assert printed.keys() == {"val/loss", "val/acc"}
    for key, value in printed.items():
        assert value == pytest.approx(record[key], rel=1e-3), key


def test_eval_refuses_a_checkpoint_of_another_model(tmp_path: Path, two_epochs: Path) -> None:
    write_config(tmp_path)
    result = cli(
        "eval",
        "cfg.yaml",
        "model.num_classes=5",
        "--checkpoint",
        two_epochs / "checkpoints/last.pt",
    )
    assert_user_error(result, "does not fit the configured model", "4.weight")
