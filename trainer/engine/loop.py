"""`trainer fit`: the training loop, readable top to bottom.

Building, files and printing live in their own modules; the step (`trainer.engine.steps`) and the
optimizer handles (`trainer.engine.handles`) own what happens to a batch. What stays here is the
order of things. Per batch: the step (forward, and `update(loss)` per optimizer: backward,
and at the end of a window of `accumulate` batches clip → step → zero_grad → per-step
scheduler). Per epoch: validation → epoch schedulers (plateau on its monitor) →
checkpoints → early stopping.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel

from trainer.components.schedulers import warnings_for
from trainer.config import Config, config_to_yaml, monitors
from trainer.engine import distributed
from trainer.engine.build import Run, build_run, check_before_building, run_base_of
from trainer.engine.device import batch_size, pick_device, to_device
from trainer.engine.distributed import Distributed
from trainer.engine.ema import EmaWeights
from trainer.engine.evaluate import validate, validate_ema
from trainer.engine.output import Output, update_counts
from trainer.engine.resume import find_checkpoint, restore
from trainer.engine.sharding import no_gradient_sync
from trainer.engine.steps import StepContext
from trainer.errors import Interrupted, UserError
from trainer.interrupt import StopRequests
from trainer.runs.listing import status_recorded
from trainer.runs.report import Reporter, sharding_lines
from trainer.runs.rundir import fresh_run_dir, lock_run_dir, replace_config, run_dir_of
from trainer.state.checkpoint import Position


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
    distributed.start(
        job, device, timeout_s=config.trainer.dist_timeout, alone=config.trainer.sharded
    )
    stopped = None
    try:
        return train(
            config, job, device, reason, resume=resume, reset_optimizer=reset_optimizer,
            report=report,
        )  # fmt: skip
    except Interrupted as agreed:  # every rank stops here together (see `interrupted`)
        # A fresh exception: the caught one's traceback holds the run (DDP's reducer, loader
        # workers), which must go before the group does, as after a run that ended.
        stopped = Interrupted(agreed.checkpoint)
    finally:
        distributed.stop()
    raise stopped


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
    # Find the checkpoint; its run directory is this job's from now on (one writer a run).
    run_base = run_base_of(config)
    checkpoint_path, saved, notes = None, None, []
    if resume:
        found = (
            find_checkpoint(
                resume, run_base=run_base, name=config.name, sharded=config.trainer.sharded
            )
            if job.is_main
            else None
        )
        checkpoint_path, saved, notes = job.broadcast(found)
    with contextlib.ExitStack() as owned:
        resumed_dir = run_dir_of(checkpoint_path) if checkpoint_path else None
        if job.is_main and resumed_dir is not None:
            owned.enter_context(lock_run_dir(resumed_dir))

        # Build, and restore what the checkpoint holds.
        report.device(device, reason)
        run = build_run(config, device, job, sharded=config.trainer.sharded)
        if config.trainer.ema is not None:  # of the unwrapped module, on every rank
            run.ema = EmaWeights(run.module, config.trainer.ema, sharded=run.sharded)
        position = Position()
        restored: list[str] = []
        if saved is not None:
            position, restored = restore(
                saved, run, reset_optimizer=reset_optimizer, job=job, path=checkpoint_path
            )
            restored.insert(0, resumed_note(checkpoint_path, position))
        # The lrs training goes on with (a resumed run's, not the config's).
        report.groups(run.reports, lrs={name: h.lrs for name, h in run.optimizers.items()})

        # The run directory. From its claim to the end of the run's files, a signal is a
        # stop request (acted on at the first step; after training, the run finishes).
        owned.enter_context(StopRequests())
        notes = [*run.notes, *notes, *restored]
        run_dir = open_run_dir(config, job, checkpoint_path, notes, run_base, step=position.step)
        if job.is_main and resumed_dir is None:  # a fresh directory, claimed atomically
            owned.enter_context(lock_run_dir(run_dir))
        for note in [*notes, *run_notes(config, job, run), f"run directory: {run_dir}"]:
            report.note(note)

        wrap_model(run, job)
        out = Output(run, job, run_dir, position, report, saved)  # checks metrics.jsonl
        owned.callback(out.close)
        owned.enter_context(
            status_recorded(run_dir, enabled=job.is_main, step=lambda: position.step)
        )
        return train_epochs(out)


def train_epochs(out: Output) -> FitResult:
    """Epochs: train, validate, step the epoch schedulers, save, decide whether to go on."""
    run, position = out.run, out.position
    config = run.config
    with StopRequests() as stop:
        for epoch in range(position.epoch + 1, config.trainer.epochs + 1):
            lrs = run.optimizers.lrs(several=config.several_optimizers)  # of its first step
            trained = train_epoch(out, epoch, stop)
            if trained.stopped_by_signal:
                out.report.stop()
                raise interrupted(out)
            record = epoch_record(out, epoch, trained, lrs)
            if trained.whole_epoch:
                for handle in run.optimizers.values():
                    handle.schedule.after_epoch(record)
            out.end_epoch(record, batches_done=trained.batches, whole_epoch=trained.whole_epoch)
            if should_stop(out, record):
                break
            if out.job.any(stop.requested, run.device) and epoch < config.trainer.epochs:
                raise interrupted(out)

    if position.epoch >= config.trainer.epochs:
        out.report.note(
            f"nothing to train: the checkpoint has {position.epoch} of "
            f"trainer.epochs={config.trainer.epochs} epochs; raise trainer.epochs to go on"
        )
    out.report.note(f"done: step {position.step}; run directory {out.run_dir}")
    return FitResult(
        run_dir=out.run_dir,
        epoch=out.record.get("epoch", position.epoch),
        step=position.step,
        metrics=out.record,
    )


def interrupted(out: Output) -> Interrupted:
    """A stop every rank agreed on, after last.pt is written: the ranks leave together, so
    torchrun never ends rank 0 while it still writes because another rank exited first."""
    out.job.barrier()
    return Interrupted(str(out.last_checkpoint))


@dataclass
class EpochResult:
    batches: int  # batches of the epoch trained so far (by this process)
    epoch_batches: int  # batches of the whole epoch (of this process)
    samples: int  # samples trained in this call (by this process)
    seconds: float
    stopped_by_signal: bool = False

    @property
    def whole_epoch(self) -> bool:
        return self.batches == self.epoch_batches


class EpochEnd(enum.Enum):
    """Why an epoch ends before its last batch."""

    SIGNAL = "a stop request: last.pt is written"
    MAX_STEPS = "trainer.max_steps: fit validates, then writes the mid-epoch checkpoint"


def train_epoch(out: Output, epoch: int, stop: StopRequests) -> EpochResult:
    """One epoch of steps from where the run stands; advances `out.position`."""
    run, position, settings = out.run, out.position, out.run.config.trainer
    skip, batches = out.start_epoch(epoch)
    accumulate, optimizers, device = settings.accumulate, run.optimizers, run.device
    several, log_every = run.config.several_optimizers, settings.log_every
    channels_last = settings.channels_last
    ctx = StepContext.of(run.config, run.device, run.loss_fn, epoch=epoch, rank=out.job.rank)
    # Under DDP and FSDP, gradients are reduced on a window's last backward only.
    no_sync = gradient_sync_pause(run) if accumulate > 1 else None
    syncing = contextlib.nullcontext()  # reusable: no allocation per batch
    after_step = AfterStep(out, epoch, stop)
    ema = run.ema
    ema_every = ema.every_steps if ema is not None else 0
    samples, batch_index, ended = 0, skip - 1, None
    run.train_mode()
    started = time.perf_counter()
    for batch_index, batch in enumerate(run.train_loader, start=skip):
        batch = to_device(batch, device, channels_last=channels_last)
        samples += batch_size(batch)
        out.report.advance()

        # The step: forward and update(loss); the optimizers step at the window's end.
        window_start = batch_index - batch_index % accumulate
        window = min(accumulate, batches - window_start)
        last = batch_index + 1 == window_start + window
        logging = last and (position.step + 1) % log_every == 0
        optimizers.start_batch(window, last, measure_norm=logging)
        ctx.batch, ctx.step = batch_index, position.step
        lrs = optimizers.lrs(several=several) if logging else None
        with no_sync() if no_sync is not None and not last else syncing:
            metrics = run.step(batch, run.model, optimizers, ctx)
        out.sums.add(metrics, skipped=optimizers.skipped_batch)
        if not last:
            continue
        position.step += 1
        if ema is not None and position.step % ema_every == 0:
            ema.update()  # after the optimizers' step, before a save at this step
        if logging:
            window_means = out.sums.read(out.job, position.step)  # the hot path's host sync
            speed = samples / (time.perf_counter() - started)
            out.log_step(epoch, window_means, lrs or {}, batch_index + 1, speed)
        if batch_index + 1 == batches:
            break
        ended = after_step(batch_index + 1, read=logging)
        if ended is not None:
            break
    if ended is EpochEnd.SIGNAL:
        return EpochResult(batch_index + 1, batches, samples, 0.0, stopped_by_signal=True)
    out.sums.read(out.job, position.step)
    return EpochResult(batch_index + 1, batches, samples, time.perf_counter() - started)


class AfterStep:
    """After an optimizer step inside the epoch: save at checkpoint.every_steps, and end the
    epoch on a stop request (saving) or at trainer.max_steps. Made once an epoch, so a step
    costs no lookups of the settings."""

    def __init__(self, out: Output, epoch: int, stop: StopRequests) -> None:
        self.out, self.epoch, self.stop, self.job = out, epoch, stop, out.job
        self.every_steps = out.run.config.checkpoint.every_steps
        self.max_steps = out.run.config.trainer.max_steps

    def __call__(self, batches_done: int, *, read: bool) -> EpochEnd | None:
        """`read`: the step's sums were just read (a log step), so a save needs no read."""
        out, job, step = self.out, self.job, self.out.position.step
        reached_max = self.max_steps is not None and step >= self.max_steps
        save_now = self.every_steps is not None and step % self.every_steps == 0
        # A stop request is acted on by all ranks at once: checked every step alone, at the
        # sync points (log_every, every_steps) under DDP.
        if read or save_now:
            stopping = job.any(self.stop.requested, out.run.device)
        else:
            stopping = self.stop.requested and not job.enabled
        if not read and (stopping or save_now):  # (at max_steps the epoch's end reads them)
            out.sums.read(job, step)  # the window's sums into the epoch's, first
        if stopping:
            out.save(self.epoch - 1, batches_done)
            return EpochEnd.SIGNAL
        if reached_max:
            return EpochEnd.MAX_STEPS
        if save_now:
            out.save(self.epoch - 1, batches_done)
        return None


