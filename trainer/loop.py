"""`trainer fit`: the training loop, readable top to bottom.

Building, files and printing live in their own modules; what stays here is the order of
things: zero_grad → forward → backward → (clip) → step per window of batches, the scheduler
per step or per epoch, validation and checkpoints per epoch, and where a resume picks up.
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
from trainer.errors import Interrupted, UserError
from trainer.interrupt import StopRequests
from trainer.models import build_model
from trainer.optim import build_loss, build_optimizer, build_scheduler, optimizer_defaults
from trainer.param_groups import build_param_groups
from trainer.registry import check_components
from trainer.report import Reporter
from trainer.resume import Position, find_checkpoint, restore
from trainer.rundir import MetricsFile, fresh_run_dir


@dataclass
class FitResult:
    run_dir: Path
    epoch: int
    step: int
    metrics: dict[str, Any]


def fit(
    config: Config,
    *,
    resume: str | None = None,
    reset_optimizer: bool = False,
    console: Console | None = None,
) -> FitResult:
    """Train as `config` says (from a checkpoint with `resume`); returns the run and metrics."""
    report = Reporter(console)
    device, reason = pick_device(config.trainer.device)
    check_precision(config.trainer.precision, device)
    problems = check_components(config)
    if problems:
        raise UserError(problems)
    run_base = Path(config.trainer.out_dir or f"runs/{config.name}")
    checkpoint_path, checkpoint, notes = (
        find_checkpoint(resume, run_base=run_base) if resume else (None, None, [])
    )
    report.device(device, reason)

    # Build: model → param groups → optimizer → scheduler (the order resume relies on).
    seed_everything(config.seed)
    model = build_model(config.model).to(device)
    groups, groups_report = build_param_groups(
        model,
        optimizer_defaults(config.optimizer),
        config.param_groups,
        optimizer=config.optimizer.name,
    )
    optimizer = build_optimizer(config.optimizer, groups)
    scheduler = build_scheduler(config.scheduler, optimizer)
    loss_fn = build_loss(config.loss).to(device)
    scaler = grad_scaler(config.trainer.precision, device)
    train_loader, val_loader = build_loaders(config.data, seed=config.seed, device=device)
    report.groups(groups_report)

    position = Position()
    if checkpoint is not None:
        position, scheduler, restored = restore(
            checkpoint,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            config=config,
            manifest=groups_report.manifest(),
            reset_optimizer=reset_optimizer,
            rebuild_scheduler=lambda opt: build_scheduler(config.scheduler, opt),
        )
        run_dir = checkpoint_path.parent.parent
        notes += [
            f"resumed from {checkpoint_path}: epoch {position.epoch}, step "
            f"{position.step}, batch {position.batch_in_epoch} of the next epoch",
            *restored,
        ]
    else:
        run_dir = fresh_run_dir(run_base)
        (run_dir / "config.yaml").write_text(config_to_yaml(config), encoding="utf-8")
    for note in notes:
        report.note(note)
    report.note(f"run directory: {run_dir}")
    metrics_file = MetricsFile(run_dir / "metrics.jsonl")

    settings = config.trainer
    trainable = [p for group in groups for p in group["params"]]
    interval = config.scheduler.interval if config.scheduler else None
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    batches = len(train_loader)
    step, best, record = position.step, position.best, {}
    window_loss = torch.zeros((), device=device)  # summed on the device; read every log_every

    def checkpoint_now(epoch: int, batch_in_epoch: int, epoch_loss: float) -> dict[str, Any]:
        return make_checkpoint(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            epoch=epoch,
            step=step,
            batch_in_epoch=batch_in_epoch,
            epoch_loss=epoch_loss,
            config=config,
            groups=groups_report.manifest(),
            metrics=record,
            best=best,
        )

    with StopRequests() as stop:
        for epoch in range(position.epoch + 1, settings.epochs + 1):
            skip = position.batch_in_epoch if epoch == position.epoch + 1 else 0
            start_epoch(train_loader, epoch, seed=config.seed, skip_batches=skip)
            report.start_epoch(epoch, settings.epochs, batches, done=skip)
            model.train()
            epoch_loss = position.epoch_loss if skip else 0.0
            logged, samples = skip, 0
            started = time.perf_counter()

            for batch, (inputs, targets) in enumerate(train_loader, start=skip):
                inputs = inputs.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                # Gradients add up over a window of `accumulate` batches (shorter at the end).
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

                every_steps = config.checkpoint.every_steps
                mid_epoch_save = batch + 1 < batches and (
                    stop.requested or (every_steps is not None and step % every_steps == 0)
                )
                if lrs is not None or mid_epoch_save:  # the only host syncs of the hot path
                    mean = window_loss.item() / (batch + 1 - logged)
                    epoch_loss += mean * (batch + 1 - logged)
                    logged = batch + 1
                    window_loss.zero_()
                if lrs is not None:
                    step_record = {"epoch": epoch, "step": step, "train/loss": mean, **lrs}
                    metrics_file.write(step_record)
                    report.log(
                        step_record,
                        batch=batch + 1,
                        batches=batches,
                        samples_per_s=samples / (time.perf_counter() - started),
                    )
                if mid_epoch_save:
                    save_checkpoints(
                        run_dir / "checkpoints",
                        checkpoint_now(epoch - 1, batch + 1, epoch_loss),
                        config.checkpoint,
                        is_best=False,
                    )
                if stop.requested and batch + 1 < batches:
                    report.stop()
                    raise Interrupted(str(run_dir / "checkpoints" / "last.pt"))

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
            save_checkpoints(
                run_dir / "checkpoints",
                checkpoint_now(epoch, 0, 0.0),
                config.checkpoint,
                is_best=best is not None and best["epoch"] == epoch,
            )
            if stop.requested and epoch < settings.epochs:
                raise Interrupted(str(run_dir / "checkpoints" / "last.pt"))

    metrics_file.close()
    if position.epoch >= settings.epochs:
        report.note(
            f"nothing to train: the checkpoint has {position.epoch} of "
            f"trainer.epochs={settings.epochs} epochs; raise trainer.epochs to go on"
        )
    report.note(f"done: epoch {settings.epochs}, step {step}; run directory {run_dir}")
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
        classify = classify and not targets.is_floating_point()
        classify = classify and outputs.dim() == targets.dim() + 1
        if classify:
            correct += (outputs.argmax(dim=1) == targets).sum()
    metrics = {"val/loss": loss_sum.item() / max(count, 1)}
    if classify and count:
        metrics["val/acc"] = correct.item() / count
    return metrics


def evaluate_checkpoint(config: Config, path: str) -> dict[str, float]:
    """Validation metrics of a checkpoint's weights (`trainer eval`)."""
    from trainer.checkpoint import load_checkpoint
    from trainer.resume import model_changes

    problems = check_components(config, sections=("model", "data", "loss"))
    if problems:
        raise UserError(problems)
    checkpoint = load_checkpoint(path)
    device, _ = pick_device(config.trainer.device)
    model = build_model(config.model, load_weights=False)
    mismatch = model_changes(checkpoint["model"], model)
    if mismatch:
        raise UserError([f"--checkpoint: {path} does not fit the configured model:", *mismatch])
    model.load_state_dict(checkpoint["model"])
    _, val_loader = build_loaders(config.data, seed=config.seed, device=device)
    loss_fn = build_loss(config.loss).to(device)
    return evaluate(model.to(device), val_loader, loss_fn, device, config.trainer.precision)


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
