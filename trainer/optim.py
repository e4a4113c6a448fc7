"""Building the loss, the optimizer from resolved param groups, and the lr scheduler."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from trainer import registry

if TYPE_CHECKING:
    import torch

    from trainer.config import LossConfig, OptimizerConfig, SchedulerConfig


def optimizer_defaults(config: OptimizerConfig) -> dict[str, Any]:
    """The optimizer's options as it will see them: its signature's defaults, then the config's."""
    fn = registry.resolve("optimizers", config.name, key="optimizer.name")
    defaults = {
        name: param.default
        for name, param in inspect.signature(fn).parameters.items()
        if param.default is not param.empty
    }
    return {**defaults, **config.kwargs}


def build_optimizer(config: OptimizerConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """`Optimizer(groups, **options)`: the groups carry their own lr and weight_decay."""
    return registry.build("optimizers", config.name, config.kwargs, key="optimizer", params=groups)


def build_scheduler(config: SchedulerConfig | None, optimizer: torch.optim.Optimizer) -> Any:
    """The configured lr scheduler, or None for a constant learning rate."""
    if config is None:
        return None
    return registry.build(
        "schedulers", config.name, config.kwargs, key="scheduler", optimizer=optimizer
    )


def build_loss(config: LossConfig) -> torch.nn.Module:
    """The configured loss module."""
    return registry.build("losses", config.name, config.kwargs, key="loss")