def epoch_record(
    out: Output, epoch: int, trained: EpochResult, lrs: dict[str, float]
) -> dict[str, Any]:
    """The epoch's metrics: training means, validation, the lrs of its first step, speed."""
    run, job = out.run, out.job
    validation_of_weights = functools.partial(
        validate,
        run.module if run.val_step is not None else run.model,
        run.val_loader,
        step_name=run.config.step.name,
        val_step=run.val_step,
        loss_fn=run.loss_fn,
        metrics=run.metrics,
        ctx=StepContext.of(run.config, run.device, run.loss_fn, epoch=epoch, rank=job.rank),
        job=job,
    )
    validation = validation_of_weights()
    if run.ema is not None and validation:  # the EMA weights on the same data: val/ema/*
        validation |= validate_ema(run.ema, validation_of_weights)
    record = {
        "epoch": epoch,
        "step": out.position.step,
        **out.sums.epoch_means(),
        **validation,
        **lrs,
        **update_counts(run),
        "train/samples_per_s": trained.samples * job.world_size / max(trained.seconds, 1e-9),
    }
    if out.first_epoch:
        check_monitors(run.config, record)
    return record


def should_stop(out: Output, record: dict[str, Any]) -> bool:
    """trainer.max_steps reached, or early stopping says so."""
    settings = out.run.config.trainer
    if settings.max_steps is not None and out.position.step >= settings.max_steps:
        out.report.note(f"trainer.max_steps={settings.max_steps} reached")
        return True
    if out.stopping is not None and out.stopping.update(record):
        out.report.note(
            f"early stopping: {out.stopping.monitor} did not improve by "
            f"{out.stopping.min_delta} for {out.stopping.patience} epochs"
        )
        return True
    return False


