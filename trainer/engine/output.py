"""What a run writes and remembers while it trains: the step metrics summed on the device
(`StepSums`), metrics.jsonl and the loggers, checkpoints (never of non-finite weights), the
best value and early stopping (`Output`). The loop (`trainer.engine.loop`) says when."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trainer.components.data import start_epoch
from trainer.config import config_to_yaml
from trainer.engine.build import Run
from trainer.engine.distributed import Distributed
from trainer.engine.sharding import non_finite_weights, sharded_model_state
from trainer.engine.steps import Metrics
from trainer.errors import TrainingError
from trainer.runs.loggers import open_loggers
from trainer.runs.metrics_file import MetricsFile, mark_epoch
from trainer.runs.monitor import EarlyStopping, improved_best
from trainer.runs.report import Reporter, groups_json
from trainer.state.checkpoint import (
    Position,
    RunState,
    rng_state,
    save_checkpoints,
    save_sharded_checkpoints,
)


def update_counts(run: Run) -> dict[str, int]:
    """`updates/<optimizer>`: optimizer steps each optimizer took, for a step other than
    `supervised` (which updates every optimizer once per step, so `step` says it)."""
    if run.config.step.name == "supervised":
        return {}
    return {f"updates/{name}": count for name, count in run.optimizers.updates().items()}


class StepSums:
    """Step metrics summed on the device between reads (one host sync per read), and the
    epoch's sums on the host; batches skip_nonfinite left out are counted, not summed."""

    def __init__(
        self, device: torch.device, *, skip_nonfinite: bool, max_consecutive_skips: int
    ) -> None:
        self.device, self.max_consecutive_skips = device, max_consecutive_skips
        # Summed in float64 (float32 on MPS, which has no float64): sums of float32 values
        # are then exact, so where the windows are cut (a log, a save, a resume) does not
        # change the epoch's means.
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.log_skipped = skip_nonfinite  # train/skipped in every record
        self.window: dict[str, torch.Tensor] = {}
        self.counted = self.skipped = self.skipped_in_a_row = 0  # since the last read
        self.epoch: dict[str, float] = {}
        self.epoch_counted = self.epoch_skipped = 0

    def add(self, metrics: Metrics, *, skipped: bool) -> None:
        if skipped:
            self.skipped += 1
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row > self.max_consecutive_skips:
                raise TrainingError(
                    f"trainer.skip_nonfinite: {self.skipped_in_a_row} batches in a row had a "
                    f"non-finite loss or gradients (more than trainer.max_consecutive_skips="
                    f"{self.max_consecutive_skips}): training diverged; the last good "
                    "checkpoint is kept"
                )
            return
        self.skipped_in_a_row = 0
        self.counted += 1
        for key, value in metrics.items():
            total = self.window.get(key)
            if total is None:
                total = self.window[key] = torch.zeros((), device=self.device, dtype=self.dtype)
            total += value.detach() if isinstance(value, torch.Tensor) else value

    def start_epoch(self, sums: dict[str, float], counted: int) -> None:
        self.epoch, self.epoch_counted, self.epoch_skipped = dict(sums), counted, 0

    def read(self, job: Distributed, step: int) -> dict[str, float]:
        """The window's means (all ranks), added to the epoch's sums; the window restarts."""
        totals = {}
        if self.window:
            stacked = job.sum_(torch.stack(list(self.window.values())))
            totals = dict(zip(self.window, stacked.tolist(), strict=True))
            for value in self.window.values():
                value.zero_()
        means = {}
        for key, total in totals.items():
            total /= job.world_size
            check_finite(key, total, step)
            self.epoch[key] = self.epoch.get(key, 0.0) + total
            if self.counted:  # a window whose every batch was skipped has no mean
                means[f"train/{key}"] = total / self.counted
        if self.log_skipped:
            means["train/skipped"] = self.skipped
        self.epoch_counted += self.counted
        self.epoch_skipped += self.skipped
        self.counted = self.skipped = 0
        return means

    def epoch_means(self) -> dict[str, float]:
        means = {
            f"train/{key}": total / self.epoch_counted
            for key, total in self.epoch.items()
            if self.epoch_counted
        }
        if self.log_skipped:
            means["train/skipped"] = self.epoch_skipped
        return means


