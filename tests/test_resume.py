"""Exact resume: a stopped-and-resumed run equals a straight one, bit for bit on CPU.

Runs are in-process `fit` calls on 300 shapes (10 batches per epoch) with an MLP with dropout,
SGD with momentum and StepLR, inside tmp_path (the config's out_dir is `runs/r`).
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.checkpoints import one_optimizer_layout
from helpers.configs import TINY_MLP_CONFIG
from helpers.resume import (
    CONFIG,
    Once,
    assert_same_training_state,
    epoch_records,
    load,
    run_in,
    step_lrs,
    train,
    write_config,
)

from trainer.config import load_config
from trainer.engine.loop import FitResult
from trainer.errors import Interrupted
from trainer.runs.metrics_file import mark_epoch, read_metrics
from trainer.state.checkpoint import KEYS

LAST = "runs/r/checkpoints/last.pt"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Once.fired = False


def copy_run(source: Path, target: Path) -> Path:
    """The run dir `source` (…/runs/r) copied to `target`/runs/r, with the config beside it."""
    shutil.copytree(source, target / "runs" / "r")
    return write_config(target)


def changed_keys(output: str) -> dict[str, str]:
    """The resume's `config differs` lines, as {key: 'old (checkpoint) -> new (who wins)'}."""
    lines = output.splitlines()
    start = lines.index("config differs from the checkpoint's:") + 1
    changes = {}
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        key, _, rest = line.strip().partition(": ")
        changes[key] = rest
    return changes


def comparable(records: list[dict]) -> list[dict]:
    """Epoch records without the timing, which no two runs share."""
    return [{k: v for k, v in r.items() if k != "train/samples_per_s"} for r in records]


def assert_same_epoch_records(run_dir: Path, straight: Path) -> None:
    """Every epoch once, each record exactly the straight run's (the epoch's loss sums are
    carried across the checkpoint exactly, wherever the stop split the epoch)."""
    ours, theirs = comparable(epoch_records(run_dir)), comparable(epoch_records(straight))
    assert [r["epoch"] for r in ours] == [1, 2, 3, 4]
    assert ours == theirs


@dataclass
class Resumed:
    root: Path
    output: str
    lines_before: list[str]

    @property
    def run_dir(self) -> Path:
        return self.root / "runs" / "r"


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory, two_epochs: Path) -> Resumed:
    """A copy of the 2-epoch run, resumed from its last.pt to 4 epochs."""
    root = tmp_path_factory.mktemp("resumed")
    config = copy_run(two_epochs, root)
    before = (root / "runs/r/metrics.jsonl").read_text().splitlines()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        result, output = train(config, "trainer.epochs=4", resume=LAST)
    assert isinstance(result, FitResult)
    return Resumed(root, output, before)


# ---------------------------------------------------------------- straight == stopped + resumed


def test_resume_at_an_epoch_boundary_equals_the_straight_run(
    resumed: Resumed, straight: Path
) -> None:
    assert_same_training_state(
        load(resumed.run_dir / "checkpoints/last.pt"), load(straight / "checkpoints/last.pt")
    )
    best = load(resumed.run_dir / "checkpoints/best.pt")
    assert best["epoch"] == load(straight / "checkpoints/best.pt")["epoch"]
    # Validation, lr and even train/loss (the loss sums split at the same batches): exact.
    assert comparable(epoch_records(resumed.run_dir)) == comparable(epoch_records(straight))


@dataclass
class Stopped:
    root: Path
    result: FitResult | Interrupted
    stderr: str


# SIGTERM while the 4th batch of epoch 2 is loaded (sample 300 + 3 * 32 + 5 of the run).
STOP_AT_SAMPLE = ("data.name=helpers.resume:signalling_shapes", "data.at=401")


@pytest.fixture(scope="module")
def stopped_mid_epoch(tmp_path_factory: pytest.TempPathFactory) -> Stopped:
    """A run that got SIGTERM from its own dataset in the middle of epoch 2."""
    root = tmp_path_factory.mktemp("stopped")
    stderr = io.StringIO()
    Once.fired = False
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.chdir(root)
        result, _ = train(write_config(root), *STOP_AT_SAMPLE)
    return Stopped(root, result, stderr.getvalue())