def open_run_dir(
    config: Config,
    job: Distributed,
    checkpoint_path: Path | None,
    notes: list[str],
    base: Path,
    *,
    step: int,
) -> Path:
    """The checkpoint's run directory with config.yaml made the config in force (the earlier
    one kept beside it when it differs), or a fresh one with the resolved config.yaml."""
    run_dir = run_dir_of(checkpoint_path) if checkpoint_path else None
    if checkpoint_path and run_dir is None:
        notes.append(f"{checkpoint_path} is not in a run's checkpoints/: a new run directory")
    if run_dir is None:
        run_dir = job.broadcast(fresh_run_dir(base) if job.is_main else None)
        if job.is_main:
            (run_dir / "config.yaml").write_text(config_to_yaml(config), encoding="utf-8")
    elif job.is_main:
        kept = replace_config(run_dir, config_to_yaml(config), step=step)
        if kept is not None:
            notes.append(f"config.yaml: now the config in force; the earlier one is {kept.name}")
    return run_dir


def resumed_note(path: Path | None, position: Position) -> str:
    return (
        f"resumed from {path}: epoch {position.epoch}, step {position.step}, batch "
        f"{position.batch_in_epoch} of the next epoch"
    )


def run_notes(config: Config, job: Distributed, run: Run) -> list[str]:
    """What a run says before training: its processes, its units and recomputed modules,
    and its schedulers' warnings."""
    notes = distributed_notes(config, job)
    notes += sharding_lines(run.units, run.checkpointed)
    notes += [run.ema.describe()] if run.ema is not None else []
    for spec in config.optimizer_specs():
        notes += warnings_for(spec.scheduler)
    return notes