class Output:
    """What a run writes and remembers: metrics.jsonl, checkpoints, the best value so far."""

    def __init__(
        self,
        run: Run,
        job: Distributed,
        run_dir: Path,
        position: Position,
        report: Reporter,
        saved: RunState | None,
    ) -> None:
        config = run.config
        self.run, self.job, self.run_dir, self.position, self.report = (
            run,
            job,
            run_dir,
            position,
            report,
        )
        self.metrics_file = MetricsFile(run_dir / "metrics.jsonl", enabled=job.is_main)
        try:
            if saved is not None:  # what the resumed run logs again goes, once
                self.metrics_file.cut_after(step=position.step, epoch=position.epoch)
            self.loggers = open_loggers(
                config, run_dir, enabled=job.is_main, start_step=position.step
            )
        except BaseException:  # a damaged metrics.jsonl, a logger that cannot start
            self.metrics_file.close()
            raise
        if job.is_main and saved is None:
            self.loggers.describe(
                config_to_yaml(config), groups_json(run.reports, several=config.several_optimizers)
            )
        self.sums = StepSums(
            run.device,
            skip_nonfinite=config.trainer.skip_nonfinite,
            max_consecutive_skips=config.trainer.max_consecutive_skips,
        )
        self.samples_per_batch = config.data.batch_size * job.world_size
        self.record: dict[str, Any] = {}
        self.best = position.best
        self.first_epoch = True
        early = config.trainer.early_stopping
        self.stopping = EarlyStopping(**early.model_dump()) if early else None
        if self.stopping and saved is not None and saved.early_stopping:
            self.stopping.load_state_dict(saved.early_stopping)
        self.batches = 0

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def start_epoch(self, epoch: int) -> tuple[int, int]:
        """(batches already trained, batches in the epoch): a resumed epoch skips the
        batches its checkpoint trained; the sums and the progress bar start there."""
        position, config = self.position, self.run.config
        resumed = epoch == position.epoch + 1 and position.samples_in_epoch > 0
        skip_samples = position.samples_in_epoch if resumed else 0
        skip = skip_samples // self.samples_per_batch
        batches = skip + start_epoch(
            self.run.train_loader, epoch, seed=config.seed, skip_samples=skip_samples
        )
        self.batches = batches
        sums, counted = (position.epoch_sums, position.epoch_counted) if skip else ({}, 0)
        self.sums.start_epoch(sums, counted)
        self.report.start_epoch(epoch, config.trainer.epochs, batches, done=skip)
        return skip, batches

    def log_step(
        self,
        epoch: int,
        means: dict[str, float],
        lrs: Mapping[str, float],
        batch: int,
        samples_per_s: float,
    ) -> None:
        record: dict[str, float] = {
            "epoch": epoch, "step": self.position.step, **means, **lrs, **update_counts(self.run)
        }  # fmt: skip
        several = self.run.config.several_optimizers
        for name, handle in self.run.optimizers.items():
            if handle.grad_norm is not None:
                record["train/grad_norm" + (f"/{name}" if several else "")] = float(
                    handle.grad_norm
                )
        self.write(record)
        self.report.log(
            record,
            batch=batch,
            batches=self.batches,
            samples_per_s=samples_per_s * self.job.world_size,
            several=several,
        )

    def end_epoch(self, record: dict[str, Any], *, batches_done: int, whole_epoch: bool) -> None:
        """Write the epoch's record, keep the best, save (mid-epoch if max_steps cut it)."""
        self.record, self.first_epoch = record, False
        self.write(mark_epoch(record))
        self.report.end_epoch(record)
        policy = self.run.config.checkpoint
        self.best = improved_best(self.best, record, policy.monitor, policy.direction)
        is_best = self.best is not None and self.best["epoch"] == record["epoch"]
        epoch = record["epoch"]
        if whole_epoch:
            self.sums.start_epoch({}, 0)
            self.save(epoch, 0, is_best=is_best)
        else:  # stopped by trainer.max_steps: a mid-epoch checkpoint resumes exactly
            self.save(epoch - 1, batches_done, is_best=is_best)

    def save(self, epoch_done: int, batch_in_epoch: int, *, is_best: bool = False) -> None:
        """last.pt (and epoch/best copies) at this position; every rank's RNG goes in.

        Weights that are not finite are never saved: that is exit 1, the last checkpoint
        written stays the last good one.
        """
        check_finite_weights(self.run, self.job, self.position.step, self.last_checkpoint)
        rngs = self.job.gather(rng_state())  # every rank's RNG, for an exact resume on each
        directory, policy = self.run_dir / "checkpoints", self.run.config.checkpoint
        if self.run.sharded:  # every rank writes its shards
            state = self.run_state(epoch_done, batch_in_epoch, rngs)
            save_sharded_checkpoints(directory, state, policy, is_best=is_best)
        elif self.job.is_main:
            state = self.run_state(epoch_done, batch_in_epoch, rngs)
            save_checkpoints(directory, state, policy, is_best=is_best)

    def run_state(
        self, epoch_done: int, batch_in_epoch: int, rngs: list[dict[str, Any]]
    ) -> RunState:
        """What a checkpoint at this position holds (`batch_in_epoch` batches of the epoch
        after `epoch_done` trained)."""
        run = self.run
        position = Position(
            epoch=epoch_done,
            step=self.position.step,
            batch_in_epoch=batch_in_epoch,
            samples_in_epoch=batch_in_epoch * self.samples_per_batch,
            epoch_sums=dict(self.sums.epoch),
            epoch_counted=self.sums.epoch_counted,
            best=self.best,
        )
        sharded = run.module if run.sharded else None
        return RunState(
            model=sharded_model_state(run.module) if run.sharded else run.module.state_dict(),
            position=position,
            optimizers=run.optimizers.states(run.manifest(), sharded=sharded),
            rngs=rngs,
            config=run.config.to_dict(),
            metrics=dict(self.record),
            early_stopping=self.stopping.state_dict() if self.stopping else None,
            ema=run.ema.state() if run.ema is not None else None,
        )

    def write(self, record: dict[str, Any]) -> None:
        """A step's or an epoch's record: metrics.jsonl, then the viewers (TensorBoard)."""
        self.metrics_file.write(record)
        self.loggers.write(record)

    def close(self) -> None:
        self.metrics_file.close()
        self.loggers.close()


def check_finite_weights(run: Run, job: Distributed, step: int, last: Path) -> None:
    """A TrainingError naming the first tensor of the model's state that is not finite (one
    host sync; all ranks agree)."""
    bad = non_finite_weights(run.module, job, run.device)
    if bad is not None:
        where = f" (first: {bad[0]})" if bad else " (on another process)"
        kept = f"{last} is kept" if last.exists() else "no checkpoint was written"
        raise TrainingError(
            f"the model's weights are not finite at step {step}{where}: not saved; {kept} "
            "(trainer.skip_nonfinite: true skips steps whose loss or gradients are not finite)"
        )


def check_finite(key: str, value: float, step: int) -> None:
    """Stop on a NaN or inf loss; the last checkpoint written stays the last good one."""
    if not math.isfinite(value):
        raise TrainingError(
            f"train/{key} is {value} by step {step}: training stopped, the last good checkpoint "
            "is kept (set trainer.skip_nonfinite: true to skip such steps instead)"
        )
