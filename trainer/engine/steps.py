"""Training steps: `supervised`, `gan`, `distill`, and the contract a user's step follows.

A step is `step(batch, model, optimizers, ctx, **options) -> Metrics` (the `Step` protocol
once its options are bound; `ValStep` for a val_step):

- `batch`: what the training loader yields, already on the device (`(inputs, targets)` for
  the usual datasets);
- `model`: the configured model (DDP-wrapped for `supervised` under torchrun);
- `optimizers`: the handles by optimizer name (`optimizers["generator"]`); each has
  `update(loss)`, which owns backward, accumulation, AMP scaling, clipping, the optimizer step,
  zero_grad and the per-step scheduler; `optimizers.update(loss)` updates all of them;
- `ctx`: a StepContext (device, epoch, global step, the configured loss, autocast, a seeded
  generator for noise);
- `options`: the other keys of the config's `step:` section.

It returns the metrics to log as `train/<key>`: tensors (or numbers), averaged on the device
over each log window and epoch, read back only when logged. A `val_step(batch, model, ctx,
**options)` returns metrics the same way, averaged over the validation set into `val/<key>`.
A step that declares its keys (`step.logs = ("loss",)`) has its monitors checked before
training, with a "did you mean"; others after the first epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from trainer.engine.device import Batch, autocast
from trainer.engine.handles import Optimizers

if TYPE_CHECKING:
    from trainer.config import Config

Metrics = Mapping[str, torch.Tensor | float]  # what a step returns, by key


class Step(Protocol):
    """A training step with its options bound: one batch in, its metrics out."""

    def __call__(
        self, batch: Batch, model: nn.Module, optimizers: Optimizers, ctx: StepContext, /
    ) -> Metrics: ...


class ValStep(Protocol):
    """A validation step with its options bound: one batch in, its metrics out."""

    def __call__(self, batch: Batch, model: nn.Module, ctx: StepContext, /) -> Metrics: ...


class GanParts(Protocol):
    """What the GAN steps need of the model."""

    generator: nn.Module
    discriminator: nn.Module
    latent: int  # the generator's noise size


class DistillParts(Protocol):
    """What the distillation step needs of the model."""

    student: nn.Module
    teacher: nn.Module


StepFunction = TypeVar("StepFunction", bound=Callable[..., Metrics])


def declares(
    *logs: str, needs_optimizers: tuple[str, ...] = ()
) -> Callable[[StepFunction], StepFunction]:
    """Mark a built-in step with the keys it logs and the optimizers it needs (what a user's
    step declares with `step.logs = (...)`), checked before anything is built."""

    def mark(step: StepFunction) -> StepFunction:
        step.__dict__["logs"] = logs
        if needs_optimizers:
            step.__dict__["needs_optimizers"] = needs_optimizers
        return step

    return mark


@dataclass
class StepContext:
    """What a step may need besides the batch, the model and the optimizers."""

    device: torch.device
    precision: str = "fp32"
    loss_fn: torch.nn.Module | None = None
    seed: int = 0
    rank: int = 0
    epoch: int = 0  # the epoch being trained, from 1
    batch: int = 0  # the batch's index in its epoch
    step: int = 0  # training steps taken before this batch (the global step)
    _generator: torch.Generator | None = field(default=None, repr=False)
    _seeded_for: tuple[int, int] | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls,
        config: Config,
        device: torch.device,
        loss_fn: torch.nn.Module,
        *,
        epoch: int,
        rank: int = 0,
    ) -> StepContext:
        """What a run's step (or val_step) gets in `epoch`, in fit, lr-find and eval alike:
        the device, the config's precision and seed, the loss."""
        return cls(
            device=device, precision=config.trainer.precision, loss_fn=loss_fn,
            seed=config.seed, rank=rank, epoch=epoch,
        )  # fmt: skip

    def autocast(self) -> AbstractContextManager:
        """The forward pass's autocast context for trainer.precision (a no-op for fp32)."""
        return autocast(self.precision, self.device)

    @property
    def generator(self) -> torch.Generator:
        """A generator on the device seeded from (seed, rank, epoch, batch): noise drawn from
        it is the same in a resumed run, without saving any state."""
        if self._generator is None:
            self._generator = torch.Generator(device=self.device)
        if self._seeded_for != (self.epoch, self.batch):
            self._generator.manual_seed(
                hash((self.seed, self.rank, self.epoch, self.batch)) & (2**63 - 1)
            )
            self._seeded_for = (self.epoch, self.batch)
        return self._generator