def distributed_notes(config: Config, job: Distributed) -> list[str]:
    if not job.enabled:
        return []
    accumulate, batch_size = config.trainer.accumulate, config.data.batch_size
    return [
        f"distributed: {job.world_size} processes ({dist.get_backend()}, "
        f"{config.trainer.strategy}), global "
        f"batch {job.world_size} x {batch_size} x {accumulate}"
        f" = {job.world_size * batch_size * accumulate}"
    ]


def gradient_sync_pause(run: Run) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    """What holds back the gradient reduction for a window's batches before its last: DDP's
    no_sync, FSDP's set_requires_gradient_sync(False); None on one process without either."""
    if isinstance(run.model, DistributedDataParallel):
        return run.model.no_sync
    # Under FSDP the unreduced grads live on the gathered copies, out of the handles' reach:
    # several optimizers (a loss's grads set aside per optimizer) and skip_nonfinite (a
    # skipped batch's window dropped) need them reduced into the shards at every batch.
    settings = run.config.trainer
    if run.sharded and not (len(run.optimizers) > 1 or settings.skip_nonfinite):
        return functools.partial(no_gradient_sync, run.module)
    return None


def wrap_model(run: Run, job: Distributed) -> None:
    """DDP for the supervised step (a custom step's grads are synced by its handles; FSDP
    shards in place, when the run is built), then torch.compile when asked."""
    if job.enabled and run.config.step.name == "supervised" and not run.sharded:
        device = run.device
        run.model = DistributedDataParallel(
            run.module,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,  # the grads live in DDP's buckets: no second copy
        )
    if run.config.trainer.compile:
        # torch.compile of a Module returns an OptimizedModule (a Module); its stub says Callable.
        run.model = torch.compile(run.model)  # type: ignore[assignment]


def check_monitors(config: Config, record: dict[str, Any]) -> None:
    """Every monitored metric must be in the epoch's record (val/acc needs class targets)."""
    problems = [
        f"{key}: {monitor!r} is not logged by this run (its epoch metrics: "
        f"{', '.join(k for k in record if '/' in k and not k.startswith('lr/'))})"
        for key, (monitor, _) in monitors(config).items()
        if monitor not in record
    ]
    if problems:
        raise UserError(problems)
