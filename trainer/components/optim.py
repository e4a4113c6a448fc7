"""Optimizers from resolved param groups (one, or several each over its own tensors), their
options, the loss, and the plan `trainer groups` prints (the model built on the meta device)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainer.components import registry
from trainer.components.param_groups import (
    GroupsReport,
    apply_freeze,
    build_param_groups,
    check_optimizer_scopes,
    frozen_names,
    held_norms,
)
from trainer.config import OptimizerSpec
from trainer.errors import UserError

if TYPE_CHECKING:
    import torch

    from trainer.config import Config, LossConfig, OptimizerConfig


def optimizer_defaults(config: OptimizerConfig, *, key: str = "optimizer") -> dict[str, Any]:
    """The optimizer's options as it will see them: its signature's defaults, then the config's."""
    fn = registry.resolve("optimizers", config.name, key=f"{key}.name")
    defaults = {
        name: param.default
        for name, param in inspect.signature(fn).parameters.items()
        if param.default is not param.empty
    }
    return {**defaults, **config.kwargs}


@dataclass
class PlannedOptimizer:
    """One optimizer's resolved param groups: what `Optimizer(groups, **options)` gets."""

    spec: OptimizerSpec
    groups: list[dict[str, Any]]
    report: GroupsReport


def plan_optimizers(model: torch.nn.Module, config: Config) -> list[PlannedOptimizer]:
    """Freeze, then every optimizer's param groups over its own tensors; all problems at once.

    One optimizer: today's rules over every trainable tensor. Several: the global freeze
    first, then each optimizer's rules scoped to the tensors its `params` selects, and every
    trainable tensor must be selected by exactly one optimizer.
    """
    specs = config.optimizer_specs()
    if not config.several_optimizers:
        spec = specs[0]
        groups, report = build_param_groups(
            model,
            optimizer_defaults(spec.optimizer),
            spec.param_groups,
            optimizer=spec.optimizer.name,
        )
        planned = [PlannedOptimizer(spec, groups, report)]
        _report_held_norms(model, config, planned)
        return planned
    freeze = config.param_groups.freeze
    scopes = {s.name: s.params for s in specs if s.params is not None}  # all: several form
    problems = check_optimizer_scopes(model, freeze, scopes)
    frozen_by_model = frozen_names(model)
    frozen_by_config = apply_freeze(model, freeze)
    planned = []
    for spec in specs:
        try:
            groups, report = build_param_groups(
                model,
                optimizer_defaults(spec.optimizer, key=f"{spec.key}optimizer"),
                spec.param_groups,
                optimizer=spec.optimizer.name,
                select=spec.params,
                key=f"{spec.key}param_groups",
            )
        except UserError as err:
            problems += err.problems
            continue
        report.frozen_by_config, report.frozen_by_model = frozen_by_config, frozen_by_model
        planned.append(PlannedOptimizer(spec, groups, report))
    if problems:
        raise UserError(list(dict.fromkeys(problems)))
    _report_held_norms(model, config, planned)
    return planned


def _report_held_norms(
    model: torch.nn.Module, config: Config, planned: list[PlannedOptimizer]
) -> None:
    """Every report names the norm layers training will hold in eval mode (after freeze)."""
    names = list(held_norms(model)) if config.param_groups.freeze_norm_stats else []
    for plan in planned:
        plan.report.held_norms = names


# Switches of torch's implementation, not of the math: left out of the groups table.
IMPLEMENTATION_OPTIONS = ("foreach", "fused", "differentiable", "capturable")


def fill_options(plan: PlannedOptimizer) -> None:
    """Every option each group will use (the optimizer's defaults, then the config's and the
    rule's), into the report; without building the optimizer, which imports torch._dynamo."""
    defaults = optimizer_defaults(plan.spec.optimizer, key=f"{plan.spec.key}optimizer")
    for info in plan.report.groups:
        merged = {**defaults, **info.options}
        info.options = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in merged.items()
            if k not in ("params", "lr", "weight_decay", *IMPLEMENTATION_OPTIONS)
        }


def build_optimizer(
    config: OptimizerConfig | OptimizerSpec, groups: list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """`Optimizer(groups, **options)`: the groups carry their own lr and weight_decay."""
    key = "optimizer"
    if isinstance(config, OptimizerSpec):
        key = f"{config.key}optimizer"
        config = config.optimizer
    return registry.build("optimizers", config.name, config.kwargs, key=key, params=groups)


def check_group_options(plan: PlannedOptimizer) -> list[str]:
    """Each group's options as torch checks only an optimizer's defaults (betas in [0, 1),
    nesterov with momentum and no dampening, numbers that are numbers): an optimizer built
    on a stand-in for the group's first tensor with the group's values as its defaults,
    before the run starts."""
    import torch

    spec = plan.spec
    cls = registry.resolve("optimizers", spec.optimizer.name, key=f"{spec.key}optimizer.name")
    rules = {rule.name: index for index, rule in enumerate(spec.param_groups.rules)}
    problems = []
    for group, info in zip(plan.groups, plan.report.groups, strict=True):
        if info.rule not in rules:  # the optimizer's own options: checked when it is built
            continue
        options = {k: v for k, v in group.items() if k not in ("params", "name")}
        try:
            stand_in = torch.empty_like(group["params"][0]).requires_grad_()  # its shape, device
            cls([stand_in], **{**spec.optimizer.kwargs, **options})
        except (ValueError, TypeError, RuntimeError) as err:
            where = f"{spec.key}param_groups.rules.{rules[info.rule]}"
            problems.append(f"{where}: {spec.optimizer.name} rejects group {info.name!r}: {err}")
    return list(dict.fromkeys(problems))


def needs_closure(config: OptimizerConfig, *, key: str = "optimizer") -> bool:
    """Whether the optimizer's step() requires a closure (LBFGS and the like)."""
    fn = registry.resolve("optimizers", config.name, key=f"{key}.name")
    step = getattr(fn, "step", None)
    if step is None:
        return False
    closure = inspect.signature(step).parameters.get("closure")
    return closure is not None and closure.default is closure.empty


REDUCTIONS = ("none", "mean", "sum")


def build_loss(config: LossConfig) -> torch.nn.Module:
    """The configured loss module (a torch loss's `reduction`, which torch checks only when
    the loss is first called, is checked here). CrossEntropyLoss and NLLLoss also take a
    sequence's (batch, seq, classes) logits with (batch, seq) targets, over the tokens: in
    training, validation and `trainer eval` alike."""
    import torch

    from trainer.components.language import TokenLoss

    loss = registry.build("losses", config.name, config.kwargs, key="loss")
    reduction = getattr(loss, "reduction", None)
    allowed = (*REDUCTIONS, "batchmean") if isinstance(loss, torch.nn.KLDivLoss) else REDUCTIONS
    if isinstance(loss, torch.nn.modules.loss._Loss) and reduction not in allowed:
        raise UserError(
            f"loss.reduction: {reduction!r} is not a reduction of {config.name} "
            f"(allowed: {', '.join(allowed)})"
        )
    if isinstance(loss, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)):
        return TokenLoss(loss)
    return loss