@declares("loss")
def supervised(
    batch: Batch, model: nn.Module, optimizers: Optimizers, ctx: StepContext
) -> Metrics:
    """loss_fn(model(inputs), targets), one update of every optimizer (closure-aware)."""
    inputs, targets = batch
    loss_fn = _loss_fn(ctx)

    def loss() -> torch.Tensor:
        with ctx.autocast():
            return loss_fn(model(inputs), targets)

    return {"loss": optimizers.update(loss)}


@declares("d_loss", "g_loss", needs_optimizers=("generator", "discriminator"))
def gan(batch: Batch, model: nn.Module, optimizers: Optimizers, ctx: StepContext) -> Metrics:
    """The non-saturating GAN step: the discriminator on real and detached fake samples, then
    the generator on fresh scores of its samples. Needs `model.generator`,
    `model.discriminator`, `model.latent`, and optimizers `generator` and `discriminator`."""
    parts = cast(GanParts, model)
    real = batch[0] if isinstance(batch, (list, tuple)) else batch
    noise = torch.randn(real.shape[0], parts.latent, device=real.device, generator=ctx.generator)
    with ctx.autocast():
        fake = parts.generator(noise)
        d_loss = (
            F.softplus(-parts.discriminator(real)).mean()
            + F.softplus(parts.discriminator(fake.detach())).mean()
        )
    optimizers["discriminator"].update(d_loss)
    with ctx.autocast():
        g_loss = F.softplus(-parts.discriminator(fake)).mean()
    optimizers["generator"].update(g_loss)
    return {"d_loss": d_loss, "g_loss": g_loss}


@declares("loss", "hard_loss", "soft_loss")
def distill(
    batch: Batch,
    model: nn.Module,
    optimizers: Optimizers,
    ctx: StepContext,
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> Metrics:
    """Knowledge distillation: `model.student` learns from the targets and from a frozen
    `model.teacher`'s softened outputs (KL at `temperature`, weighted by `alpha`)."""
    parts = cast(DistillParts, model)
    inputs, targets = batch
    with torch.no_grad(), ctx.autocast():
        teacher = parts.teacher(inputs)
    with ctx.autocast():
        logits = parts.student(inputs)
        hard = _loss_fn(ctx)(logits, targets)
        soft = F.kl_div(
            F.log_softmax(logits / temperature, dim=1),
            F.log_softmax(teacher / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        ) * (temperature**2)
        loss = alpha * soft + (1 - alpha) * hard
    optimizers.update(loss)
    return {"loss": loss, "hard_loss": hard, "soft_loss": soft}


@declares("modes_covered", "mode_distance", "close")
@torch.no_grad()
def ring_quality(batch: Batch, model: nn.Module, ctx: StepContext) -> Metrics:
    """A val_step for a GAN on `ring`: as many generated points as real ones, scored against
    the modes' centres (the real points' mean per target). `modes_covered`: modes that
    received at least a quarter of their fair share of close samples; `mode_distance`: mean
    distance of the samples to the nearest centre; `close`: the share of close samples
    (within 4 standard deviations of a mode)."""
    real, modes = batch
    count = int(modes.max()) + 1
    centres = torch.zeros(count, real.shape[1], device=real.device).index_add_(0, modes, real)
    centres /= torch.bincount(modes, minlength=count).clamp(min=1).unsqueeze(1)
    spread = (real - centres[modes]).pow(2).sum(1).mean().div(real.shape[1]).sqrt()
    parts = cast(GanParts, model)
    noise = torch.randn(real.shape[0], parts.latent, device=real.device, generator=ctx.generator)
    fake = parts.generator(noise).float()
    distance, nearest = torch.cdist(fake, centres).min(dim=1)
    close = distance < 4 * spread
    hits = torch.bincount(nearest[close], minlength=count)
    return {
        "modes_covered": (hits >= 0.25 * real.shape[0] / count).sum().float(),
        "mode_distance": distance.mean(),
        "close": close.float().mean(),
    }


def _loss_fn(ctx: StepContext) -> nn.Module:
    """The configured loss (a step that needs one is only run with one)."""
    if ctx.loss_fn is None:
        raise TypeError("this step needs StepContext.loss_fn, the configured loss")
    return ctx.loss_fn
