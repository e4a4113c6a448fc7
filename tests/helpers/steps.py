"""Importable steps and models for the step tests (`step.name: "helpers.steps:..."`)."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
from torch import nn

from trainer.engine.steps import gan


def gan_stopped_at(batch: Any, model: Any, optimizers: Any, ctx: Any, *, at: int) -> dict:
    """The built-in gan step that sends its own process SIGTERM before global step `at`."""
    if ctx.step == at:
        os.kill(os.getpid(), signal.SIGTERM)
    return gan(batch, model, optimizers, ctx)


def quadratic(batch: Any, model: Any, optimizers: Any, ctx: Any) -> dict:
    """Minimise |x - 3|^2 + |c + 1|^2 over the model's plain tensors x and c."""
    tensors = model()
    loss = (tensors["x"] - 3).pow(2).sum() + (tensors["c"] + 1).pow(2).sum()
    optimizers.update(loss)
    return {"loss": loss}


def two_tensors() -> dict[str, torch.Tensor]:
    """Plain tensors x and c, as the seeds optimise them."""
    return {"x": torch.zeros(3), "c": torch.ones(2)}


def wrong_name(batch: Any, model: Any, optimizers: Any, ctx: Any) -> dict:
    """A step asking for an optimizer the config does not have."""
    optimizers["critic"].update(model(batch[0]).sum())
    return {}


class StudentTeacher(nn.Module):
    """A small student and a larger teacher, both MLPs on flattened 8x8 images."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.student = nn.Sequential(
            nn.Flatten(), nn.Linear(192, 8), nn.Tanh(), nn.Linear(8, num_classes)
        )
        self.teacher = nn.Sequential(
            nn.Flatten(), nn.Linear(192, 32), nn.Tanh(), nn.Linear(32, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def critic_first(
    batch: Any, model: Any, optimizers: Any, ctx: Any, *, critic_updates: int = 3
) -> dict:
    """A WGAN-style step: `critic_updates` discriminator updates, then one generator update."""
    real = batch[0] if isinstance(batch, (list, tuple)) else batch
    for _ in range(critic_updates):
        noise = torch.randn(real.shape[0], model.latent, generator=ctx.generator)
        fake = model.generator(noise).detach()
        d_loss = model.discriminator(fake).mean() - model.discriminator(real).mean()
        optimizers["discriminator"].update(d_loss)
    noise = torch.randn(real.shape[0], model.latent, generator=ctx.generator)
    g_loss = -model.discriminator(model.generator(noise)).mean()
    optimizers["generator"].update(g_loss)
    return {"d_loss": d_loss, "g_loss": g_loss}
