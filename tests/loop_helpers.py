"""Importable callables for the loop and scheduler tests (`model.name: "loop_helpers:tiny"`).

The models have no BatchNorm and no dropout, so a training step is a pure function of the
weights and the batch, and a hand-written loop in a test can reproduce the runner exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def tiny(num_classes: int = 4, image_size: int = 8) -> nn.Sequential:
    """Flatten → Linear → Tanh → Linear, for 3-channel images of `image_size`."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(3 * image_size * image_size, 16),
        nn.Tanh(),
        nn.Linear(16, num_classes),
    )


def tiny_conv(num_classes: int = 4, image_size: int = 8) -> nn.Sequential:
    """A 3x3 convolution in front of a linear head: channels_last changes its memory layout."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * image_size * image_size, num_classes),
    )


def nan_at(model: nn.Module, forward: int) -> nn.Module:
    """Make the `forward`-th training forward of `model` (counted from 1) return NaN outputs."""
    calls = 0

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        nonlocal calls
        if not module.training:
            return None
        calls += 1
        return output * float("nan") if calls == forward else None

    model.register_forward_hook(hook)
    return model


def tiny_nan_at(forward: int, num_classes: int = 4, image_size: int = 8) -> nn.Module:
    """`tiny` whose `forward`-th training forward gives NaN outputs (so a NaN loss), once."""
    return nan_at(tiny(num_classes, image_size), forward)


def tiny_terminated_while_building(num_classes: int = 4, image_size: int = 8) -> nn.Sequential:
    """`tiny`, whose building sends its own process SIGTERM (a stop during start-up)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGTERM)
    return tiny(num_classes, image_size)
