"""A monitor (checkpoint.monitor, early stopping, a plateau scheduler) names a metric the run
logs: a typo is found before training where the steps say what they log, after the first epoch
where a custom step does not; regression targets log no val/acc, so a val/acc monitor is refused."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.configs import TINY_MLP_CONFIG

from trainer.runs.metrics_file import read_metrics

ROOT = Path(__file__).resolve().parent.parent


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
                "val/acc, val/perplexity)"
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
    path = write_config(TINY_MLP_CONFIG) if config == "tiny" else ROOT / "configs" / "gan.yaml"
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
