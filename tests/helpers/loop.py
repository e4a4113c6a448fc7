"""Importable callables for the loop and scheduler tests (`model.name: "helpers.loop:tiny"`), and
the warmup schedule built by hand.

The models have no BatchNorm and no dropout, so a training step is a pure function of the
weights and the batch, and a hand-written loop in a test can reproduce the runner exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler


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


class _InfGrad(torch.autograd.Function):
    """The identity forward; its backward turns every gradient into inf."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("inf")


def tiny_inf_grad_at(forward: int, num_classes: int = 4, image_size: int = 8) -> nn.Module:
    """`tiny` whose `forward`-th training forward has a finite loss and inf gradients, once."""
    model, calls = tiny(num_classes, image_size), 0

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        nonlocal calls
        if not module.training:
            return None
        calls += 1
        return _InfGrad.apply(output) if calls == forward else None

    model.register_forward_hook(hook)
    return model


class NanBufferAt(nn.Module):
    """`tiny` with a buffer its `forward`-th training forward sets to NaN while the output
    stays finite (as a norm layer's running statistics can go)."""

    def __init__(self, forward: int, num_classes: int = 4, image_size: int = 8) -> None:
        super().__init__()
        self.net = tiny(num_classes, image_size)
        self.register_buffer("seen", torch.zeros(()))
        self.forward_at, self.calls = forward, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.forward_at:
                self.seen.fill_(float("nan"))
        return self.net(x)


def bn_net(num_classes: int = 4, image_size: int = 8) -> nn.Sequential:
    """Two conv → BatchNorm → ReLU blocks and a linear head (for freezing norm layers)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * image_size * image_size, num_classes),
    )


def tiny_terminated_while_building(num_classes: int = 4, image_size: int = 8) -> nn.Sequential:
    """`tiny`, whose building sends its own process SIGTERM (a stop during start-up)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGTERM)
    return tiny(num_classes, image_size)


def sequential(warmup: int, start_factor: float, main: Callable[..., Any]) -> Callable[..., Any]:
    """What `warmup:` must build: LinearLR for `warmup` steps (or epochs), then `main`."""

    def build(opt: torch.optim.Optimizer) -> lr_scheduler.SequentialLR:
        linear = lr_scheduler.LinearLR(opt, start_factor=start_factor, total_iters=warmup)
        return lr_scheduler.SequentialLR(opt, [linear, main(opt)], milestones=[warmup])

    return build
