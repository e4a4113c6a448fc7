"""trainer.ema: an exponential moving average of the model's weights and buffers.

One process and DDP keep it in torch's own `AveragedModel` (use_buffers=True): a copy of
the unwrapped module and its count of updates, updated as `update_parameters` does with the
EMA's multi_avg_fn (its first update a copy of the weights, each later one
`ema.lerp_(weights, 1 - decay)`), but with the count left on the CPU. Under
trainer.strategy: fsdp the module's parameters are shards (DTensors) that a deep copy does
not suit, so the average is kept as a clone of each shard and updated by the same function
on the local shards: elementwise, so each element equals the unsharded average bit for bit.
With `warmup`, the decay of the t-th update after the first is timm's ModelEmaV3
(use_warmup): min(decay, 1 - (1 + t/gamma)^-power).

The loop calls `update()` after every `every_steps`-th training step (no host sync: the count
of updates lives on the CPU); validation swaps the average into the model (`swapped_in`),
one tensor at a time, and back; checkpoints hold `state()`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from trainer.config import EmaConfig
from trainer.engine.sharding import is_sharded, local
from trainer.state.checkpoint import EmaState

TensorList = tuple[torch.Tensor, ...] | list[torch.Tensor]
MultiAvgFn = Callable[[TensorList, TensorList, torch.Tensor | int], None]


class WarmupDecay:
    """A multi_avg_fn whose decay warms up with the updates done (`count`, AveragedModel's
    n_averaged, kept on the CPU: reading it is no host sync), as timm's ModelEmaV3 with
    use_warmup: floating-point tensors lerp_ by 1 - decay_t, others are copied."""

    def __init__(self, settings: EmaConfig, count: torch.Tensor) -> None:
        assert settings.warmup is not None
        self.decay, self.count = settings.decay, count
        self.power, self.gamma = settings.warmup.power, settings.warmup.gamma

    def decay_at(self, updates: int) -> float:
        """The decay of the update after `updates` updates (the first, a copy, is not one)."""
        warm = 1 - (1 + updates / self.gamma) ** -self.power
        return max(min(warm, self.decay), 0.0)

    @torch.no_grad()
    def __call__(self, averaged: TensorList, current: TensorList, _: torch.Tensor | int) -> None:
        if averaged[0].is_floating_point():
            weight = 1.0 - self.decay_at(int(self.count))
            torch._foreach_lerp_(averaged, current, weight)
        else:
            torch._foreach_copy_(averaged, current)


def averaging(settings: EmaConfig, count: torch.Tensor) -> MultiAvgFn:
    """torch's EMA multi_avg_fn of `settings.decay`, or the warmup's."""
    if settings.warmup is None:
        return get_ema_multi_avg_fn(settings.decay)
    return WarmupDecay(settings, count)


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    """The parameters, then the buffers: what AveragedModel(use_buffers=True) averages."""
    return [t.detach() for t in itertools.chain(module.parameters(), module.buffers())]


class EmaWeights:
    """The EMA of one module (the unwrapped one: not DDP's or torch.compile's wrapper)."""

    def __init__(self, module: nn.Module, settings: EmaConfig, *, sharded: bool) -> None:
        self.module, self.settings, self.sharded = module, settings, sharded
        self.every_steps = settings.every_steps
        if sharded:
            self.count = torch.zeros((), dtype=torch.long)
            sources = list(itertools.chain(module.parameters(), module.buffers()))
            # DTensors stay DTensors: the clone of a parameter holds this rank's shard.
            clones = {id(source): source.detach().clone() for source in sources}
            self.averaged = list(clones.values())
            self.by_name = {  # every state_dict name (tied ones too) -> its averaged tensor
                name: clones[id(_entry(module, name))]
                for name, value in module.state_dict().items()
                if isinstance(value, torch.Tensor)
            }
            self.model: AveragedModel | None = None
            # Loading (DCP, `load`) writes into these tensors: their local parts stay put.
            self.averaged_locals = [local(t) for t in self.averaged]
        else:  # the copy and its count; `update` runs update_parameters' steps on them
            self.model = AveragedModel(module, use_buffers=True)
            self.count = self.model.n_averaged  # a CPU buffer: the AveragedModel stays put
            self.averaged = self.averaged_locals = _tensors(self.model.module)
        self.average_fn = averaging(settings, self.count)

    @property
    def updates(self) -> int:
        """Updates so far (AveragedModel's n_averaged)."""
        return int(self.count)

    @torch.no_grad()
    def update(self) -> None:
        """One update from the module's weights: a copy the first time, then the average.

        AveragedModel.update_parameters, step for step, except that the count of updates
        stays on the CPU: update_parameters hands the averaging function a copy of it on the
        tensors' device, a host sync per update on CUDA (the EMA functions never read it).
        The same function runs on a sharded run's local shards."""
        averaged = self.averaged_locals
        current = [local(t) for t in _tensors(self.module)]
        if self.updates == 0:
            torch._foreach_copy_(averaged, current)
        else:
            groups = _group_tensors_by_device_and_dtype([averaged, current])  # type: ignore[list-item]
            for [ours, theirs], _ in groups.values():
                self.average_fn(ours, theirs, self.count)  # type: ignore[arg-type]
        self.count += 1

    def state(self) -> EmaState:
        """What a checkpoint holds: the averaged module's state dict (a sharded run's: its
        shards, by the same names), the count of updates and the settings."""
        if self.model is not None:
            weights: dict[str, Any] = self.model.module.state_dict()
        else:
            weights = dict(self.by_name)
        decay, every_steps, warmup = self.saved_settings()
        return EmaState(
            weights=weights,
            updates=self.updates,
            decay=decay,
            every_steps=every_steps,
            warmup=warmup,
        )

    def saved_settings(self) -> tuple[float, int, dict[str, float] | None]:
        """decay, every_steps and warmup as a checkpoint keeps them."""
        warmup = self.settings.warmup
        return self.settings.decay, self.every_steps, warmup.model_dump() if warmup else None

    @torch.no_grad()
    def load(self, saved: EmaState) -> None:
        """A checkpoint's average, whole (a .pt file's, or a directory read whole): loaded
        bit for bit; a sharded run keeps its own shards of it (no communication)."""
        if self.model is not None:
            self.model.module.load_state_dict(saved.weights)
        else:
            from torch.distributed.tensor import DTensor, distribute_tensor

            for name, ours in self.by_name.items():
                whole = saved.weights[name].to(local(ours).device)
                if isinstance(ours, DTensor):
                    whole = distribute_tensor(
                        whole, ours.device_mesh, ours.placements, src_data_rank=None
                    )
                local(ours).copy_(local(whole))
        self.count.fill_(saved.updates)

    def restart(self) -> None:
        """The average starts again from the module's weights (a copy, one update)."""
        self.count.zero_()
        self.update()

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The average in the module's tensors, and the module's own back after: swapped one
        tensor at a time in place (so compiled and wrapped models see it too; memory: one
        tensor more). Under fsdp each rank swaps its shards, with no parameter gathered."""
        self._reshard()
        self._same_buffers()
        self._swap()
        try:
            yield
        finally:
            self._reshard()
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        for ours, theirs in zip(self.averaged, _tensors(self.module), strict=True):
            ours, theirs = local(ours), local(theirs)
            kept = theirs.clone()
            theirs.copy_(ours)
            ours.copy_(kept)

    @torch.no_grad()
    def _same_buffers(self) -> None:
        """DDP: every process averages its own replica, whose BatchNorm statistics differ
        from rank 0's between training forwards (DDP sends rank 0's at each one): the
        average's buffers become rank 0's, as the model's do, so every process validates the
        same average, and a resume (which loads rank 0's) goes on from what the run had."""
        if self.model is None or not dist.is_initialized() or dist.get_world_size() == 1:
            return
        for buffer in self.model.module.buffers():
            dist.broadcast(buffer, src=0)

    def _reshard(self) -> None:
        """FSDP keeps a module's gathered parameters after a forward without backward where
        reshard_after_forward is off: freed, so the next forward gathers the swapped shards."""
        if self.sharded:
            for module in self.module.modules():
                if is_sharded(module):
                    module.reshard()  # type: ignore[operator]

    def sharded_weights(self) -> dict[str, torch.Tensor]:
        """A sharded run's average by state_dict name (DTensors): what DCP loads into."""
        return dict(self.by_name)

    def describe(self) -> str:
        """The run's note: decay, how often, the warmup."""
        warmup = self.settings.warmup
        how = f"warmup power {warmup.power:g}, gamma {warmup.gamma:g}" if warmup else "no warmup"
        return (
            f"ema: decay {self.settings.decay:g} every {self.every_steps} step(s), {how}; "
            "validated as val/ema/<metric>"
        )


def _entry(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer of state_dict entry `name`."""
    owner, _, attribute = name.rpartition(".")
    tensor = getattr(module.get_submodule(owner), attribute)
    assert isinstance(tensor, torch.Tensor)
    return tensor
