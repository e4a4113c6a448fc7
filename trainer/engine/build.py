"""Building a run from its config: checks first, then model → param groups → optimizers →
schedulers (the order resume relies on), the loss, the scalers, the step and the loaders."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trainer.components import registry
from trainer.components.checks import check_components
from trainer.components.data import Loader, batches_per_epoch, build_loaders, dataset_notes
from trainer.components.models import build_model, load_initial_weights
from trainer.components.optim import (
    PlannedOptimizer,
    build_loss,
    build_optimizer,
    check_group_options,
    fill_options,
    needs_closure,
    plan_optimizers,
)
from trainer.components.param_groups import GroupsReport, held_norms
from trainer.components.schedulers import ScheduleDriver, schedule_for, steps_per_epoch
from trainer.config import Config, OptimizerSpec, StepConfig, ema_name, monitors
from trainer.engine.device import check_precision, grad_scaler
from trainer.engine.distributed import SINGLE, Distributed
from trainer.engine.ema import EmaWeights
from trainer.engine.handles import Clipping, OptimizerHandle, Optimizers, Window
from trainer.engine.sharding import Unit, checkpoint_activations, fsdp_problems, shard
from trainer.engine.steps import Metrics, Step, ValStep
from trainer.errors import UserError, did_you_mean
from trainer.state.checkpoint import seed_everything

if TYPE_CHECKING:
    from trainer.components.metrics import MetricSet


@dataclass
class Run:
    """What one training run is made of; built once, from the config, by `build_run`."""

    config: Config
    device: torch.device
    module: torch.nn.Module  # the model as built: its state_dict has the plain names
    model: torch.nn.Module  # what the step calls: `module`, DDP- or compile-wrapped
    optimizers: Optimizers
    planned: list[PlannedOptimizer]
    loss_fn: torch.nn.Module
    step: Step
    val_step: ValStep | None
    metrics: MetricSet | None  # the configured validation metrics
    train_loader: Loader
    val_loader: Loader
    notes: list[str]  # what building had to say (init_from's report, the datasets' notes)
    held_norms: list[torch.nn.Module]  # frozen norm layers kept in eval mode in training
    units: list[Unit]  # trainer.strategy: fsdp: the modules sharded, the root last; else []
    checkpointed: list[str]  # modules whose activations are recomputed in backward
    ema: EmaWeights | None = None  # trainer.ema's average of `module` (fit makes it)

    @property
    def sharded(self) -> bool:
        """The parameters are FSDP2 shards (DTensors): trainer.strategy: fsdp."""
        return bool(self.units)

    def train_mode(self) -> None:
        """model.train(), the frozen norm layers left in eval mode (freeze_norm_stats)."""
        self.model.train()
        for layer in self.held_norms:
            layer.eval()

    @property
    def reports(self) -> dict[str, GroupsReport]:
        return {plan.spec.name: plan.report for plan in self.planned}

    def manifest(self) -> dict[str, dict[str, list[str]]]:
        """Optimizer name → group → parameter names."""
        return {plan.spec.name: plan.report.manifest() for plan in self.planned}

    def rebuild_schedule(self, name: str) -> ScheduleDriver:
        """Optimizer `name`'s scheduler built anew from the config, at the start."""
        spec = next(plan.spec for plan in self.planned if plan.spec.name == name)
        return build_schedule(spec, self.optimizers[name].optimizer, self.config, self.train_loader)


def check_before_building(
    config: Config, device: torch.device, job: Distributed = SINGLE, *, writes: bool = True
) -> None:
    """Every problem the config can be found to have before anything is built. A run that
    `writes` nothing (lr-find) has no run directory, loggers or monitors to check."""
    from trainer.components.metrics import check_metrics
    from trainer.runs.loggers import check_loggers
    from trainer.runs.rundir import check_out_dir

    check_precision(config.trainer.precision, device)
    problems = check_components(config) + fsdp_problems(config, device)
    if writes:
        problems += check_out_dir(run_base_of(config)) + check_loggers(config)
    problems += check_metrics(config)
    problems += check_steps(config) if writes else step_problems(config)
    if not problems:
        for spec in config.optimizer_specs():
            problems += _closure_problems(config, spec, job)
    if problems:
        raise UserError(list(dict.fromkeys(problems)))


def run_base_of(config: Config) -> Path:
    """Where the run directory goes: trainer.out_dir, or runs/<name>."""
    return Path(config.trainer.out_dir or f"runs/{config.name}")


