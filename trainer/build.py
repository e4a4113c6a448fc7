"""Building a run from its config: checks first, then model → param groups → optimizer →
scheduler (the order resume relies on), the loss, the scaler and the loaders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainer.checkpoint import seed_everything
from trainer.config import Config
from trainer.data import batches_per_epoch, build_loaders
from trainer.device import check_precision, grad_scaler
from trainer.distributed import SINGLE, Distributed
from trainer.errors import UserError
from trainer.models import build_model, load_initial_weights
from trainer.optim import build_loss, build_optimizer, needs_closure, optimizer_defaults
from trainer.param_groups import GroupsReport, build_param_groups
from trainer.registry import check_components
from trainer.schedulers import build_scheduler, steps_per_epoch


@dataclass
class Run:
    """What one training run is made of; built once, from the config, by `build_run`."""

    config: Config
    device: torch.device
    module: torch.nn.Module  # the model as built: its state_dict has the plain names
    model: torch.nn.Module  # what runs forward: `module`, or torch.compile(module)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    train_loader: Any
    val_loader: Any
    groups: GroupsReport
    closure: bool  # the optimizer's step() evaluates the loss itself (LBFGS)
    notes: list[str]  # what building had to say (init_from's report)

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def rebuild_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        settings = self.config.trainer
        return build_scheduler(
            self.config.scheduler,
            optimizer,
            epochs=settings.epochs,
            steps=steps_per_epoch(batches_per_epoch(self.train_loader), settings.accumulate),
            max_steps=settings.max_steps,
        )


def check_before_building(config: Config, device: torch.device, job: Distributed = SINGLE) -> None:
    """Every problem the config can be found to have before anything is built."""
    check_precision(config.trainer.precision, device)
    problems = check_components(config)
    if not problems and needs_closure(config.optimizer):
        name = config.optimizer.name
        if config.trainer.accumulate > 1:
            problems.append(
                f"trainer.accumulate: {name} evaluates the loss itself in "
                "step(closure), so it cannot accumulate gradients; use accumulate: 1"
            )
        if job.enabled:
            problems.append(
                f"optimizer.name: {name} evaluates the loss as often as its own "
                "line search decides, which differs between processes under "
                "torchrun; use one process"
            )
        if config.trainer.precision == "fp16":
            problems.append(
                f"trainer.precision: fp16 needs a GradScaler, which {name}'s "
                "step(closure) does not support; use bf16 or fp32"
            )
    if problems:
        raise UserError(problems)


def build_run(config: Config, device: torch.device, job: Distributed = SINGLE) -> Run:
    """Build in the order resume relies on: model → param groups → optimizer → scheduler.

    Every rank builds the same model from the same seed; each then gets its own RNG stream.
    """
    seed_everything(config.seed)
    module = build_model(config.model)
    notes = load_initial_weights(module, config.model.init_from) if config.model.init_from else []
    module = module.to(device)
    if config.trainer.channels_last:
        module = module.to(memory_format=torch.channels_last)
    groups, groups_report = build_param_groups(
        module,
        optimizer_defaults(config.optimizer),
        config.param_groups,
        optimizer=config.optimizer.name,
    )
    optimizer = build_optimizer(config.optimizer, groups)
    train_loader, val_loader = build_loaders(
        config.data, seed=config.seed, device=device, rank=job.rank, world_size=job.world_size
    )
    if job.enabled:
        seed_everything(config.seed + job.rank)
    run = Run(
        config=config,
        device=device,
        module=module,
        model=module,
        optimizer=optimizer,
        scheduler=None,
        scaler=grad_scaler(config.trainer.precision, device),
        loss_fn=build_loss(config.loss).to(device),
        train_loader=train_loader,
        val_loader=val_loader,
        groups=groups_report,
        closure=needs_closure(config.optimizer),
        notes=notes,
    )
    run.scheduler = run.rebuild_scheduler(optimizer)
    return run
