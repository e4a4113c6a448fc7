"""A model without batch norm or dropout, so one process with batch 2B equals two with B."""

import os
import signal
from typing import Any

from torch import nn


def tanh_mlp(num_classes: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, num_classes)
    )


def tanh_mlp_signalling_launcher(num_classes: int = 4, *, signal_name: str, at: int) -> nn.Module:
    """`tanh_mlp` whose rank 0 sends its parent (the `--nproc` launcher) `signal_name` at its
    `at`-th training forward, as a user's Ctrl-C or `kill` reaches the launcher."""
    model, forwards = tanh_mlp(num_classes), 0

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal forwards
        if module.training and os.environ.get("RANK") == "0":
            forwards += 1
            if forwards == at:
                os.kill(os.getppid(), signal.Signals[signal_name])

    model.register_forward_hook(hook)
    return model


def tanh_mlp_troubled_rank(
    num_classes: int = 4, *, rank: str, nan_at: int, stop_at: int
) -> nn.Module:
    """`tanh_mlp` whose rank `rank` alone gives NaN outputs at its `nan_at`-th training forward
    and sends itself SIGTERM at its `stop_at`-th: troubles only one rank sees."""
    model, forwards = tanh_mlp(num_classes), 0

    def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
        nonlocal forwards
        if not module.training or os.environ.get("RANK") != rank:
            return None
        forwards += 1
        if forwards == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return output * float("nan") if forwards == nan_at else None

    model.register_forward_hook(hook)
    return model
