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
        "optimizer": optimizer.state_dict(),
        "scheduler": None,
        "scaler": {},
        "epoch": 1,
        "step": 2,
        "batch_in_epoch": 0,
        "samples_in_epoch": 0,
        "epoch_sums": {"loss": 0.5},
        "epoch_counted": 2,
        "rng": rng_state(),
        "rng_per_rank": None,
        "config": {"name": "tiny"},
        "groups": {"default": ["weight", "bias"]},
        "metrics": {"epoch": 1, "val/loss": 0.5},
        "best": {"monitor": "val/loss", "mode": "min", "value": 0.5, "epoch": 1},
        "early_stopping": None,
    }


def several_optimizers(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The same checkpoint in the several-optimizer form (states keyed by optimizer name)."""
    state = checkpoint["optimizer"]
    return checkpoint | {
        "optimizer": None,
        "scheduler": None,
        "scaler": None,
        "optimizers": {"generator": state, "discriminator": state},
        "schedulers": {"generator": None, "discriminator": None},
        "scalers": {"generator": {}, "discriminator": {}},
        "groups": {"generator": {"default": ["weight"]}, "discriminator": {"default": ["bias"]}},
    }
