"""Validation runs the model in eval mode: with BatchNorm, val metrics are those of
model.eval() on the saved weights (running statistics, not the batch's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.loop import bn_net
from torch import nn
from torch.utils.data import DataLoader

from trainer.components.datasets import shapes
from trainer.runs.metrics_file import read_metrics

CONFIG = """
    name: bn
    seed: 0
    model: {name: "helpers.loop:bn_net"}
    data: {name: shapes, size: 64, image_size: 8, batch_size: 16}
    optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
    trainer: {epochs: 1, device: cpu}
"""
VAL_STEP = """
def loss_and_acc(batch, model, ctx):
    inputs, targets = batch
    outputs = model(inputs)
    correct = (outputs.argmax(1) == targets).float()
    return {"loss": ctx.loss_fn(outputs, targets), "acc": correct.mean()}
"""


@torch.no_grad()
def eval_mode_metrics(weights: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(val/loss, val/acc) of `bn_net` with `weights` in eval mode, by hand."""
    model = bn_net()
    model.load_state_dict(weights)
    model.eval()
    loss_fn, loss, correct = nn.CrossEntropyLoss(), 0.0, 0
    loader = DataLoader(shapes(False, size=64, image_size=8), batch_size=16)
    for inputs, targets in loader:
        outputs = model(inputs)
        loss += float(loss_fn(outputs, targets)) * len(targets)
        correct += int((outputs.argmax(1) == targets).sum())
    return loss / len(loader.dataset), correct / len(loader.dataset)


@pytest.mark.parametrize("val_step", [False, True], ids=["supervised", "val_step"])
def test_validation_is_in_eval_mode(
    val_step: bool, write_config: Callable[..., Path], run_cli: Callable, tmp_path: Path
) -> None:
    text = CONFIG
    if val_step:
        (tmp_path / "valsteps.py").write_text(VAL_STEP, encoding="utf-8")
        text += "    val_step: {name: 'valsteps:loss_and_acc'}\n"
    result = run_cli("fit", write_config(text))
    assert result.exit_code == 0, result.output

    run_dir = tmp_path / "runs" / "bn"
    weights = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    (record,) = [r for r in read_metrics(run_dir / "metrics.jsonl") if "val/loss" in r]
    loss, acc = eval_mode_metrics(weights)
    assert record["val/loss"] == pytest.approx(loss, rel=1e-6)
    assert record["val/acc"] == pytest.approx(acc, abs=1e-9)
