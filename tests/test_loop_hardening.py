"""Loop-side hardening: diverged runs with skip_nonfinite, option values torch checks only
on its defaults, the lr a resumed run shows, metrics.jsonl after a mid-epoch resume, and
regression targets (no val/acc, and a val/acc monitor refused), monitor typos found before
training where the steps say what they log."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trainer.runs.rundir import read_metrics

ROOT = Path(__file__).resolve().parent.parent

TINY = """
    name: tiny
    seed: 0
    model: {name: "helpers.loop:tiny"}
    data: {name: shapes, size: 96, image_size: 8, batch_size: 16}
    optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
    trainer: {epochs: 2, device: cpu, log_every: 2}
"""


DIVERGES = """
import torch
from torch import nn


class Diverges(nn.Module):
    \"\"\"A linear classifier whose training outputs are NaN from its `after`-th forward on.\"\"\"

    def __init__(self, after: int = 3) -> None:
        super().__init__()
        self.linear, self.after, self.calls = nn.Linear(192, 4), after, 0

    def forward(self, x):
        out = self.linear(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out
"""


def test_a_diverged_run_with_skip_nonfinite_logs_skips_and_stops(
    write_config: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    (tmp_path / "diverging.py").write_text(DIVERGES, encoding="utf-8")
    path = write_config(TINY.replace('"helpers.loop:tiny"', '"diverging:Diverges"'))
    result = run_cli(
        "fit", path, "trainer.skip_nonfinite=true", "trainer.max_consecutive_skips=3",
        "trainer.log_every=1",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "batches in a row had a non-finite loss" in result.stderr
    assert "trainer.max_consecutive_skips=3" in result.stderr
    records = read_metrics(tmp_path / "runs" / "tiny" / "metrics.jsonl")
    assert all("train/skipped" in r for r in records)
    assert any(r["train/skipped"] > 0 for r in records)
    # A window whose every batch was skipped has no loss: never a loss of 0.
    assert all(r.get("train/loss") != 0 for r in records)
    assert any("train/loss" not in r for r in records if r["train/skipped"])


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        (
            "param_groups.rules=[{name: head, match: '^3', betas: [1.5, 0.9]}]",
            "param_groups.rules.0.betas: [1.5, 0.9] is out of range (allowed: two numbers in "
            "[0, 1))",
        ),
        ("optimizer.nesterov=true", "optimizer: SGD rejected its arguments"),
        (
            "param_groups.rules=[{name: head, match: '^3', nesterov: true, dampening: 0.5}]",
            "param_groups.rules.0: SGD rejects group 'head'",
        ),
        ("loss.reduction=bogus", "loss.reduction: 'bogus' is not a reduction of CrossEntropyLoss"),
    ],
    ids=["betas", "nesterov-without-momentum", "nesterov-with-dampening", "reduction"],
)
def test_option_values_are_checked_before_the_run_directory_exists(
    write_config: Callable[..., Path],
    user_error: Callable[..., str],
    tmp_path: Path,
    override,
    expect,
) -> None:
    text = TINY
    if "betas" in override:
        text = TINY.replace("{name: SGD, lr: 0.1, momentum: 0.9}", "{name: Adam, lr: 0.001}")
    if "nesterov=true" in override:
        text = TINY.replace(", momentum: 0.9}", "}")
    user_error("fit", write_config(text), override, expect=[expect])
    assert not (tmp_path / "runs").exists()


def test_a_resumed_run_shows_the_lr_it_goes_on_with(
    write_config: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    path = write_config(TINY + "    scheduler: {name: StepLR, step_size: 1, gamma: 0.1}\n")
    assert run_cli("fit", path, "trainer.epochs=1").exit_code == 0
    result = run_cli("fit", path, "--resume", "auto")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "│ default" in line)
    assert "0.01" in row and "0.1 " not in row  # the checkpoint's lr, not the config's 0.1


def test_a_mid_epoch_resume_logs_each_step_and_epoch_once(
    write_config: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    path = write_config(TINY.replace("log_every: 2", "log_every: 1"))
    assert run_cli("fit", path, "trainer.max_steps=8").exit_code == 0  # stops in epoch 2
    assert run_cli("fit", path, "--resume", "auto").exit_code == 0
    records = read_metrics(tmp_path / "runs" / "tiny" / "metrics.jsonl")
    steps = [r["step"] for r in records if "val/loss" not in r]
    epochs = [r["epoch"] for r in records if "val/loss" in r]
    assert steps == list(range(1, 13))
    assert epochs == [1, 2]


REGRESSION = """
import torch
from torch.utils.data import TensorDataset


def points(train=True):
    generator = torch.Generator().manual_seed(0 if train else 1)
    inputs = torch.randn(64, 4, generator=generator)
    # Float targets of whole numbers: argmax of a (N, 1) output would "match" them.
    return TensorDataset(inputs, (inputs[:, 0] > 0).float() * 0)


def line():
    return torch.nn.Linear(4, 1)
"""


def test_regression_targets_log_no_accuracy_and_refuse_an_accuracy_monitor(
    write_config: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    (tmp_path / "regression.py").write_text(textwrap.dedent(REGRESSION), encoding="utf-8")
    config = """
        name: line
        model: {name: "regression:line"}
        data: {name: "regression:points", batch_size: 16}
        loss: {name: HuberLoss}
        optimizer: {name: SGD, lr: 0.01}
        trainer: {epochs: 1, device: cpu}
    """
    path = write_config(config)
    result = run_cli("fit", path)
    assert result.exit_code == 0, result.output
    record = read_metrics(tmp_path / "runs" / "line" / "metrics.jsonl")[-1]
    assert "val/loss" in record
    assert "val/acc" not in record  # targets are floats: no accuracy, even when argmax fits

    refused = run_cli("fit", path, "checkpoint.monitor=val/acc")
    assert refused.exit_code == 2
    assert "checkpoint.monitor: 'val/acc' is not logged by this run" in refused.stderr


@pytest.mark.parametrize(
    ("config", "overrides", "expect"),
    [
        (
            "tiny",
            ["checkpoint.monitor=train/lss"],
            [
                "checkpoint.monitor: 'train/lss' is not logged by this run; did you mean "
                "'train/loss'? (its epoch metrics: train/loss, train/samples_per_s, val/loss, "
                "val/acc)"
            ],
        ),
        (
            "gan",
            ["checkpoint.monitor=val/modes_covred", "trainer.early_stopping.monitor=train/g_los"],
            [
                "checkpoint.monitor: 'val/modes_covred' is not logged by this run; did you mean "
                "'val/modes_covered'? (its epoch metrics: train/d_loss, train/g_loss, "
                "train/samples_per_s, val/modes_covered, val/mode_distance, val/close)",
                "trainer.early_stopping.monitor: 'train/g_los' is not logged by this run; did "
                "you mean 'train/g_loss'?",
            ],
        ),
    ],
    ids=["supervised", "gan-and-its-val-step"],
)
def test_a_monitor_typo_is_found_before_training_where_the_steps_say_what_they_log(
    write_config: Callable[..., Path],
    user_error: Callable[..., str],
    tmp_path: Path,
    config: str,
    overrides: list[str],
    expect: list[str],
) -> None:
    path = write_config(TINY) if config == "tiny" else ROOT / "configs" / "gan.yaml"
    stderr = user_error("fit", path, *overrides, "trainer.out_dir=runs/x", expect=expect)
    assert stderr.count("error: ") == len(expect)
    assert not (tmp_path / "runs").exists()


PLAIN_STEP = """
import torch.nn.functional as F


def plain(batch, model, optimizers, ctx):
    inputs, targets = batch
    loss = F.cross_entropy(model(inputs), targets)
    optimizers.update(loss)
    return {"loss": loss}
"""

CUSTOM_STEP = """
    name: custom
    model: {name: "helpers.loop:tiny"}
    data: {name: shapes, size: 32, image_size: 8, batch_size: 16}
    step: {name: "STEP_MODULE:plain"}
    trainer: {epochs: 2, device: cpu}
    checkpoint: {monitor: train/los}
"""
PLATEAU = "{name: ReduceLROnPlateau, monitor: train/lss}"


@pytest.mark.parametrize(
    ("optimizers", "key"),
    [
        (f"optimizer: {{name: SGD, lr: 0.1}}\nscheduler: {PLATEAU}", "scheduler.monitor"),
        (
            f"optimizers:\n  all: {{params: '.', optimizer: {{name: SGD}}, scheduler: {PLATEAU}}}",
            "optimizers.all.scheduler.monitor",
        ),
    ],
    ids=["one-optimizer", "optimizers"],
)
def test_a_plateau_monitor_typo_of_a_custom_step_is_found_with_the_others_after_an_epoch(
    write_config: Callable[..., Path],
    user_error: Callable[..., str],
    tmp_path: Path,
    optimizers: str,
    key: str,
) -> None:
    name = "all" if key.startswith("optimizers.") else "optimizer"
    module = f"plain_step_{name}"  # one module per case: an imported one stays in sys.modules
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(PLAIN_STEP), encoding="utf-8")
    path = write_config(textwrap.dedent(CUSTOM_STEP).replace("STEP_MODULE", module) + optimizers)
    logged = "(its epoch metrics: train/loss, updates/{}, train/samples_per_s)"
    expect = [
        f"checkpoint.monitor: 'train/los' is not logged by this run {logged.format(name)}",
        f"{key}: 'train/lss' is not logged by this run {logged.format(name)}",
    ]
    stderr = user_error("fit", path, expect=expect)
    assert stderr.count("error: ") == len(expect)
    assert len(read_metrics(tmp_path / "runs" / "custom" / "metrics.jsonl")) == 0


def test_a_plateau_monitor_typo_is_found_before_training_where_the_steps_say_what_they_log(
    user_error: Callable[..., str], tmp_path: Path
) -> None:
    expect = [
        "optimizers.generator.scheduler.monitor: 'train/g_los' is not logged by this run; did "
        "you mean 'train/g_loss'? (its epoch metrics: train/d_loss, train/g_loss, "
        "train/samples_per_s, val/modes_covered, val/mode_distance, val/close)",
    ]
    plateau = "{name: ReduceLROnPlateau, monitor: train/g_los}"
    stderr = user_error(
        "fit",
        ROOT / "configs" / "gan.yaml",
        f"optimizers.generator.scheduler={plateau}",
        "trainer.out_dir=runs/x",
        expect=expect,
    )
    assert stderr.count("error: ") == len(expect)
    assert not (tmp_path / "runs").exists()
