"""`trainer fit`: the training loop, readable top to bottom.

Building, files and printing live in their own modules; what stays here is the order of
things. Per batch: zero_grad at the start of a window of `accumulate` batches, forward,
backward, and at the window's end (clip) → optimizer.step → scheduler.step for
`interval: step`. Per epoch: validation → scheduler.step for `interval: epoch` (or on the
monitor for ReduceLROnPlateau) → checkpoints → early stopping.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel

from trainer import distributed
from trainer.build import Run, build_run, check_before_building
from trainer.checkpoint import make_checkpoint, rng_state, save_checkpoints
from trainer.config import Config, config_to_yaml
from trainer.data import batches_per_epoch, start_epoch
from trainer.device import autocast, pick_device
from trainer.distributed import Distributed
from trainer.errors import Interrupted, TrainingError, UserError
from trainer.evaluate import evaluate
from trainer.interrupt import StopRequests
from trainer.monitor import EarlyStopping, improved_best
from trainer.report import Reporter
from trainer.resume import Position, find_checkpoint, restore
from trainer.rundir import MetricsFile, fresh_run_dir, run_dir_of
from trainer.schedulers import warnings_for


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
    """Train as `config` says (from a checkpoint with `resume`); returns the run and metrics.

    Under torchrun every process calls this; rank 0 alone prints and writes.
    """
    job = distributed.from_environment()
    report = Reporter(console if job.is_main else Console(file=io.StringIO()))
    device, reason = pick_device(
        config.trainer.device, local_rank=job.local_rank, world_size=job.world_size
    )
    check_before_building(config, device, job)
    distributed.start(job, device, timeout_s=config.trainer.dist_timeout)
    try:
        return train(
            config,
            job,
            device,
            reason,
            resume=resume,
            reset_optimizer=reset_optimizer,
            report=report,
        )
    finally:
        distributed.stop()


def train(
    config: Config,
    job: Distributed,
    device: torch.device,
    reason: str,
    *,
    resume: str | None,
    reset_optimizer: bool,
    report: Reporter,
) -> FitResult:
    """The body of `fit`, once the device (and the process group) are set up."""
    run_base = Path(config.trainer.out_dir or f"runs/{config.name}")
    checkpoint_path, checkpoint, notes = None, None, []
    if resume:
        found = find_checkpoint(resume, run_base=run_base) if job.is_main else None
        checkpoint_path, checkpoint, notes = job.broadcast(found)
    report.device(device, reason)
    run = build_run(config, device, job)
    report.groups(run.groups)
    notes = run.notes + notes

    position = Position()
    if checkpoint is not None:
        position, run.scheduler, restored = restore(
            checkpoint,
            model=run.module,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            scaler=run.scaler,
            config=config,
            manifest=run.groups.manifest(),
            reset_optimizer=reset_optimizer,
            rebuild_scheduler=run.rebuild_scheduler,
            rank=job.rank,
            world_size=job.world_size,
        )
        notes += [
            f"resumed from {checkpoint_path}: epoch {position.epoch}, step "
            f"{position.step}, batch {position.batch_in_epoch} of the next epoch",
            *restored,
        ]
    run_dir = run_dir_of(checkpoint_path) if checkpoint_path else None
    if checkpoint_path and run_dir is None:
        notes.append(f"{checkpoint_path} is not in a run's checkpoints/: a new run directory")
    if run_dir is None:
        run_dir = job.broadcast(fresh_run_dir(run_base) if job.is_main else None)
        if job.is_main:
            (run_dir / "config.yaml").write_text(config_to_yaml(config), encoding="utf-8")
    settings = config.trainer
    if job.enabled:
        global_batch = job.world_size * config.data.batch_size * settings.accumulate
        notes.append(
            f"distributed: {job.world_size} processes ({dist.get_backend()}), global "
            f"batch {job.world_size} x {config.data.batch_size} x {settings.accumulate}"
            f" = {global_batch}"
        )
    for note in [*notes, *warnings_for(config.scheduler), f"run directory: {run_dir}"]:
        report.note(note)
    if job.enabled:
        run.model = DistributedDataParallel(
            run.module, device_ids=[device.index] if device.type == "cuda" else None
        )
    if settings.compile:
        run.model = torch.compile(run.model)
    metrics_file = MetricsFile(run_dir / "metrics.jsonl", enabled=job.is_main)

    batches = batches_per_epoch(run.train_loader)
    best, record = position.best, {}
    stopping = (
        EarlyStopping(**settings.early_stopping.model_dump()) if (settings.early_stopping) else None
    )
    if stopping and checkpoint is not None and checkpoint.get("early_stopping"):
        stopping.load_state_dict(checkpoint["early_stopping"])
    samples_per_batch = config.data.batch_size * job.world_size

    def save(epoch_done: int, batch_in_epoch: int, epoch_loss: float, is_best: bool) -> None:
        rngs = job.gather(rng_state())  # every rank's RNG, for an exact resume on each
        if not job.is_main:
            return
        checkpoint = make_checkpoint(
            model=run.module,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            scaler=run.scaler,
            epoch=epoch_done,
            step=position.step,
            batch_in_epoch=batch_in_epoch,
            samples_in_epoch=batch_in_epoch * samples_per_batch,
            epoch_loss=epoch_loss,
            config=config,
            groups=run.groups.manifest(),
            metrics=record,
            best=best,
            early_stopping=stopping.state_dict() if stopping else None,
            rngs=rngs,
        )
        save_checkpoints(run_dir / "checkpoints", checkpoint, config.checkpoint, is_best=is_best)

    def log(step_record: dict[str, Any], batch: int, samples_per_s: float) -> None:
        metrics_file.write(step_record)
        report.log(step_record, batch=batch, batches=batches, samples_per_s=samples_per_s)

    with StopRequests() as stop:
        for epoch in range(position.epoch + 1, settings.epochs + 1):
            skip_samples = position.samples_in_epoch if epoch == position.epoch + 1 else 0
            skip = skip_samples // samples_per_batch
            report.start_epoch(epoch, settings.epochs, batches, done=skip)
            lrs = learning_rates(run.optimizer)  # the lr of the epoch's first step
            trained = train_epoch(
                run,
                job,
                position,
                epoch,
                skip=skip,
                skip_samples=skip_samples,
                stop=stop,
                report=report,
                log=log,
                save_mid_epoch=lambda batch, loss, e=epoch: save(e - 1, batch, loss, False),
            )
            if trained.stopped_by_signal:
                report.stop()
                raise Interrupted(str(run_dir / "checkpoints" / "last.pt"))

            # Validation, then the epoch-interval scheduler (the plateau one on its monitor).
            record = {
                "epoch": epoch,
                "step": position.step,
                "train/loss": trained.loss_sum / max(trained.batches - trained.skipped, 1),
                **evaluate(
                    run.model, run.val_loader, run.loss_fn, device, settings.precision, job=job
                ),
                **lrs,
                "train/samples_per_s": trained.samples * job.world_size / trained.seconds,
            }
            check_finite(record["train/loss"], position.step)
            check_monitors(config, record)
            whole_epoch = trained.batches == trained.epoch_batches
            plateau = isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
            if whole_epoch and (
                plateau or (run.scheduler and config.scheduler.interval == "epoch")
            ):
                if plateau:
                    run.scheduler.step(record[config.scheduler.monitor or "val/loss"])
                else:
                    run.scheduler.step()
            metrics_file.write(record)
            report.end_epoch(record)

            best = improved_best(best, record, config.checkpoint.monitor, config.checkpoint.mode)
            is_best = best is not None and best["epoch"] == epoch
            if whole_epoch:
                save(epoch, 0, 0.0, is_best)
            else:  # stopped by trainer.max_steps: a mid-epoch checkpoint resumes exactly
                save(epoch - 1, trained.batches, trained.loss_sum, is_best)
            if settings.max_steps is not None and position.step >= settings.max_steps:
                report.note(f"trainer.max_steps={settings.max_steps} reached")
                break
            if stopping is not None and stopping.update(record):
                report.note(
                    f"early stopping: {stopping.monitor} did not improve by "
                    f"{stopping.min_delta} for {stopping.patience} epochs"
                )
                break
            if job.any(stop.requested, device) and epoch < settings.epochs:
                raise Interrupted(str(run_dir / "checkpoints" / "last.pt"))

    metrics_file.close()
    if position.epoch >= settings.epochs:
        report.note(
            f"nothing to train: the checkpoint has {position.epoch} of "
            f"trainer.epochs={settings.epochs} epochs; raise trainer.epochs to go on"
        )
    report.note(f"done: step {position.step}; run directory {run_dir}")
    return FitResult(
        run_dir=run_dir,
        epoch=record.get("epoch", position.epoch),
        step=position.step,
        metrics=record,
    )


@dataclass
class EpochResult:
    loss_sum: float  # summed batch losses of the epoch (with those before a resume)
    batches: int  # batches of the epoch trained so far (by this process)
    epoch_batches: int  # batches of the whole epoch (of this process)
    samples: int  # samples trained in this call (by this process)
    seconds: float
    stopped_by_signal: bool
    skipped: int = 0  # batches skip_nonfinite left out


def train_epoch(
    run: Run,
    job: Distributed,
    position: Position,
    epoch: int,
    *,
    skip: int,
    skip_samples: int,
    stop: StopRequests,
    report: Reporter,
    log: Callable[[dict[str, Any], int, float], None],
    save_mid_epoch: Callable[[int, float], None],
) -> EpochResult:
    """One epoch of optimizer steps from batch `skip` on; advances `position.step`."""
    config, settings, device = run.config, run.config.trainer, run.device
    model, optimizer, scaler, scheduler = run.model, run.optimizer, run.scaler, run.scheduler
    step_scheduler = (
        scheduler is not None
        and config.scheduler.interval == "step"
        and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    )
    every_steps, max_steps = config.checkpoint.every_steps, settings.max_steps
    accumulate, trainable = settings.accumulate, run.trainable
    batches = skip + start_epoch(
        run.train_loader, epoch, seed=config.seed, skip_samples=skip_samples
    )
    window_loss = torch.zeros((), device=device)  # summed on the device; read at sync points
    epoch_loss = position.epoch_loss if skip else 0.0
    synced, skipped, samples, batch = skip, 0, 0, skip - 1
    window_skipped = skipped_total = 0  # batches skip_nonfinite left out
    grad_norm = None
    model.train()
    started = time.perf_counter()

    def forward_backward(
        inputs: torch.Tensor,
        targets: torch.Tensor,
        divide: int,
        sync: bool = True,
        may_skip: bool = True,
    ) -> torch.Tensor | None:
        """Forward and backward; None, and no backward, for a loss skip_nonfinite skips."""
        # Under DDP, gradients are all-reduced only on the window's last backward.
        with contextlib.nullcontext() if sync or not job.enabled else model.no_sync():
            with autocast(settings.precision, device):
                loss = run.loss_fn(model(inputs), targets)
            # skip_nonfinite costs a host sync per batch, by choice; all ranks agree.
            skip = may_skip and settings.skip_nonfinite
            if skip and job.any(not bool(torch.isfinite(loss)), device):
                return None
            scaler.scale(loss / divide if divide > 1 else loss).backward()
        return loss

    def clip(measure: bool) -> torch.Tensor | None:
        """Clip as configured; returns the pre-clip grad norm when it is known or `measure`d."""
        if settings.clip_grad_norm is None and settings.clip_grad_value is None:
            return None
        scaler.unscale_(optimizer)
        if settings.clip_grad_norm is not None:
            return torch.nn.utils.clip_grad_norm_(trainable, settings.clip_grad_norm)
        norm = None
        if measure:
            norm = torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None])
        torch.nn.utils.clip_grad_value_(trainable, settings.clip_grad_value)
        return norm

    for batch, (inputs, targets) in enumerate(run.train_loader, start=skip):
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if settings.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        samples += inputs.shape[0]
        report.advance()
        logging = (position.step + 1) % settings.log_every == 0
        stepped = True

        if run.closure:
            # LBFGS-style: the optimizer re-evaluates the loss itself, several times a step.
            def closure(x: torch.Tensor = inputs, y: torch.Tensor = targets) -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                loss = forward_backward(x, y, 1, may_skip=False)
                clip(False)
                return loss

            window_loss += optimizer.step(closure).detach()
        else:
            # A window of `accumulate` batches: zero the grads at its start, step at its end.
            window_start = batch - batch % accumulate
            window = min(accumulate, batches - window_start)
            window_end = batch + 1 == window_start + window
            if batch == window_start:
                optimizer.zero_grad(set_to_none=True)
                window_skipped = 0
            loss = forward_backward(inputs, targets, window, sync=window_end)
            if loss is None:
                skipped, window_skipped, skipped_total = (
                    skipped + 1,
                    window_skipped + 1,
                    skipped_total + 1,
                )
            else:
                window_loss += loss.detach()
            if not window_end:
                continue
            # Nothing to step with: all of the window skipped, or (DDP) grads left unsynced.
            stepped = window_skipped == 0 or (window_skipped < window and not job.enabled)
            if stepped:
                grad_norm = clip(logging)
                # fp16: did the scaler skip the step (inf grads)? Two host syncs, so only
                # asked when a per-step scheduler needs the answer.
                scale = scaler.get_scale() if scaler.is_enabled() and step_scheduler else None
                scaler.step(optimizer)
                scaler.update()
                stepped = scale is None or scaler.get_scale() >= scale
        position.step += 1
        lrs = learning_rates(optimizer) if logging else None
        if step_scheduler and stepped:
            scheduler.step()

        last_batch = batch + 1 == batches
        reached_max = max_steps is not None and position.step >= max_steps
        save_now = every_steps is not None and position.step % every_steps == 0
        # A stop request is acted on by all ranks at once: checked every step alone, at
        # the sync points (log_every, every_steps) under DDP.
        stopping = not last_batch and (
            job.any(stop.requested, device)
            if logging or save_now
            else stop.requested and not job.enabled
        )
        if logging or (not last_batch and (stopping or reached_max or save_now)):
            total = job.sum_(window_loss).item() / job.world_size  # the hot path's host sync
            check_finite(total, position.step)
            mean = total / max(batch + 1 - synced - skipped, 1)
            epoch_loss += total
            synced, skipped = batch + 1, 0
            window_loss.zero_()
        if logging:
            record = {"epoch": epoch, "step": position.step, "train/loss": mean, **lrs}
            if grad_norm is not None:
                record["train/grad_norm"] = float(grad_norm)
            log(record, batch + 1, samples * job.world_size / (time.perf_counter() - started))
        if last_batch:
            break
        if stopping:
            save_mid_epoch(batch + 1, epoch_loss)
            return EpochResult(epoch_loss, batch + 1, batches, samples, 0.0, True, skipped_total)
        if reached_max:
            break  # fit validates, then writes the mid-epoch checkpoint
        if save_now:
            save_mid_epoch(batch + 1, epoch_loss)

    epoch_loss += job.sum_(window_loss).item() / job.world_size
    seconds = time.perf_counter() - started
    return EpochResult(epoch_loss, batch + 1, batches, samples, seconds, False, skipped_total)


def check_monitors(config: Config, record: dict[str, Any]) -> None:
    """Every monitored metric must be in the epoch's record (val/acc needs class targets)."""
    monitors = {"checkpoint.monitor": config.checkpoint.monitor}
    if config.scheduler and config.scheduler.name == "ReduceLROnPlateau":
        monitors["scheduler.monitor"] = config.scheduler.monitor or "val/loss"
    if config.trainer.early_stopping:
        monitors["trainer.early_stopping.monitor"] = config.trainer.early_stopping.monitor
    problems = [
        f"{key}: {monitor!r} is not logged by this run (its epoch metrics: "
        f"{', '.join(k for k in record if '/' in k and not k.startswith('lr/'))})"
        for key, monitor in monitors.items()
        if monitor not in record
    ]
    if problems:
        raise UserError(problems)


def check_finite(loss: float, step: int) -> None:
    """Stop on a NaN or inf loss; the last checkpoint written stays the last good one."""
    if not math.isfinite(loss):
        raise TrainingError(
            f"train/loss is {loss} by step {step}: training stopped, the last good checkpoint "
            "is kept (set trainer.skip_nonfinite: true to skip such steps instead)"
        )


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """`lr/<group>` for every param group."""
    return {f"lr/{group['name']}": float(group["lr"]) for group in optimizer.param_groups}
