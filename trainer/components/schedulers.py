"""LR schedulers: built by name, lengths filled in from the run, warmup, the one driver.

`interval: epoch` steps the scheduler after each epoch, `interval: step` after each
optimizer step. Where a scheduler needs its length and the config leaves it out, the runner
fills it in, in the scheduler's own unit (epochs or optimizer steps), minus the warmup.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import lr_scheduler

from trainer.components import registry
from trainer.config import OptimizerSpec, SchedulerConfig
from trainer.errors import UserError

if TYPE_CHECKING:
    from trainer.config.sections import TrainerConfig

# Scheduler → the argument the runner fills in with the schedule's length when it is omitted.
LENGTH_ARGUMENTS = {
    "OneCycleLR": "total_steps",
    "CosineAnnealingLR": "T_max",
    "PolynomialLR": "total_iters",
    "LinearLR": "total_iters",
}
PER_BATCH = ("OneCycleLR", "CyclicLR")
# Schedulers that set the lr itself (not a factor on each group's): their lr arguments.
ABSOLUTE_LRS = {"OneCycleLR": ("max_lr",), "CyclicLR": ("base_lr", "max_lr")}


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


def filled_arguments(
    config: SchedulerConfig, length: int, warmup: int, *, key: str = "scheduler"
) -> dict[str, Any]:
    """The scheduler's keyword arguments with its length filled in where the config left it out."""
    kwargs = config.kwargs
    name = LENGTH_ARGUMENTS.get(config.name, "")
    omitted = bool(name) and name not in kwargs
    if config.name == "OneCycleLR":
        omitted = omitted and not {"epochs", "steps_per_epoch"} & set(kwargs)
    if omitted:
        kwargs[name] = max(length - warmup, 1)
    if isinstance(kwargs.get("lr_lambda"), str):  # LambdaLR, MultiplicativeLR
        kwargs["lr_lambda"] = registry.import_path(kwargs["lr_lambda"], key=f"{key}.lr_lambda")
    return kwargs


def warmup_length(config: SchedulerConfig, steps: int) -> int:
    """Warmup in the scheduler's unit (0 without warmup); `steps` is steps per epoch."""
    if config.warmup is None:
        return 0
    if config.warmup.epochs is not None:
        return config.warmup.epochs * (steps if config.interval == "step" else 1)
    return config.warmup.steps or 0  # set: a warmup has steps or epochs


def build_scheduler(
    config: SchedulerConfig | None,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps: int,
    max_steps: int | None = None,
    key: str = "scheduler",
) -> lr_scheduler.LRScheduler | None:
    """The configured scheduler (with warmup through SequentialLR), or None for a constant lr."""
    if config is None:
        return None
    length = schedule_length(config, epochs=epochs, steps=steps, max_steps=max_steps)
    warmup = warmup_length(config, steps)
    kwargs = per_group_lrs(filled_arguments(config, length, warmup, key=key), config, optimizer)
    if warmup == 0 or config.warmup is None:
        return registry.build("schedulers", config.name, kwargs, key=key, optimizer=optimizer)
    if config.name == "ReduceLROnPlateau":
        raise UserError(f"{key}.warmup: not available with ReduceLROnPlateau")
    warmup_scheduler = lr_scheduler.LinearLR(
        optimizer, start_factor=config.warmup.start_factor, total_iters=warmup
    )
    main = registry.build("schedulers", config.name, kwargs, key=key, optimizer=optimizer)
    return lr_scheduler.SequentialLR(optimizer, [warmup_scheduler, main], milestones=[warmup])


def per_group_lrs(
    kwargs: dict[str, Any], config: SchedulerConfig, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """OneCycleLR's `max_lr` (CyclicLR's `base_lr`, `max_lr`) given as one number, as one per
    group in the ratio of the group's lr to the optimizer's: a rule's lr and layer decay scale
    the cycle as they scale a multiplicative schedule. Unchanged where every group has the
    optimizer's lr (before any scheduler has changed it: warmup is built after this)."""
    base = optimizer.defaults.get("lr")
    if not isinstance(base, (int, float)) or not base:
        return kwargs
    ratios = [group["lr"] / base for group in optimizer.param_groups]
    if all(ratio == 1 for ratio in ratios):
        return kwargs
    for name in ABSOLUTE_LRS.get(config.name, ()):
        value = kwargs.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            kwargs[name] = [value * ratio for ratio in ratios]
    return kwargs


class ScheduleDriver:
    """The one place that decides when a scheduler steps: after each optimizer step
    (`interval: step`), after each whole epoch (`interval: epoch`), or on its monitor after
    validation (ReduceLROnPlateau). `fit`, `trainer schedule` and resume all step through it.
    """

    def __init__(
        self, scheduler: lr_scheduler.LRScheduler | None, config: SchedulerConfig | None
    ) -> None:
        self.scheduler = scheduler
        plateau = isinstance(scheduler, lr_scheduler.ReduceLROnPlateau)
        interval = config.interval if config is not None else "epoch"
        self.per_step = scheduler is not None and not plateau and interval == "step"
        self.per_epoch = scheduler is not None and not plateau and interval == "epoch"
        monitor = config.monitor if config is not None else None
        self.monitor = (monitor or "val/loss") if plateau else None

    def after_optimizer_step(self) -> None:
        if self.per_step and self.scheduler is not None:
            self.scheduler.step()

    def after_epoch(self, record: dict[str, Any] | None) -> None:
        """After a whole epoch's validation; a plateau scheduler needs the `record`."""
        if self.scheduler is None:
            return
        if self.monitor is not None and record is not None:
            self.scheduler.step(record[self.monitor])
        elif self.per_epoch:
            self.scheduler.step()

    def fast_forward(self, *, steps: int, epochs: int) -> int:
        """Step a new scheduler to where a run stopped; returns its `last_epoch`."""
        if self.scheduler is None:
            return 0
        if self.monitor is not None:
            self.scheduler.last_epoch = epochs
            return epochs
        count = steps if self.per_step else epochs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            for _ in range(count):
                self.scheduler.step()
        return count

    def state_dict(self) -> dict[str, Any] | None:
        return self.scheduler.state_dict() if self.scheduler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scheduler is not None and state is not None:
            self.scheduler.load_state_dict(state)


def schedule_for(
    spec: OptimizerSpec,
    optimizer: torch.optim.Optimizer,
    settings: TrainerConfig,
    *,
    steps: int,
) -> ScheduleDriver:
    """An optimizer's scheduler, its length filled in from the run (`steps` optimizer steps
    an epoch), behind its driver: what `fit` steps and `trainer schedule` previews."""
    scheduler = build_scheduler(
        spec.scheduler,
        optimizer,
        epochs=settings.epochs,
        steps=steps,
        max_steps=settings.max_steps,
        key=f"{spec.key}scheduler",
    )
    return ScheduleDriver(scheduler, spec.scheduler)


def warnings_for(config: SchedulerConfig | None) -> list[str]:
    """Advice on a scheduler config that works but is likely not what was meant."""
    if config is not None and config.name in PER_BATCH and config.interval == "epoch":
        return [
            f"warning: scheduler.interval is epoch, but {config.name} is meant to step per "
            "batch: it will change the lr once per epoch; set scheduler.interval: step"
        ]
    return []
