"""Previews: what `trainer groups` and `trainer schedule` show, planned without training.

The model is built on the meta device where it can be and the optimizers over it; schedulers
are stepped through their drivers as `trainer fit` steps them. The builders these plans use
(optim, schedulers) know nothing of previews.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.optim import lr_scheduler

from trainer.components.checks import check_components
from trainer.components.data import train_batches
from trainer.components.models import build_model
from trainer.components.optim import (
    PlannedOptimizer,
    build_optimizer,
    fill_options,
    plan_optimizers,
)
from trainer.components.schedulers import (
    ScheduleDriver,
    schedule_for,
    steps_per_epoch,
    warnings_for,
)
from trainer.config import Config
from trainer.errors import UserError


def plan_param_groups(config: Config) -> tuple[torch.nn.Module, list[PlannedOptimizer]]:
    """The model (on the meta device where it can be) and every optimizer's param groups.

    No weights are loaded and no data is touched, so a large torchvision model resolves fast.
    """
    problems = check_components(config, sections=("model", "optimizer"))
    if problems:
        raise UserError(problems)
    model_config = config.model
    kwargs = model_config.kwargs
    if kwargs.get("weights") is not None or kwargs.get("pretrained"):  # names need no weights
        unloaded = {"weights": None} if "weights" in kwargs else {"pretrained": False}
        model_config = type(model_config).model_validate({**model_config.model_dump(), **unloaded})
    try:
        with torch.device("meta"):
            model = build_model(model_config)
    except (NotImplementedError, RuntimeError, UserError):  # the registry names a library's
        model = build_model(model_config)  # refusal by key: off meta, a real one comes again
    planned = plan_optimizers(model, config)
    for plan in planned:
        fill_options(plan)
    return model, planned


def lr_table(
    drivers: dict[str, tuple[torch.optim.Optimizer, ScheduleDriver]],
    *,
    steps: int,
    per_step: bool,
    rows: int,
) -> dict[str, list[float]]:
    """The lr of every group for the first `rows` epochs (or optimizer steps) of the run, by
    stepping each optimizer's scheduler through its driver as `trainer fit` does, without
    training. Per epoch, a step scheduler shows the lr of the epoch's first step. Columns are
    group names (one optimizer) or `<optimizer>/<group>` (several)."""

    def lrs() -> dict[str, float]:
        several = len(drivers) > 1
        return {
            f"{name}/{group['name']}" if several else group["name"]: float(group["lr"])
            for name, (optimizer, _) in drivers.items()
            for group in optimizer.param_groups
        }

    table: dict[str, list[float]] = {column: [] for column in lrs()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping a scheduler without optimizer.step()
        for position in range(rows if per_step else rows * steps):
            index = position % steps  # the optimizer step's index in its epoch
            if per_step or index == 0:
                for column, lr in lrs().items():
                    table[column].append(lr)
            for _, driver in drivers.values():
                driver.after_optimizer_step()
            if index == steps - 1:
                for _, driver in drivers.values():
                    driver.after_epoch(None)
    return table


@dataclass
class SchedulePreview:
    """What `trainer schedule` shows: the lr table, the run's length in the table's unit
    (more than the table's when the preview is cut at its limit), and notes."""

    table: dict[str, list[float]]
    total: int
    notes: list[str]

    @property
    def cut(self) -> bool:
        return len(next(iter(self.table.values()), [])) < self.total


def plan_schedule(config: Config, *, per_step: bool, limit: int) -> SchedulePreview:
    """The lr table of a config without training (`trainer schedule`), and notes on it; at
    most `limit` optimizer steps are stepped through (whole epochs per epoch, at least one).

    The model and optimizers are built on the meta device; the training set is built only
    when the number of steps per epoch matters (a step interval, or `per_step`).
    """
    problems = check_components(config, sections=("optimizer", "scheduler"))
    if problems:
        raise UserError(problems)
    _, planned = plan_param_groups(config)
    settings, specs = config.trainer, [plan.spec for plan in planned]
    steps = 1
    if per_step or any(s.scheduler and s.scheduler.interval == "step" for s in specs):
        steps = steps_per_epoch(train_batches(config.data), settings.accumulate)
    drivers, notes = {}, []
    for plan in planned:
        optimizer = build_optimizer(plan.spec, plan.groups)
        driver = schedule_for(plan.spec, optimizer, settings, steps=steps)
        drivers[plan.spec.name] = (optimizer, driver)
        notes += warnings_for(plan.spec.scheduler)
        if isinstance(driver.scheduler, lr_scheduler.ReduceLROnPlateau):
            notes.append(
                "ReduceLROnPlateau lowers the lr on validation metrics; shown without any reduction"
            )
    if per_step:
        total = settings.epochs * steps
        total = min(total, settings.max_steps) if settings.max_steps else total
        rows = min(total, limit)
    else:
        total = settings.epochs
        rows = min(total, max(limit // steps, 1))
    unit = "step" if per_step else "epoch"
    if rows < total:
        notes.append(
            f"preview cut: the first {rows:,} of {total:,} {unit}s (at most --limit {limit:,} "
            "optimizer steps are computed; raise --limit to see more)"
        )
    table = lr_table(drivers, steps=steps, per_step=per_step, rows=rows)
    return SchedulePreview(table, total, notes)