def check_steps(config: Config) -> list[str]:
    """The step and val_step resolve and take their options; then the monitors."""
    problems = step_problems(config)
    return problems + ([] if problems else unlogged_monitors(config))


def step_problems(config: Config) -> list[str]:
    """The step and val_step resolve and take their options; the step's optimizers exist."""
    problems = []
    for key in ("step", "val_step"):
        section = getattr(config, key)
        if section is not None:
            problems += registry.check_component("steps", section.name, section.kwargs, key=key)
    if not problems:
        needs = getattr(registry.resolve("steps", config.step.name, key="step.name"),
                        "needs_optimizers", ())  # fmt: skip
        names = [spec.name for spec in config.optimizer_specs()]
        missing = [name for name in needs if name not in names]
        if missing:
            problems.append(
                f"optimizers: step {config.step.name!r} needs optimizers named "
                f"{', '.join(needs)}; this config has {', '.join(names)}"
            )
    return problems


def unlogged_monitors(config: Config) -> list[str]:
    """Monitors of metrics the run will not log: known before training where its steps
    declare what they log; otherwise found after the first epoch."""
    known = epoch_metrics(config)
    no_validation = config.step.name != "supervised" and config.val_step is None
    problems = []
    for key, (monitor, _) in monitors(config).items():
        if no_validation and monitor.startswith("val/"):
            problems.append(
                f"{key}: {monitor!r} is not logged: step {config.step.name!r} has no val_step, "
                "so the run logs no val/ metrics (set val_step, or monitor a train/<key> the "
                "step returns)"
            )
        elif known is not None and monitor not in known:
            problems.append(
                f"{key}: {monitor!r} is not logged by this run{did_you_mean(monitor, known)} "
                f"(its epoch metrics: {', '.join(known)})"
            )
    return problems


def epoch_metrics(config: Config) -> list[str] | None:
    """The metrics an epoch record will hold (val/acc where targets are class indices,
    val/perplexity where they are sequences of them), or None where a step or val_step does
    not declare what it returns (`logs`)."""
    steps = [registry.resolve("steps", section.name, key=f"{key}.name")
             for key, section in (("step", config.step), ("val_step", config.val_step))
             if section is not None]  # fmt: skip
    declared: list[Sequence[str]] = []
    for step in steps:
        logs = getattr(step, "logs", None)
        if logs is None:
            return None
        declared.append(logs)
    trained = [f"train/{name}" for name in declared[0]] + ["train/samples_per_s"]
    if config.trainer.skip_nonfinite:
        trained.append("train/skipped")
    if config.val_step is not None:
        validated = [f"val/{name}" for name in declared[1]]
    elif config.step.name == "supervised":
        validated = [
            "val/loss",
            "val/acc",
            "val/perplexity",
            *(m.logged_as for m in config.metrics),
        ]
    else:
        return trained
    with_ema = [ema_name(name) for name in validated] if config.trainer.ema else []
    return [*trained, *validated, *with_ema]


def _closure_problems(config: Config, spec: OptimizerSpec, job: Distributed) -> list[str]:
    key = f"{spec.key}optimizer.name"
    if not needs_closure(spec.optimizer, key=f"{spec.key}optimizer"):
        return []
    name, problems = spec.optimizer.name, []
    if config.trainer.accumulate > 1:
        problems.append(
            f"trainer.accumulate: {name} evaluates the loss itself in "
            "step(closure), so it cannot accumulate gradients; use accumulate: 1"
        )
    if job.world_size > 1:
        problems.append(
            f"{key}: {name} evaluates the loss as often as its own line search decides, "
            "which differs between processes under torchrun; use one process"
        )
    if config.trainer.precision == "fp16":
        problems.append(
            f"trainer.precision: fp16 needs a GradScaler, which {name}'s "
            "step(closure) does not support; use bf16 or fp32"
        )
    if config.trainer.sharded:
        problems.append(
            f"{key}: {name} steps with a closure that re-evaluates the loss, which "
            "trainer.strategy: fsdp does not support; use another optimizer, or strategy: ddp"
        )
    if config.several_optimizers:
        problems.append(
            f"{key}: {name} re-evaluates the loss itself, which a step shared with other "
            "optimizers cannot offer; use it as the only optimizer"
        )
    return problems


def build_step(config: StepConfig, *, key: str) -> Callable[..., Metrics]:
    """The step (or val_step) callable with its config options bound."""
    fn = registry.resolve("steps", config.name, key=f"{key}.name")
    return functools.partial(fn, **config.kwargs) if config.kwargs else fn


