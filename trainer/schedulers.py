"""LR schedulers: built by name, lengths filled in from the run, warmup, and the lr table.

`interval: epoch` steps the scheduler after each epoch, `interval: step` after each
optimizer step. Where a scheduler needs its length and the config leaves it out, the runner
fills it in, in the scheduler's own unit (epochs or optimizer steps), minus the warmup.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch.optim import lr_scheduler

from trainer import registry
from trainer.config import SchedulerConfig
from trainer.errors import UserError

# Scheduler → the argument the runner fills in with the schedule's length when it is omitted.
LENGTH_ARGUMENTS = {
    "OneCycleLR": "total_steps",
    "CosineAnnealingLR": "T_max",
    "PolynomialLR": "total_iters",
    "LinearLR": "total_iters",
}
PER_BATCH = ("OneCycleLR", "CyclicLR")


def steps_per_epoch(batches: int, accumulate: int) -> int:
    """Optimizer steps in one epoch: a trailing partial window still steps."""
    return math.ceil(batches / accumulate)


def schedule_length(
    config: SchedulerConfig, *, epochs: int, steps: int, max_steps: int | None
) -> int:
    """The whole schedule in the scheduler's unit: epochs, or optimizer steps."""
    if config.interval == "epoch":
        return epochs
    total = epochs * steps
    return min(total, max_steps) if max_steps else total


def filled_arguments(config: SchedulerConfig, length: int, warmup: int) -> dict[str, Any]:
    """The scheduler's keyword arguments with its length filled in where the config left it out."""
    kwargs = config.kwargs
    name = LENGTH_ARGUMENTS.get(config.name)
    omitted = name and name not in kwargs
    if config.name == "OneCycleLR":
        omitted = omitted and not {"epochs", "steps_per_epoch"} & set(kwargs)
    if omitted:
        kwargs[name] = max(length - warmup, 1)
    if isinstance(kwargs.get("lr_lambda"), str):  # LambdaLR, MultiplicativeLR
        kwargs["lr_lambda"] = registry.import_path(kwargs["lr_lambda"], key="scheduler.lr_lambda")
    return kwargs


def warmup_length(config: SchedulerConfig, steps: int) -> int:
    """Warmup in the scheduler's unit (0 without warmup); `steps` is steps per epoch."""
    if config.warmup is None:
        return 0
    if config.warmup.epochs is not None:
        return config.warmup.epochs * (steps if config.interval == "step" else 1)
    return config.warmup.steps


def build_scheduler(
    config: SchedulerConfig | None,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps: int,
    max_steps: int | None = None,
) -> Any:
    """The configured scheduler (with warmup through SequentialLR), or None for a constant lr."""
    if config is None:
        return None
    length = schedule_length(config, epochs=epochs, steps=steps, max_steps=max_steps)
    warmup = warmup_length(config, steps)
    kwargs = filled_arguments(config, length, warmup)
    if warmup == 0:
        return registry.build(
            "schedulers", config.name, kwargs, key="scheduler", optimizer=optimizer
        )
    if config.name == "ReduceLROnPlateau":
        raise UserError("scheduler.warmup: not available with ReduceLROnPlateau")
    warmup_scheduler = lr_scheduler.LinearLR(
        optimizer, start_factor=config.warmup.start_factor, total_iters=warmup
    )
    main = registry.build("schedulers", config.name, kwargs, key="scheduler", optimizer=optimizer)
    return lr_scheduler.SequentialLR(optimizer, [warmup_scheduler, main], milestones=[warmup])


def warnings_for(config: SchedulerConfig | None) -> list[str]:
    """Advice on a scheduler config that works but is likely not what was meant."""
    if config is not None and config.name in PER_BATCH and config.interval == "epoch":
        return [
            f"warning: scheduler.interval is epoch, but {config.name} is meant to step per "
            "batch: it will change the lr once per epoch; set scheduler.interval: step"
        ]
    return []


def lr_table(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: SchedulerConfig | None,
    *,
    epochs: int,
    steps: int,
    per_step: bool,
) -> dict[str, list[float]]:
    """The lr of every group for every epoch (or optimizer step) of the run, by stepping the
    scheduler as `trainer fit` does, without training. Per epoch, a step scheduler shows the
    lr of the epoch's first step."""
    table: dict[str, list[float]] = {group["name"]: [] for group in optimizer.param_groups}
    interval = config.interval if config else "epoch"
    plateau = isinstance(scheduler, lr_scheduler.ReduceLROnPlateau)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping a scheduler without optimizer.step()
        for _ in range(epochs):
            for index in range(steps):
                if per_step or index == 0:
                    for group in optimizer.param_groups:
                        table[group["name"]].append(float(group["lr"]))
                if scheduler is not None and interval == "step" and not plateau:
                    scheduler.step()
            if scheduler is not None and interval == "epoch" and not plateau:
                scheduler.step()
    return table


def plan_schedule(config: Any, *, per_step: bool) -> tuple[dict[str, list[float]], list[str]]:
    """The lr table of a config without training (`trainer schedule`), and notes on it.

    The model and optimizer are built on the meta device; the training set is built only
    when the number of steps per epoch matters (a step interval, or `per_step`).
    """
    from trainer.data import train_batches
    from trainer.optim import build_optimizer, plan_param_groups

    problems = registry.check_components(config, sections=("optimizer", "scheduler"))
    if problems:
        raise UserError(problems)
    _, groups, _ = plan_param_groups(config)
    optimizer = build_optimizer(config.optimizer, groups)
    settings, scheduler_config = config.trainer, config.scheduler
    steps = 1
    if per_step or (scheduler_config and scheduler_config.interval == "step"):
        steps = steps_per_epoch(train_batches(config.data), settings.accumulate)
    scheduler = build_scheduler(
        scheduler_config,
        optimizer,
        epochs=settings.epochs,
        steps=steps,
        max_steps=settings.max_steps,
    )
    table = lr_table(
        optimizer,
        scheduler,
        scheduler_config,
        epochs=settings.epochs,
        steps=steps,
        per_step=per_step,
    )
    notes = warnings_for(scheduler_config)
    if per_step and settings.max_steps:
        table = {name: lrs[: settings.max_steps] for name, lrs in table.items()}
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        notes.append(
            "ReduceLROnPlateau lowers the lr on validation metrics; shown without any reduction"
        )
    return table, notes
