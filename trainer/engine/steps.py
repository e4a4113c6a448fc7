"""Training steps: `supervised`, `gan`, `distill`, and the contract a user's step follows.

A step is `step(batch, model, optimizers, ctx, **options) -> dict[str, Tensor]`:

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

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from trainer.engine.device import autocast


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
    step: int = 0  # optimizer steps taken before this batch (the global step)
    _generator: torch.Generator | None = field(default=None, repr=False)
    _seeded_for: tuple[int, int] | None = field(default=None, repr=False)

    def autocast(self) -> Any:
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


def supervised(batch: Any, model: Any, optimizers: Any, ctx: StepContext) -> dict[str, Any]:
    """loss_fn(model(inputs), targets), one update of every optimizer (closure-aware)."""
    inputs, targets = batch

    def loss() -> torch.Tensor:
        with ctx.autocast():
            return ctx.loss_fn(model(inputs), targets)

    return {"loss": optimizers.update(loss)}


supervised.logs = ("loss",)


def gan(batch: Any, model: Any, optimizers: Any, ctx: StepContext) -> dict[str, Any]:
    """The non-saturating GAN step: the discriminator on real and detached fake samples, then
    the generator on fresh scores of its samples. Needs `model.generator`,
    `model.discriminator`, `model.latent`, and optimizers `generator` and `discriminator`."""
    real = batch[0] if isinstance(batch, (list, tuple)) else batch
    noise = torch.randn(real.shape[0], model.latent, device=real.device, generator=ctx.generator)
    with ctx.autocast():
        fake = model.generator(noise)
        d_loss = (
            F.softplus(-model.discriminator(real)).mean()
            + F.softplus(model.discriminator(fake.detach())).mean()
        )
    optimizers["discriminator"].update(d_loss)
    with ctx.autocast():
        g_loss = F.softplus(-model.discriminator(fake)).mean()
    optimizers["generator"].update(g_loss)
    return {"d_loss": d_loss, "g_loss": g_loss}


gan.needs_optimizers = ("generator", "discriminator")  # checked before anything is built
gan.logs = ("d_loss", "g_loss")


def distill(
    batch: Any,
    model: Any,
    optimizers: Any,
    ctx: StepContext,
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> dict[str, Any]:
    """Knowledge distillation: `model.student` learns from the targets and from a frozen
    `model.teacher`'s softened outputs (KL at `temperature`, weighted by `alpha`)."""
    inputs, targets = batch
    with torch.no_grad(), ctx.autocast():
        teacher = model.teacher(inputs)
    with ctx.autocast():
        logits = model.student(inputs)
        hard = ctx.loss_fn(logits, targets)
        soft = F.kl_div(
            F.log_softmax(logits / temperature, dim=1),
            F.log_softmax(teacher / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        ) * (temperature**2)
        loss = alpha * soft + (1 - alpha) * hard
    optimizers.update(loss)
    return {"loss": loss, "hard_loss": hard, "soft_loss": soft}


distill.logs = ("loss", "hard_loss", "soft_loss")


@torch.no_grad()
def ring_quality(batch: Any, model: Any, ctx: StepContext) -> dict[str, Any]:
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
    noise = torch.randn(real.shape[0], model.latent, device=real.device, generator=ctx.generator)
    fake = model.generator(noise).float()
    distance, nearest = torch.cdist(fake, centres).min(dim=1)
    close = distance < 4 * spread
    hits = torch.bincount(nearest[close], minlength=count)
    return {
        "modes_covered": (hits >= 0.25 * real.shape[0] / count).sum().float(),
        "mode_distance": distance.mean(),
        "close": close.float().mean(),
    }


ring_quality.logs = ("modes_covered", "mode_distance", "close")
