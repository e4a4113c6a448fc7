"""trainer.strategy: fsdp — the model sharded over the processes with torch's FSDP2, and
activation checkpointing (either strategy).

FSDP2 (`torch.distributed.fsdp.fully_shard`) shards each parameter in place: the module keeps
its names (`blocks.3.attn.qkv.weight`), each parameter becomes a DTensor holding this rank's
rows. So everything that works on names (param-group rules, freeze, no_decay, several
optimizers, checkpoints by name) carries over; the optimizers are built after sharding and
hold the shards. Each `fsdp.units` module is gathered for its own forward and backward and
freed after (reshard_after_forward); the root holds what no unit does.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from trainer.engine.distributed import Distributed
from trainer.errors import UserError
from trainer.state.checkpoint import not_finite
from trainer.state.optimizer_keys import optimizer_state_by_name

if TYPE_CHECKING:
    from trainer.config import Config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Unit(NamedTuple):
    """A module FSDP gathers on its own: its name ('' for the root) and parameter count (a
    pair, as `trainer groups` and the run's notes print it)."""

    name: str
    parameters: int  # parameters it holds that no inner unit holds


def matching_modules(module: nn.Module, patterns: list[str], *, key: str) -> list[str]:
    """Names of the submodules (not the root) that any pattern matches (re.search), in
    module order; a UserError naming `<key>.<i>` for each pattern that matches none."""
    names = [name for name, _ in module.named_modules() if name]
    problems, matched = [], set()
    for index, pattern in enumerate(patterns):
        hits = [name for name in names if re.search(pattern, name)]
        if not hits:
            problems.append(
                f"{key}.{index}: {pattern!r} matches no module; module names look like "
                f"{', '.join(_examples(names))}"
            )
        matched.update(hits)
    if problems:
        raise UserError(problems)
    return [name for name in names if name in matched]


def _examples(names: list[str]) -> list[str]:
    """A few module names from different depths, for an error message."""
    by_depth: dict[int, str] = {}
    for name in names:
        by_depth.setdefault(name.count("."), name)
    return list(by_depth.values())[:4] or ["(the model has no submodules)"]


def units_of(module: nn.Module, config: Config) -> list[Unit]:
    """The units fsdp would make of `module` (innermost first, the root last), with the
    parameters each one holds: what `trainer groups` prints."""
    settings = config.fsdp
    names = matching_modules(module, settings.units if settings else [], key="fsdp.units")
    ordered = [*sorted(names, key=lambda name: -name.count(".")), ""]
    owner: dict[int, str] = {}
    for name in ordered:  # innermost first: a parameter belongs to its innermost unit
        for param in module.get_submodule(name).parameters():
            owner.setdefault(id(param), name)
    counts = dict.fromkeys(ordered, 0)
    for param in module.parameters():
        counts[owner[id(param)]] += param.numel()
    return [Unit(name, counts[name]) for name in ordered]


def shard(module: nn.Module, config: Config, device: torch.device) -> list[Unit]:
    """fully_shard each unit (innermost first), then the root, over every process of the
    job (a one-process job: a mesh of one). Returns the units."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    settings = config.fsdp
    units = units_of(module, config)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options: dict[str, Any] = {"mesh": mesh}
    if settings is not None:
        options["reshard_after_forward"] = settings.reshard_after_forward
        if settings.param_dtype or settings.reduce_dtype:
            options["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=DTYPES.get(settings.param_dtype or ""),
                reduce_dtype=DTYPES.get(settings.reduce_dtype or ""),
            )
        if settings.cpu_offload:
            options["offload_policy"] = CPUOffloadPolicy()
    for unit in units[:-1]:
        fully_shard(module.get_submodule(unit.name), **options)
    if "mp_policy" in options:  # the model's outputs (and so the loss) in fp32
        policy = options["mp_policy"]
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=policy.param_dtype,
            reduce_dtype=policy.reduce_dtype,
            output_dtype=torch.float32,
        )
    fully_shard(module, **options)
    return units


def checkpoint_activations(module: nn.Module, patterns: list[str]) -> list[str]:
    """Recompute the matching modules' activations in backward instead of keeping them
    (torch.utils.checkpoint, non-reentrant); the names and weights stay as they are."""
    names = matching_modules(module, patterns, key="trainer.activation_checkpointing")
    for name in names:
        inner = module.get_submodule(name)
        inner.forward = _recomputed(inner.forward)
    return names


def _recomputed(forward: Callable[..., Any]) -> Callable[..., Any]:
    from torch.utils.checkpoint import checkpoint

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # validation: nothing to keep for a backward
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def fsdp_problems(config: Config, device: torch.device) -> list[str]:
    """What trainer.strategy: fsdp cannot do with this config, by key (before building)."""
    settings, trainer = config.fsdp, config.trainer
    if not trainer.sharded:
        return []
    found = []
    if device.type not in ("cpu", "cuda"):
        found.append(f"trainer.strategy: fsdp runs on cuda or cpu; this run's device is {device}")
    if settings is not None and settings.cpu_offload and device.type != "cuda":
        found.append(
            "fsdp.cpu_offload: keeps a GPU run's shards in CPU memory between uses; this "
            f"run's device is {device} (leave cpu_offload out)"
        )
    if settings is not None and settings.param_dtype == "fp16" and trainer.precision != "fp16":
        found.append(
            "fsdp.param_dtype: fp16 parameters need loss scaling: set trainer.precision: fp16 "
            "(its GradScaler), or use param_dtype: bf16"
        )
    if config.step.name != "supervised" and not (settings and settings.units):
        found.append(
            f"fsdp.units: step {config.step.name!r} calls the model's parts itself, which FSDP "
            "gathers only as units of their own; list each part the step calls (e.g. "
            "['^generator$', '^discriminator$'])"
        )
    return found


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded tensor (a DTensor's local shard), or the tensor."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a collective when it is sharded), or the tensor."""
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if full_tensor is not None else tensor


def non_finite_weights(
    module: nn.Module, job: Distributed, device: torch.device
) -> list[str] | None:
    """None when every rank's weights are finite; else the names of this rank's tensors (its
    shards) that are not, [] when only another rank's are (one host sync, one all-reduce)."""
    bad = not_finite({name: local(value) for name, value in module.state_dict().items()})
    return bad if job.any(bool(bad), device) else None


def sharded_model_state(module: nn.Module) -> dict[str, Any]:
    """The model's state by parameter name: this rank's shards (DTensors), as DCP saves it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module)


def sharded_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, groups: dict[str, list[str]]
) -> dict[str, Any]:
    """An optimizer's state of this rank's shards, keyed by parameter name. One that has not
    stepped yet is saved as it is (its groups, no state): get_optimizer_state_dict would
    first give it a state by a step of lr 0, changing the training it is saved from."""
    if not optimizer.state:
        return optimizer_state_by_name(optimizer.state_dict(), groups)
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer)


def is_sharded(module: nn.Module) -> bool:
    """Whether fully_shard was applied to `module` (FSDP2 makes it an FSDPModule)."""
    return hasattr(module, "set_requires_gradient_sync")


@contextlib.contextmanager
def no_gradient_sync(module: nn.Module) -> Iterator[None]:
    """Accumulate unreduced gradients (a window's batches before its last): FSDP2's
    `set_requires_gradient_sync(False)`, as DDP's `no_sync()` does."""
    sync: Callable[[bool], None] = module.set_requires_gradient_sync  # type: ignore[assignment]
    sync(False)
    try:
        yield
    finally:
        sync(True)
