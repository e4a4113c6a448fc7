"""Shared by the resume tests: importable model and dataset callables that stop a run, a config,
and helpers to train in-process and compare what two runs left on disk."""

from __future__ import annotations

import io
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

from trainer.components.datasets import Shapes, shapes
from trainer.config import load_config
from trainer.engine.loop import FitResult, fit
from trainer.errors import Interrupted
from trainer.runs.metrics_file import is_epoch_record, read_metrics

# 300 samples in batches of 32: 10 batches (9 full, one of 12) per epoch; dropout in the model
# and shuffled batches, so an exact resume needs the RNG state and the epoch's order back.
# `runs/r` is relative: tests run inside their tmp_path, so copied runs keep the same config.
CONFIG = textwrap.dedent(
    """
    name: r
    seed: 0
    model: {name: "helpers.resume:mlp"}
    data: {name: shapes, size: 300, image_size: 16, batch_size: 32}
    optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
    param_groups:
      rules:
        - {name: head, match: '^4\\.', lr_mult: 2}
    scheduler: {name: StepLR, step_size: 1, gamma: 0.5}
    trainer: {epochs: 4, device: cpu, log_every: 5, out_dir: runs/r}
    """
).lstrip()


class Once:
    """The one stop a test asks for; reset before each test (a resumed run must not stop again)."""

    fired = False


def _send_once(signal_name: str) -> None:
    if not Once.fired:
        Once.fired = True
        os.kill(os.getpid(), signal.Signals[signal_name])


def _pause() -> None:
    Path("paused").touch()
    deadline = time.monotonic() + 60
    while not Path("go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def mlp(
    num_classes: int = 4,
    *,
    stop_after: int | None = None,
    stop_signal: str = "SIGTERM",
    pause_after: int | None = None,
) -> nn.Sequential:
    """An MLP with dropout. Optional, after the N-th training forward of a process, once:
    `stop_after` signals the (main) process itself; `pause_after` creates the file `paused`
    in the working directory and waits (up to 60 s) for a file `go`, so that a test can
    signal a `trainer fit` subprocess at a known step."""
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(3 * 16 * 16, 32),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(32, num_classes),
    )
    forwards = 0

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal forwards
        if not module.training:
            return
        forwards += 1
        if forwards == stop_after:
            _send_once(stop_signal)
        if forwards == pause_after:
            _pause()

    if stop_after is not None or pause_after is not None:
        model.register_forward_hook(hook)
    return model


class SignallingShapes(Shapes):
    """`shapes` that sends SIGTERM to its own process when the `at`-th sample is fetched, once."""

    def __init__(self, base: Shapes, *, at: int) -> None:
        super().__init__(base.images, base.targets, base.classes)
        self.at, self.calls = at, 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.calls == self.at:
            _send_once("SIGTERM")
        self.calls += 1
        return super().__getitem__(index)


def signalling_shapes(train: bool = True, *, at: int | None = None, **kwargs: Any) -> Shapes:
    """The training split stops the run at sample `at` (counted over the whole run)."""
    base = shapes(train, **kwargs)
    return SignallingShapes(base, at=at) if train and at is not None else base


def write_config(directory: Path, text: str = CONFIG) -> Path:
    """`cfg.yaml` in `directory`."""
    path = directory / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def train(
    config: Path, *overrides: str, resume: str | None = None, reset_optimizer: bool = False
) -> tuple[FitResult | Interrupted, str]:
    """(result, or the Interrupted it raised; what it printed), run in-process."""
    output = io.StringIO()
    try:
        result: FitResult | Interrupted = fit(
            load_config(config, list(overrides)),
            resume=resume,
            reset_optimizer=reset_optimizer,
            console=Console(file=output, width=200),
        )
    except Interrupted as stopped:
        result = stopped
    return result, output.getvalue()


def run_in(directory: Path, *overrides: str) -> Path:
    """A fresh run of the test config inside `directory`; returns its absolute run dir."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)
        result, _ = train(write_config(directory), *overrides)
    assert isinstance(result, FitResult)
    return directory / result.run_dir


def load(path: Path) -> dict[str, Any]:
    """A checkpoint, loaded the way the design promises it loads."""
    return torch.load(path, map_location="cpu", weights_only=True)


def epoch_records(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of metrics.jsonl."""
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if is_epoch_record(r)]


def step_lrs(step_size: int, epochs: int, *, lr: float, gamma: float = 0.5) -> list[float]:
    """The lr a fresh StepLR gives in epochs 1..epochs."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def assert_same_training_state(resumed: dict[str, Any], straight: dict[str, Any]) -> None:
    """Bit for bit the same weights, optimizer state (momentum), lrs, position, best, torch RNG."""
    assert resumed["model"].keys() == straight["model"].keys()
    for key, tensor in straight["model"].items():
        assert torch.equal(resumed["model"][key], tensor), f"model weight {key} differs"
    optimizers = resumed["optimizers"]["optimizer"], straight["optimizers"]["optimizer"]
    states = optimizers[0]["state"], optimizers[1]["state"]
    assert states[0].keys() == states[1].keys()
    assert states[1], "the optimizer has no state to compare"
    for index, state in states[1].items():
        assert states[0][index].keys() == state.keys()
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(states[0][index][name]), torch.as_tensor(value)), (
                f"optimizer state {name} of param {index} differs"
            )
    for ours, theirs in zip(
        optimizers[0]["param_groups"], optimizers[1]["param_groups"], strict=True
    ):
        assert (ours["name"], ours["lr"], ours["params"]) == (
            theirs["name"],
            theirs["lr"],
            theirs["params"],
        )
    for key in ("last_epoch", "_last_lr", "base_lrs"):
        assert (
            resumed["schedulers"]["optimizer"][key] == straight["schedulers"]["optimizer"][key]
        ), f"scheduler {key}"
    for key in ("epoch", "step", "batch_in_epoch"):
        assert resumed[key] == straight[key], key
    assert resumed["best"] == straight["best"]
    assert torch.equal(resumed["rng"]["torch"], straight["rng"]["torch"])