def test_sigterm_mid_epoch_saves_last_pt_after_the_current_step(stopped_mid_epoch: Stopped) -> None:
    assert isinstance(stopped_mid_epoch.result, Interrupted)
    assert stopped_mid_epoch.result.checkpoint == LAST
    assert "SIGTERM: finishing the current step" in stopped_mid_epoch.stderr
    last = load(stopped_mid_epoch.root / LAST)
    assert (last["epoch"], last["step"], last["batch_in_epoch"]) == (1, 14, 4)
    checkpoints = stopped_mid_epoch.root / "runs/r/checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "best.pt",
        "epoch-0001.pt",
        "last.pt",
    ]  # and no .tmp file left over
    assert [r["epoch"] for r in epoch_records(stopped_mid_epoch.root / "runs/r")] == [1]


def test_resume_mid_epoch_equals_the_straight_run(
    stopped_mid_epoch: Stopped, straight: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = stopped_mid_epoch.root
    monkeypatch.chdir(root)
    Once.fired = True  # the dataset stops a run once
    result, output = train(root / "cfg.yaml", *STOP_AT_SAMPLE, resume="auto")

    assert isinstance(result, FitResult)
    assert f"resumed from {LAST}: epoch 1, step 14, batch 4 of the next epoch" in output
    assert "config differs" not in output
    assert_same_training_state(load(root / LAST), load(straight / "checkpoints/last.pt"))
    assert_same_epoch_records(root / "runs/r", straight)


# One optimizer in the `optimizers:` form: its states are saved under its own name.
ONE_NAMED_OPTIMIZER = CONFIG.replace(
    "optimizer: {name: SGD, lr: 0.1, momentum: 0.9}\nparam_groups:\n  rules:\n"
    "    - {name: head, match: '^4\\.', lr_mult: 2}\nscheduler:",
    "optimizers:\n  net:\n    params: '.*'\n    optimizer: {name: SGD, lr: 0.1, momentum: 0.9}\n"
    "    scheduler:",
)


def test_one_optimizer_in_the_optimizers_form_resumes_under_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "optimizers:\n  net:" in ONE_NAMED_OPTIMIZER
    runs = {}
    for name, epochs in (("straight", 2), ("resumed", 1)):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        config = write_config(tmp_path / name, ONE_NAMED_OPTIMIZER)
        result, _ = train(config, f"trainer.epochs={epochs}")
        assert isinstance(result, FitResult)
        runs[name] = tmp_path / name / result.run_dir / "checkpoints/last.pt"
    result, output = train(config, "trainer.epochs=2", resume="auto")

    assert isinstance(result, FitResult), result
    assert "resumed from runs/r/checkpoints/last.pt: epoch 1, step 10" in output
    ours, theirs = load(runs["resumed"]), load(runs["straight"])
    assert ours["optimizers"].keys() == {"net"}
    for key, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][key], tensor), key
    momentum = [s["optimizers"]["net"]["state"][0]["momentum_buffer"] for s in (ours, theirs)]
    assert torch.equal(*momentum)
    assert ours["schedulers"] == theirs["schedulers"]


