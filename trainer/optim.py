"""The optimizer (from resolved param groups), its options, the loss, and the param-group
plan `trainer groups` prints (the model built on the meta device)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from trainer import registry
from trainer.errors import UserError
from trainer.models import build_model
from trainer.param_groups import GroupsReport, build_param_groups

if TYPE_CHECKING:
    import torch

    from trainer.config import Config, LossConfig, OptimizerConfig


def optimizer_defaults(config: OptimizerConfig) -> dict[str, Any]:
    """The optimizer's options as it will see them: its signature's defaults, then the config's."""
    fn = registry.resolve("optimizers", config.name, key="optimizer.name")
    defaults = {
        name: param.default
        for name, param in inspect.signature(fn).parameters.items()
        if param.default is not param.empty
    }
    return {**defaults, **config.kwargs}


def plan_param_groups(
    config: Config,
) -> tuple[torch.nn.Module, list[dict[str, Any]], GroupsReport]:
    """The model (on the meta device where it can be) and its resolved param groups.

    No weights are loaded and no data is touched, so a large torchvision model resolves fast.
    """
    import torch

    problems = registry.check_components(config, sections=("model", "optimizer"))
    if problems:
        raise UserError(problems)
    model_config = config.model
    if model_config.kwargs.get("weights") is not None:  # names do not depend on the weights
        model_config = type(model_config).model_validate(
            {**model_config.model_dump(), "weights": None}
        )
    try:
        with torch.device("meta"):
            model = build_model(model_config)
    except (NotImplementedError, RuntimeError):
        model = build_model(model_config)
    groups, report = build_param_groups(
        model,
        optimizer_defaults(config.optimizer),
        config.param_groups,
        optimizer=config.optimizer.name,
    )
    return model, groups, report


def build_optimizer(config: OptimizerConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """`Optimizer(groups, **options)`: the groups carry their own lr and weight_decay."""
    return registry.build("optimizers", config.name, config.kwargs, key="optimizer", params=groups)


def needs_closure(config: OptimizerConfig) -> bool:
    """Whether the optimizer's step() requires a closure (LBFGS and the like)."""
    fn = registry.resolve("optimizers", config.name, key="optimizer.name")
    step = getattr(fn, "step", None)
    if step is None:
        return False
    closure = inspect.signature(step).parameters.get("closure")
    return closure is not None and closure.default is closure.empty


def build_loss(config: LossConfig) -> torch.nn.Module:
    """The configured loss module."""
    return registry.build("losses", config.name, config.kwargs, key="loss")
