"""The supervised step with several optimizers (`optimizers:`) against the same loop written
by hand: accumulation over a window, and each optimizer's own clip_grad_norm.

`helpers.loop:tiny` (no BatchNorm, no dropout) trains from saved initial weights on 96 shapes
of 8x8 in batches of 16 (6 batches an epoch) in a fixed order; `body` (its first linear
layer) and `head` (its last) each have an SGD with momentum, which, unlike Adam, sees a loss
scaled by a constant. The weights must be the same bit for bit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.loop import tiny
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from trainer.components import registry
from trainer.config import load_config
from trainer.engine.loop import FitResult, fit
from trainer.runs.metrics_file import read_metrics

EPOCHS, BATCHES, BATCH_SIZE = 2, 6, 16
LRS = {"body": 0.1, "head": 0.05}
LAYERS = {"body": 1, "head": 3}  # index in `tiny`

CONFIG = r"""
name: several
seed: 0
model: {{name: "helpers.loop:tiny", init_from: "{initial}"}}
data: {{name: shapes, size: 96, image_size: 8, batch_size: 16, shuffle: false}}
optimizers:
  body:
    params: '^1\.'
    optimizer: {{name: SGD, lr: 0.1, momentum: 0.9}}
  head:
    params: '^3\.'
    optimizer: {{name: SGD, lr: 0.05, momentum: 0.9}}
trainer: {{epochs: 2, device: cpu, log_every: 1, out_dir: "{runs}"}}
"""


@pytest.fixture
def train(tmp_path: Path, initial: Path) -> Callable[..., FitResult]:
    """`train(*overrides)`: an in-process `fit` of CONFIG."""

    def run(*overrides: str) -> FitResult:
        path = tmp_path / "several.yaml"
        path.write_text(CONFIG.format(initial=initial, runs=tmp_path / "runs"), encoding="utf-8")
        return fit(load_config(path, list(overrides)), console=Console(file=io.StringIO()))

    return run


def hand_train(
    initial: Path, *, accumulate: int = 1, clip: dict[str, float] | None = None
) -> tuple[nn.Module, dict[str, list[float]]]:
    """Each window: zero_grad, the loss divided by the window's length, backward once, then
    per optimizer (clip its tensors), step. Returns the model and each one's pre-clip norms."""
    model = tiny()
    model.load_state_dict(torch.load(initial, weights_only=True))
    params = {name: list(model[index].parameters()) for name, index in LAYERS.items()}
    optimizers = {
        name: torch.optim.SGD(params[name], lr=LRS[name], momentum=0.9) for name in LAYERS
    }
    shapes = registry.resolve("datasets", "shapes", key="data.name")
    loader = DataLoader(shapes(True, size=96, image_size=8), batch_size=BATCH_SIZE)
    loss_fn, norms = nn.CrossEntropyLoss(), {name: [] for name in LAYERS}
    for _ in range(EPOCHS):
        for batch, (inputs, targets) in enumerate(loader):
            window_start = batch - batch % accumulate
            window = min(accumulate, BATCHES - window_start)
            if batch == window_start:
                for optimizer in optimizers.values():
                    optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets)
            (loss / window if window > 1 else loss).backward()
            if batch + 1 < window_start + window:
                continue
            for name, optimizer in optimizers.items():
                if clip is not None:
                    norms[name].append(float(nn.utils.clip_grad_norm_(params[name], clip[name])))
                optimizer.step()
    return model, norms


def assert_same_weights(result: FitResult, model: nn.Module) -> None:
    saved = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert saved.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved[name], tensor), f"{name} differs"


@pytest.mark.parametrize("accumulate", [2, 4])  # 4: a window of 4, then a trailing one of 2
def test_accumulation_with_several_optimizers_equals_the_hand_loop(
    accumulate: int, train: Callable[..., FitResult], initial: Path
) -> None:
    result = train(f"trainer.accumulate={accumulate}")
    model, _ = hand_train(initial, accumulate=accumulate)
    assert result.step == EPOCHS * math.ceil(BATCHES / accumulate)
    assert_same_weights(result, model)


def test_an_optimizers_own_clip_grad_norm_wins_over_the_trainers(
    train: Callable[..., FitResult], initial: Path
) -> None:
    result = train("trainer.clip_grad_norm=0.0001", "optimizers.head.clip_grad_norm=0.05")
    model, norms = hand_train(initial, clip={"body": 0.0001, "head": 0.05})
    assert min(norms["head"]) > 0.05, "the test needs the head's clip to act"
    assert_same_weights(result, model)
    logged = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "val/loss" not in r]
    for name in LAYERS:  # train/grad_norm/<optimizer>: the norm before clipping
        assert [r[f"train/grad_norm/{name}"] for r in logged] == pytest.approx(
            norms[name], rel=1e-6
        )
