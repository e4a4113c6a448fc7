"""Optimizer handles: what the runner owns around each optimizer, behind `update(loss)`.

A training step computes losses; a handle turns each into an update: backward (scaled for
fp16, divided over the accumulation window), and at the window's end unscale, clip, step
(or `step(closure)` for LBFGS-style optimizers), the scaler's update, `zero_grad`, and its
scheduler's per-step step, which is not taken when the fp16 scaler skipped the step.
`Optimizers` maps names to handles, and its own `update(loss)` updates all of them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.components.schedulers import ScheduleDriver
from trainer.engine.distributed import SINGLE, Distributed
from trainer.engine.sharding import local, sharded_optimizer_state, whole
from trainer.errors import UserError
from trainer.state.checkpoint import OptimizerState

Loss = torch.Tensor | Callable[[], torch.Tensor]


@dataclass
class Window:
    """Where the current batch sits in its accumulation window (the loop sets it per batch)."""

    size: int = 1  # batches in this window: each loss is divided by it
    last: bool = True  # the window's last batch: the optimizers step after its backward


@dataclass(frozen=True)
class Clipping:
    """An optimizer's clipping: by norm or by value, at most one of them."""

    norm: float | None = None  # clip_grad_norm
    value: float | None = None  # clip_grad_value


class OptimizerHandle:
    """One optimizer with its scaler, clipping, accumulation and scheduler."""

    def __init__(
        self,
        name: str,
        optimizer: torch.optim.Optimizer,
        *,
        schedule: ScheduleDriver,
        scaler: torch.amp.GradScaler,
        window: Window,
        clipping: Clipping = Clipping(),
        closure: bool = False,
        skip_nonfinite: bool = False,
        own_grads_only: bool = False,
        sync_grads: bool = False,
        sharded: bool = False,
        job: Distributed = SINGLE,
        device: torch.device | None = None,
    ) -> None:
        self.name, self.optimizer, self.schedule, self.scaler = name, optimizer, schedule, scaler
        self.window, self.clipping, self.closure = window, clipping, closure
        self.skip_nonfinite, self.job = skip_nonfinite, job
        # Where the ranks' agreements run: the run's device (shards may sit in CPU memory).
        self.device = device or torch.device("cpu")
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        # Several optimizers: a backward fills only this optimizer's grads (a generator's
        # loss leaves the discriminator's alone); unwrapped DDP: grads all-reduced here.
        self.own_grads_only, self.sync_grads = own_grads_only, sync_grads
        # FSDP shards: a backward reaches the gathered copies, not these tensors, so it
        # cannot be limited to them (inputs=); the other optimizers' grads are set aside.
        self.sharded = sharded
        self.others: list[torch.Tensor] = []  # the other optimizers' tensors (Optimizers sets)
        self.measure_norm = False  # set on logging steps: clip_grad_value then measures
        self.grad_norm: torch.Tensor | None = None  # pre-clip norm of the last step
        self.updates = 0  # optimizer steps taken (a skipped one is not counted)
        self.backwards = 0  # backward passes in this window
        self.skipped = 0  # losses skip_nonfinite left out in this window
        self.skipped_batch = False  # this batch's loss was left out (the loop resets it)

    # ---------------------------------------------------------------- the one call

    def update(self, loss: Loss) -> torch.Tensor:
        """Backward `loss` into this optimizer's grads; step at the window's end. Returns
        the loss (for a closure optimizer, its first evaluation: pass a callable)."""
        if self.closure:
            return self._closure_step(loss)
        loss = loss() if callable(loss) else loss
        if not self.finite_or_skip(loss):
            self.backward(loss)
        if self.window.last:
            self.finish_window()
        return loss

    # ---------------------------------------------------------------- by hand

    def finite_or_skip(self, loss: torch.Tensor) -> bool:
        """With trainer.skip_nonfinite: True (and counted) when `loss` is not finite.

        A host sync per call, by choice; all ranks agree.
        """
        if not self.skip_nonfinite or not self.job.any(not bool(torch.isfinite(loss)), loss.device):
            return False
        self.skipped += 1
        self.skipped_batch = True
        return True

    def backward(self, loss: torch.Tensor, *, retain_graph: bool = False) -> None:
        """`loss` scaled (fp16) and divided over the window, into this optimizer's grads."""
        if self.window.size > 1:
            loss = loss / self.window.size
        if self.own_grads_only and self.sharded:
            self._backward_keeping_others(self.scaler.scale(loss), retain_graph=retain_graph)
        else:
            inputs = self.params if self.own_grads_only else None
            self.scaler.scale(loss).backward(inputs=inputs, retain_graph=retain_graph)
        self.backwards += 1

    def _backward_keeping_others(self, loss: torch.Tensor, *, retain_graph: bool) -> None:
        """Backward into every tensor, then the other optimizers' grads put back as they
        were: what this loss put there is dropped (FSDP's reduction of it is wasted)."""
        kept = [param.grad for param in self.others]
        for param in self.others:
            param.grad = None
        loss.backward(retain_graph=retain_graph)
        for param, grad in zip(self.others, kept, strict=True):
            param.grad = grad

    def finish_window(self) -> bool:
        """Step if the window had a backward to step with; zero the grads; True if stepped."""
        # Nothing to step with: the whole window skipped, or (DDP) the grads left unsynced.
        can_step = self.skipped == 0 or (self.backwards > 0 and not self.job.enabled)
        stepped = can_step and self.step()
        if not can_step:
            self.zero_grad()
        self.backwards = self.skipped = 0
        return stepped

    def step(self) -> bool:
        """Unscale, clip, step, update the scaler, zero the grads, and the per-step scheduler.

        False when the step was skipped for inf/nan grads (by the fp16 scaler, or by
        trainer.skip_nonfinite): the scheduler waits too.
        """
        if self.sync_grads:
            self._all_reduce_grads()
        if self.skip_nonfinite and not self.scaler.is_enabled() and not self.grads_finite():
            self.zero_grad()  # a finite loss can still have inf/nan grads: no step on them
            self.skipped_batch = True
            return False
        self.grad_norm = self.clip(measure=self.measure_norm)
        # Did the scaler skip the step? Two host syncs, so asked only when a per-step
        # scheduler needs the answer.
        asks = self.scaler.is_enabled() and self.schedule.per_step
        scale = self.scaler.get_scale() if asks else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        stepped = scale is None or self.scaler.get_scale() >= scale
        self.zero_grad()
        if stepped:
            self.updates += 1
            self.schedule.after_optimizer_step()
        return stepped

    def clip(self, *, measure: bool = False) -> torch.Tensor | None:
        """Clip by norm or by value, as configured (never both: the config refuses it); the
        pre-clip grad norm: clip_grad_norm's, or measured for clip_grad_value on request."""
        norm, value = self.clipping.norm, self.clipping.value
        if norm is not None:
            self.scaler.unscale_(self.optimizer)
            return whole(torch.nn.utils.clip_grad_norm_(self.params, norm))
        if value is None:
            return None
        self.scaler.unscale_(self.optimizer)
        total = None
        if measure:
            total = whole(
                torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
            )
        torch.nn.utils.clip_grad_value_(self.params, value)
        return total

    def grads_finite(self) -> bool:
        """Every grad finite (one host sync; asked with trainer.skip_nonfinite alone). The
        grads are the same on every rank here (DDP or this handle synced them); FSDP shards
        are checked where they are, and the ranks agree."""
        grads = [local(p.grad) for p in self.params if p.grad is not None]
        finite = not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all())
        if self.sharded:
            return not self.job.any(not finite, self.device)
        return finite

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lrs(self) -> dict[str, float]:
        """The lr of every param group, by group name."""
        return {group["name"]: float(group["lr"]) for group in self.optimizer.param_groups}

    # ---------------------------------------------------------------- internals

    def _closure_step(self, loss: Loss) -> torch.Tensor:
        """LBFGS-style: the optimizer evaluates the loss itself, as often as it needs."""
        if not callable(loss):
            raise TypeError(
                f"optimizer {self.name!r} steps with a closure: pass update() a function "
                "that computes the loss, not the loss"
            )

        def closure() -> torch.Tensor:
            self.zero_grad()
            value = loss()
            self.scaler.scale(value).backward()
            self.clip()
            return value

        # Optimizer.step's stub types the closure's loss as a float; LBFGS takes the Tensor
        # (and returns the closure's first value, that Tensor).
        value: torch.Tensor = self.optimizer.step(closure)  # type: ignore[arg-type, assignment]
        self.zero_grad()
        self.updates += 1
        self.schedule.after_optimizer_step()
        return value

    def _all_reduce_grads(self) -> None:
        """Average this optimizer's grads over the ranks (a step that bypasses DDP's hooks)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.job.world_size
        for param, synced in zip(
            self.params, torch._utils._unflatten_dense_tensors(flat, grads), strict=True
        ):
            param.grad = synced


class Optimizers(Mapping[str, OptimizerHandle]):
    """The run's handles by name; `update(loss)` updates every one of them with one loss."""

    def __init__(self, handles: dict[str, OptimizerHandle], window: Window) -> None:
        self.handles, self.window = handles, window
        for handle in handles.values():
            handle.others = [
                param for other in handles.values() if other is not handle for param in other.params
            ]

    def __getitem__(self, name: str) -> OptimizerHandle:
        if name not in self.handles:
            raise UserError(
                f"step.name: the step asked for optimizer {name!r}; this config has "
                f"{', '.join(map(repr, self.handles))} (optimizers.<name> in the config)"
            )
        return self.handles[name]

    def __contains__(self, name: object) -> bool:
        return name in self.handles

    def __iter__(self) -> Iterator[str]:
        return iter(self.handles)

    def __len__(self) -> int:
        return len(self.handles)

    def update(self, loss: Loss) -> torch.Tensor:
        """One loss for every optimizer (a supervised step): backward once, each steps."""
        handles = list(self.handles.values())
        if len(handles) == 1:
            return handles[0].update(loss)
        loss = loss() if callable(loss) else loss
        if not any([handle.finite_or_skip(loss) for handle in handles]):
            if handles[0].scaler.is_enabled():  # a scale of its own per optimizer
                for index, handle in enumerate(handles):
                    handle.backward(loss, retain_graph=index < len(handles) - 1)
            else:
                (loss / self.window.size if self.window.size > 1 else loss).backward()
                for handle in handles:
                    handle.backwards += 1
        if self.window.last:
            for handle in handles:
                handle.finish_window()
        return loss

    def start_batch(self, size: int, last: bool, *, measure_norm: bool) -> None:
        """Tell every handle where this batch sits in its window."""
        self.window.size, self.window.last = size, last
        for handle in self.handles.values():
            handle.skipped_batch = False
            handle.measure_norm = measure_norm

    @property
    def skipped_batch(self) -> bool:
        return any(handle.skipped_batch for handle in self.handles.values())

    def lrs(self, *, several: bool) -> dict[str, float]:
        """`lr/<group>` (one optimizer) or `lr/<optimizer>/<group>` (several)."""
        return {
            f"lr/{name}/{group}" if several else f"lr/{group}": lr
            for name, handle in self.handles.items()
            for group, lr in handle.lrs.items()
        }

    def updates(self) -> dict[str, int]:
        """Optimizer steps each optimizer has taken, by name."""
        return {name: handle.updates for name, handle in self.handles.items()}

    def states(
        self, groups: dict[str, dict[str, list[str]]], *, sharded: torch.nn.Module | None = None
    ) -> dict[str, OptimizerState]:
        """What each optimizer saves, by name; `groups` is each one's manifest. With the
        `sharded` model: each optimizer's state of this rank's shards, by parameter name."""
        return {
            name: OptimizerState(
                optimizer=(
                    handle.optimizer.state_dict()
                    if sharded is None
                    else sharded_optimizer_state(sharded, handle.optimizer, groups[name])
                ),
                scheduler=handle.schedule.state_dict(),
                scaler=handle.scaler.state_dict(),
                updates=handle.updates,
                groups=groups[name],
            )
            for name, handle in self.handles.items()
        }