@pytest.fixture(scope="module")
def kept_mid_epoch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another run stopped as `stopped_mid_epoch` is, left as it stopped (copy it to use it)."""
    root = tmp_path_factory.mktemp("kept")
    Once.fired = False
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(io.StringIO()):
        patch.chdir(root)
        result, _ = train(write_config(root), *STOP_AT_SAMPLE)
    assert isinstance(result, Interrupted)
    return root / "runs"


# What files written before the one layout lack: update counts, then the sums of every step
# metric (only `epoch_loss`), the samples trained, every rank's RNG and early stopping.
OLDER_STILL = ("updates", "epoch_sums", "epoch_counted", "samples_in_epoch", "rng_per_rank",
               "early_stopping")  # fmt: skip


@pytest.mark.parametrize("older_still", [False, True], ids=["one-optimizer", "older-still"])
def test_a_one_optimizer_file_of_the_old_layout_resumes_as_the_one_layout_does(
    tmp_path: Path, kept_mid_epoch: Path, straight: Path, older_still: bool
) -> None:
    shutil.copytree(kept_mid_epoch, tmp_path / "runs")
    config = write_config(tmp_path)
    old = one_optimizer_layout(load(tmp_path / LAST))
    for key in OLDER_STILL if older_still else ():
        del old[key]
    torch.save(old, tmp_path / LAST)
    Once.fired = True  # the dataset stops a run once
    result, output = train(config, *STOP_AT_SAMPLE, resume=LAST)

    assert isinstance(result, FitResult)
    assert f"resumed from {LAST}: epoch 1, step 14, batch 4 of the next epoch" in output
    last = load(tmp_path / LAST)
    assert last.keys() == set(KEYS)  # written in the one layout
    assert_same_training_state(last, load(straight / "checkpoints/last.pt"))
    assert_same_epoch_records(tmp_path / "runs/r", straight)


@pytest.mark.parametrize(
    ("stop_after", "stop_signal", "position"),
    [
        (14, "SIGTERM", (1, 14, 4)),  # mid-epoch: the 4th batch of epoch 2
        (20, "SIGINT", (2, 20, 0)),  # the last batch of epoch 2: the epoch ends first
    ],
)
def test_resume_with_worker_processes_equals_the_straight_run(
    tmp_path: Path,
    straight: Path,
    stop_after: int,
    stop_signal: str,
    position: tuple[int, int, int],
) -> None:
    # The workers load the data; the main process signals itself after a training forward.
    config = write_config(tmp_path)
    overrides = (
        "data.num_workers=2",
        f"model.stop_after={stop_after}",
        f"model.stop_signal={stop_signal}",
    )
    stopped, _ = train(config, *overrides)
    assert isinstance(stopped, Interrupted)
    last = load(tmp_path / LAST)
    assert (last["epoch"], last["step"], last["batch_in_epoch"]) == position

    result, _ = train(config, *overrides, resume=LAST)
    assert isinstance(result, FitResult)
    assert_same_training_state(load(tmp_path / LAST), load(straight / "checkpoints/last.pt"))
    assert_same_epoch_records(tmp_path / "runs/r", straight)


def test_resume_appends_to_the_checkpoints_run_directory(resumed: Resumed) -> None:
    assert [p.name for p in (resumed.root / "runs").iterdir()] == ["r"]
    lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) > len(resumed.lines_before)
    assert lines[: len(resumed.lines_before)] == resumed.lines_before
    assert [r["epoch"] for r in epoch_records(resumed.run_dir)] == [1, 2, 3, 4]
    assert f"resumed from {LAST}: epoch 2, step 20, batch 0 of the next epoch" in resumed.output
    assert "run directory: runs/r\n" in resumed.output


# ---------------------------------------------------------------- the scheduler on resume


def test_scheduler_last_epoch_and_lr_continue_after_resume(resumed: Resumed) -> None:
    records = epoch_records(resumed.run_dir)
    assert [r["lr/default"] for r in records] == step_lrs(1, 4, lr=0.1)
    assert [r["lr/head"] for r in records] == step_lrs(1, 4, lr=0.2)
    checkpoints = resumed.run_dir / "checkpoints"
    for epoch in (2, 3, 4):
        saved = load(checkpoints / f"epoch-{epoch:04d}.pt")
        assert saved["schedulers"]["optimizer"]["last_epoch"] == epoch


def test_a_changed_scheduler_is_rebuilt_at_the_runs_position(
    tmp_path: Path, two_epochs: Path
) -> None:
    config = copy_run(two_epochs, tmp_path)
    result, output = train(config, "trainer.epochs=4", "scheduler.step_size=2", resume=LAST)

    assert isinstance(result, FitResult)
    assert "scheduler: rebuilt StepLR from the config, fast-forwarded to last_epoch=2" in output
    assert changed_keys(output) == {
        "scheduler.step_size": "1 (checkpoint) -> 2 (config wins: the scheduler is rebuilt)",
        "trainer.epochs": "2 (checkpoint) -> 4 (config wins)",
    }
    # Epochs 1-2 ran under step_size 1; from epoch 3 on, the lr a fresh StepLR(step_size=2)
    # has after as many epochs.
    records = epoch_records(tmp_path / "runs/r")
    assert [r["lr/default"] for r in records] == [*step_lrs(1, 2, lr=0.1), 0.05, 0.05]
    assert [r["lr/default"] for r in records[2:]] == step_lrs(2, 4, lr=0.1)[2:]
    assert [r["lr/head"] for r in records[2:]] == step_lrs(2, 4, lr=0.2)[2:]
    scheduler = load(tmp_path / LAST)["schedulers"]["optimizer"]
    assert (scheduler["step_size"], scheduler["last_epoch"]) == (2, 4)


def test_changed_optimizer_options_lose_to_the_checkpoints_state(
    tmp_path: Path, two_epochs: Path, straight: Path
) -> None:
    config = copy_run(two_epochs, tmp_path)
    result, output = train(config, "trainer.epochs=4", "optimizer.lr=0.5", resume=LAST)

    assert isinstance(result, FitResult)
    assert changed_keys(output) == {
        "optimizer.lr": "0.1 (checkpoint) -> 0.5 (the checkpoint's optimizer state wins; "
        "--reset-optimizer to use the config)",
        "trainer.epochs": "2 (checkpoint) -> 4 (config wins)",
    }
    assert "scheduler: rebuilt" not in output
    assert_same_training_state(load(tmp_path / LAST), load(straight / "checkpoints/last.pt"))


# ---------------------------------------------------------------- checkpoint files


def test_every_checkpoint_key_loads_with_weights_only(straight: Path) -> None:
    files = sorted((straight / "checkpoints").iterdir())
    assert [f.name for f in files] == [
        "best.pt",
        "epoch-0002.pt",
        "epoch-0003.pt",
        "epoch-0004.pt",
        "last.pt",
    ]
    for path in files:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert set(KEYS) <= checkpoint.keys(), path.name
    last = load(straight / "checkpoints/last.pt")
    assert (last["epoch"], last["step"], last["batch_in_epoch"]) == (4, 40, 0)
    assert last["groups"]["optimizer"] == {
        "default": ["1.weight", "1.bias"],
        "head": ["4.weight", "4.bias"],
    }
    assert mark_epoch(last["metrics"]) == epoch_records(straight)[-1]
    assert last["config"]["trainer"]["epochs"] == 4
    scheduler = last["config"]["scheduler"]
    assert (scheduler["name"], scheduler["step_size"], scheduler["gamma"]) == ("StepLR", 1, 0.5)


def expected_best(records: list[dict], monitor: str, mode: str) -> dict:
    """The first epoch with the best value of `monitor` (a tie does not replace the best)."""
    best = records[0]
    for record in records[1:]:
        better = (
            record[monitor] < best[monitor] if mode == "min" else record[monitor] > best[monitor]
        )
        best = record if better else best
    return best


@pytest.mark.parametrize(
    ("monitor", "mode", "keep_last"),
    [("val/loss", "min", None), ("val/acc", "max", 1), ("val/loss", "max", 2)],
)
def test_best_and_epoch_files_follow_the_checkpoint_policy(
    tmp_path: Path, monitor: str, mode: str, keep_last: int | None
) -> None:
    run_dir = run_in(
        tmp_path,
        f"checkpoint.monitor={monitor}",
        f"checkpoint.mode={mode}",
        f"checkpoint.keep_last={'null' if keep_last is None else keep_last}",
    )
    kept = [1, 2, 3, 4][-keep_last:] if keep_last else [1, 2, 3, 4]
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(
        ["best.pt", "last.pt", *(f"epoch-{e:04d}.pt" for e in kept)]
    )  # so no temporary file is left either

    records = epoch_records(run_dir)
    record = expected_best(records, monitor, mode)
    best = load(checkpoints / "best.pt")
    summary = {"monitor": monitor, "mode": mode, "value": record[monitor], "epoch": record["epoch"]}
    assert best["best"] == summary
    assert load(checkpoints / "last.pt")["best"] == summary
    assert best["epoch"] == record["epoch"]
    assert mark_epoch(best["metrics"]) == record
    if record["epoch"] in kept:
        same_epoch = load(checkpoints / f"epoch-{record['epoch']:04d}.pt")
        for key, tensor in same_epoch["model"].items():
            assert torch.equal(best["model"][key], tensor)


def test_the_modes_pick_different_best_epochs(straight: Path) -> None:
    """Guards the test above: on this run, min and max of val/loss are different epochs."""
    records = epoch_records(straight)
    lowest = expected_best(records, "val/loss", "min")["epoch"]
    highest = expected_best(records, "val/loss", "max")["epoch"]
    assert lowest != highest


@pytest.mark.parametrize("at", [333, 401, 563])
def test_epoch_means_after_a_sigterm_resume_equal_the_straight_runs_exactly(
    tmp_path: Path, at: int
) -> None:
    """One log window spans the epoch, so the stop is the only place its loss sum is cut."""
    (tmp_path / "straight").mkdir()
    straight = run_in(tmp_path / "straight", "trainer.log_every=100")
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    config = write_config(stopped)
    overrides = ("trainer.log_every=100", "data.name=helpers.resume:signalling_shapes",
                 f"data.at={at}")  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(stopped)
        first, _ = train(config, *overrides)
        assert isinstance(first, Interrupted)
        resumed, _ = train(config, *overrides, resume="auto")
    assert isinstance(resumed, FitResult)
    assert comparable(epoch_records(stopped / "runs/r")) == comparable(epoch_records(straight))


def test_a_resumed_runs_config_yaml_is_the_config_in_force(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    first, _ = train(config, "trainer.max_steps=7")
    assert isinstance(first, FitResult)
    run_dir = tmp_path / "runs/r"
    before = (run_dir / "config.yaml").read_text()
    assert "max_steps: 7" in before

    second, output = train(config, resume="auto")
    assert isinstance(second, FitResult)
    assert second.step == 40
    assert "config.yaml: now the config in force; the earlier one is config-step7.yaml" in output
    assert (run_dir / "config-step7.yaml").read_text() == before
    now = (run_dir / "config.yaml").read_text()
    assert "max_steps: null" in now
    # Fitting the run's config.yaml again trains what the resumed run trained.
    assert load_config(run_dir / "config.yaml", []).trainer.max_steps is None

    _, output = train(config, resume="auto")  # nothing changed: nothing kept
    assert "config.yaml: now the config in force" not in output
    assert sorted(p.name for p in run_dir.glob("config*.yaml")) == [
        "config-step7.yaml",
        "config.yaml",
    ]


# ---------------------------------------------------------------- through the command line


def test_a_resumed_run_shows_the_lr_it_goes_on_with(
    write_config: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    scheduler = "    scheduler: {name: StepLR, step_size: 1, gamma: 0.1}\n"
    path = write_config(TINY_MLP_CONFIG + scheduler)
    assert run_cli("fit", path, "trainer.epochs=1").exit_code == 0
    result = run_cli("fit", path, "--resume", "auto")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "│ default" in line)
    assert "0.01" in row and "0.1 " not in row  # the checkpoint's lr, not the config's 0.1


def test_a_mid_epoch_resume_logs_each_step_and_epoch_once(
    write_config: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    path = write_config(TINY_MLP_CONFIG.replace("log_every: 2", "log_every: 1"))
    assert run_cli("fit", path, "trainer.max_steps=8").exit_code == 0  # stops in epoch 2
    assert run_cli("fit", path, "--resume", "auto").exit_code == 0
    records = read_metrics(tmp_path / "runs" / "tiny" / "metrics.jsonl")
    steps = [r["step"] for r in records if "val/loss" not in r]
    epochs = [r["epoch"] for r in records if "val/loss" in r]
    assert steps == list(range(1, 13))
    assert epochs == [1, 2]
