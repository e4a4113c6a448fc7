"""`trainer fit`: the training loop, readable top to bottom.

Building, files and printing live in their own modules; what stays here is the order of
things: zero_grad → forward → backward → (clip) → step per window of batches, the scheduler
per step or per epoch, validation and checkpoints per epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from trainer.checkpoint import make_checkpoint, save_checkpoints, seed_everything
from trainer.config import Config, config_to_yaml
from trainer.data import build_loaders, start_epoch
from trainer.device import autocast, check_precision, grad_scaler, pick_device
from trainer.errors import UserError
from trainer.models import build_model
from trainer.optim import build_loss, build_optimizer, build_scheduler, optimizer_defaults
from trainer.param_groups import build_param_groups
from trainer.registry import check_components
from trainer.report import Reporter
from trainer.rundir import MetricsFile, fresh_run_dir


@dataclass
class FitResult:
    run_dir: Path
    epoch: int
    step: int
    metrics: dict[str, Any]


def fit(config: Config, *, console: Console | None = None) -> FitResult:
    """Train as `config` says; returns the run directory and the last epoch's metrics."""
    report = Reporter(console)
    device, reason = pick_device(config.trainer.device)
    check_precision(config.trainer.precision, device)
    problems = check_components(config)
    if problems:
        raise UserError(problems)
    report.device(device, reason)

    # Build: model → param groups → optimizer → scheduler (the order resume relies on).
    seed_everything(config.seed)
    model = build_model(config.model).to(device)
    groups, groups_report = build_param_groups(
        model, optimizer_defaults(config.optimizer), config.param_groups
    )
    optimizer = build_optimizer(config.optimizer, groups)
    scheduler = build_scheduler(config.scheduler, optimizer)
    loss_fn = build_loss(config.loss).to(device)
    scaler = grad_scaler(config.trainer.precision, device)
    train_loader, val_loader = build_loaders(config.data, seed=config.seed, device=device)
    report.groups(groups_report)

    run_dir = fresh_run_dir(Path(config.trainer.out_dir or f"runs/{config.name}"))
    (run_dir / "config.yaml").write_text(config_to_yaml(config), encoding="utf-8")
    metrics_file = MetricsFile(run_dir / "metrics.jsonl")
    report.note(f"run directory: {run_dir}")

    settings = config.trainer
    trainable = [p for group in groups for p in group["params"]]
    interval = config.scheduler.interval if config.scheduler else None
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    batches = len(train_loader)
    step, best, record = 0, None, {}
    window_loss = torch.zeros((), device=device)  # summed on the device; read every log_every

    for epoch in range(1, settings.epochs + 1):
        start_epoch(train_loader, epoch, seed=config.seed)
        report.start_epoch(epoch, settings.epochs, batches)
        model.train()
        epoch_loss, logged, samples = 0.0, 0, 0
        started = time.perf_counter()

        for batch, (inputs, targets) in enumerate(train_loader):
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            # Gradients add up over a window of `accumulate` batches (shorter at the epoch's end).
            window_start = batch - batch % settings.accumulate
            window = min(settings.accumulate, batches - window_start)
            if batch == window_start:
                optimizer.zero_grad(set_to_none=True)

            with autocast(settings.precision, device):
                loss = loss_fn(model(inputs), targets)
            scaler.scale(loss / window if window > 1 else loss).backward()
            window_loss += loss.detach()
            samples += inputs.shape[0]
            report.advance()
            if batch + 1 < window_start + window:
                continue

            if settings.clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, settings.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            lrs = learning_rates(optimizer) if step % settings.log_every == 0 else None
            if interval == "step" and not plateau:
                scheduler.step()

            if lrs is not None:  # the only host sync of the hot path
                mean = window_loss.item() / (batch + 1 - logged)
                epoch_loss += mean * (batch + 1 - logged)
                logged = batch + 1
                window_loss.zero_()
                step_record = {"epoch": epoch, "step": step, "train/loss": mean, **lrs}
                metrics_file.write(step_record)
                report.log(
                    step_record,
                    batch=batch + 1,
                    batches=batches,
                    samples_per_s=samples / (time.perf_counter() - started),
                )

        epoch_loss += window_loss.item()
        window_loss.zero_()
        seconds = time.perf_counter() - started
        lrs = learning_rates(optimizer)

        # Validation, then the epoch-interval scheduler (the plateau one on its monitor).
        record = {
            "epoch": epoch,
            "step": step,
            "train/loss": epoch_loss / batches,
            **evaluate(model, val_loader, loss_fn, device, settings.precision),
            **lrs,
            "train/samples_per_s": samples / seconds,
        }
        if plateau:
            scheduler.step(record[config.scheduler.monitor or "val/loss"])
        elif interval == "epoch":
            scheduler.step()
        metrics_file.write(record)
        report.end_epoch(record)

        best = improved_best(best, record, config.checkpoint.monitor, config.checkpoint.mode)
        checkpoint = make_checkpoint(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            epoch=epoch,
            step=step,
            batch_in_epoch=0,
            config=config,
            groups=groups_report.manifest(),
            metrics=record,
            best=best,
        )
        save_checkpoints(
            run_dir / "checkpoints",
            checkpoint,
            config.checkpoint,
            is_best=best is not None and best["epoch"] == epoch,
        )

    metrics_file.close()
    report.note(f"done: {settings.epochs} epochs, {step} steps; run directory {run_dir}")
    return FitResult(run_dir=run_dir, epoch=settings.epochs, step=step, metrics=record)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """`lr/<group>` for every param group."""
    return {f"lr/{group['name']}": float(group["lr"]) for group in optimizer.param_groups}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Any,
    loss_fn: torch.nn.Module,
    device: torch.device,
    precision: str,
) -> dict[str, float]:
    """`val/loss`, and `val/acc` when targets are class indices; one host sync at the end."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count, classify = 0, True
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(precision, device):
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
        loss_sum += loss.float() * inputs.shape[0]
        count += inputs.shape[0]
        classify = (
            classify and not targets.is_floating_point() and outputs.dim() == targets.dim() + 1
        )
        if classify:
            correct += (outputs.argmax(dim=1) == targets).sum()
    metrics = {"val/loss": loss_sum.item() / max(count, 1)}
    if classify and count:
        metrics["val/acc"] = correct.item() / count
    return metrics


def improved_best(
    best: dict[str, Any] | None, record: dict[str, Any], monitor: str, mode: str
) -> dict[str, Any] | None:
    """The best-so-far entry after this epoch's record (unchanged if it did not improve)."""
    value = record.get(monitor)
    if value is None:
        return best
    if best is None or (value < best["value"] if mode == "min" else value > best["value"]):
        return {"monitor": monitor, "mode": mode, "value": value, "epoch": record["epoch"]}
    return best