def build_val_step(config: Config) -> ValStep | None:
    """The config's val_step with its options bound, or None when it names none."""
    return build_step(config.val_step, key="val_step") if config.val_step is not None else None


def build_schedule(
    spec: OptimizerSpec, optimizer: torch.optim.Optimizer, config: Config, train_loader: Loader
) -> ScheduleDriver:
    """An optimizer's scheduler, its length filled in from the run, behind its driver."""
    settings = config.trainer
    steps = steps_per_epoch(batches_per_epoch(train_loader), settings.accumulate)
    return schedule_for(spec, optimizer, settings, steps=steps)


def build_run(
    config: Config,
    device: torch.device,
    job: Distributed = SINGLE,
    *,
    schedules: bool = True,
    sharded: bool = False,
) -> Run:
    """Build in the order resume relies on: model → param groups → optimizers → schedulers.

    Every rank builds the same model from the same seed; each then gets its own RNG stream.
    `schedules=False` (lr-find) builds no scheduler: the lrs stay where the caller sets them.
    `sharded` (fit under trainer.strategy: fsdp, in a process group): the model is sharded
    before the optimizers are built, so they hold the shards.
    """
    seed_everything(config.seed)
    module = build_model(config.model)
    notes = load_initial_weights(module, config.model.init_from) if config.model.init_from else []
    module = module.to(device)
    if config.trainer.channels_last:
        module = module.to(memory_format=torch.channels_last)
    checkpointed = checkpoint_activations(module, config.trainer.activation_checkpointing)
    units = shard(module, config, device) if sharded else []
    planned = plan_optimizers(module, config)
    problems = [problem for plan in planned for problem in check_group_options(plan)]
    if problems:
        raise UserError(problems)
    optimizers = {plan.spec.name: build_optimizer(plan.spec, plan.groups) for plan in planned}
    for plan in planned:
        fill_options(plan)
    train_loader, val_loader = build_loaders(
        config.data, seed=config.seed, device=device, rank=job.rank, world_size=job.world_size
    )
    if job.enabled:
        seed_everything(config.seed + job.rank)
    from trainer.components.metrics import build_metrics

    handles = build_handles(
        config, planned, optimizers, device, job, train_loader, schedules, sharded=sharded
    )
    return Run(
        config=config,
        device=device,
        module=module,
        model=module,
        optimizers=handles,
        planned=planned,
        loss_fn=build_loss(config.loss).to(device),
        step=build_step(config.step, key="step"),
        val_step=build_val_step(config),
        metrics=build_metrics(config.metrics, device=device),
        train_loader=train_loader,
        val_loader=val_loader,
        notes=[*notes, *dataset_notes(train_loader, val_loader)],
        held_norms=(
            list(held_norms(module).values()) if config.param_groups.freeze_norm_stats else []
        ),
        units=units,
        checkpointed=checkpointed,
    )


def build_handles(
    config: Config,
    planned: list[PlannedOptimizer],
    optimizers: dict[str, torch.optim.Optimizer],
    device: torch.device,
    job: Distributed,
    train_loader: Loader,
    schedules: bool,
    *,
    sharded: bool = False,
) -> Optimizers:
    """Each optimizer behind its handle: scheduler (or none), scaler, clipping, one window."""
    settings, window = config.trainer, Window()
    custom_step = config.step.name != "supervised"
    handles = {
        plan.spec.name: OptimizerHandle(
            plan.spec.name,
            optimizers[plan.spec.name],
            schedule=(
                build_schedule(plan.spec, optimizers[plan.spec.name], config, train_loader)
                if schedules
                else ScheduleDriver(None, None)
            ),
            scaler=grad_scaler(settings.precision, device),
            window=window,
            clipping=Clipping(plan.spec.clip_grad_norm, plan.spec.clip_grad_value),
            closure=needs_closure(plan.spec.optimizer, key=f"{plan.spec.key}optimizer"),
            skip_nonfinite=settings.skip_nonfinite,
            own_grads_only=len(planned) > 1,
            # A custom step calls submodules past DDP's hooks: its grads are synced here
            # (FSDP reduces every unit's grads itself).
            sync_grads=job.enabled and custom_step and not sharded,
            sharded=sharded,
            job=job,
            device=device,
        )
        for plan in planned
    }
    return Optimizers(handles, window)
