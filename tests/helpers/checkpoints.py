"""A small, valid trainer checkpoint made by hand, for tests that break one key at a time."""

from __future__ import annotations

from typing import Any

import torch

from trainer.state.checkpoint import rng_state


def valid_checkpoint() -> dict[str, Any]:
    """Every key a checkpoint has, each of the right type (one optimizer, after one step)."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizers": {"optimizer": optimizer.state_dict()},
        "schedulers": {"optimizer": None},
        "scalers": {"optimizer": {}},
        "updates": {"optimizer": 2},
        "groups": {"optimizer": {"default": ["weight", "bias"]}},
        "epoch": 1,
        "step": 2,
        "batch_in_epoch": 0,
        "samples_in_epoch": 0,
        "epoch_sums": {"loss": 0.5},
        "epoch_counted": 2,
        "rng": rng_state(),
        "rng_per_rank": [rng_state()],
        "config": {"name": "tiny"},
        "metrics": {"epoch": 1, "val/loss": 0.5},
        "best": {"monitor": "val/loss", "mode": "min", "value": 0.5, "epoch": 1},
        "early_stopping": None,
        "ema": None,
    }


def several_optimizers(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The same checkpoint with two optimizers (states keyed by optimizer name)."""
    state = checkpoint["optimizers"]["optimizer"]
    return checkpoint | {
        "optimizers": {"generator": state, "discriminator": state},
        "schedulers": {"generator": None, "discriminator": None},
        "scalers": {"generator": {}, "discriminator": {}},
        "updates": {"generator": 2, "discriminator": 2},
        "groups": {"generator": {"default": ["weight"]}, "discriminator": {"default": ["bias"]}},
    }


def one_optimizer_layout(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A one-optimizer checkpoint as trainer wrote it before states were keyed by name:
    `optimizer`, `scheduler`, `scaler`, a flat `groups`, and `epoch_loss` beside the sums."""
    old = dict(checkpoint)
    for key in ("optimizer", "scheduler", "scaler"):
        old[key] = old.pop(key + "s")["optimizer"]
    old["groups"] = old["groups"]["optimizer"]
    old["epoch_loss"] = old["epoch_sums"].get("loss", 0.0)
    return old
