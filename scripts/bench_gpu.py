"""GPU speed: `trainer fit` against the same job hand-written and under Lightning.

The job: ResNet-18 (torchvision, 10 classes) at CIFAR size (3x32x32), batch 256, SGD with
momentum 0.9, cross-entropy, bf16 autocast and channels_last, with and without torch.compile;
the data (a) already in GPU memory as tensors, (b) from a DataLoader with workers and pinned
memory. Every run trains two epochs of `--steps` batches: the first warms up (cuDNN,
compilation, workers), the second is timed (images/s, synchronised, validation excluded).
The three runners take turns, round after round, in this one process; the table gives the
median images/s over the rounds, its ratio to the hand-written loop, and the peak GPU memory
of one run (torch.cuda.max_memory_allocated, reset before each run; the tensors of (a) count).

    python scripts/bench_gpu.py --out bench_gpu.md [--rounds 3] [--steps 30] [--budget-s 175]

`--tiny` (automatic without CUDA) is a dry run on the CPU: batch 8, 2 steps, one round, and
torch.compile with its `eager` backend (dynamo without code generation).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.metadata
import io
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
import torchvision
from rich.console import Console
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

CLASSES, IMAGE = 10, (3, 32, 32)
DATA_KINDS = {"gpu": "tensors on the device", "loader": "DataLoader (workers, pinned)"}
RUNNERS = ("hand-written", "trainer fit", "Lightning")
_TENSORS: dict[tuple[bool, int, str], TensorDataset] = {}


@dataclass(frozen=True)
class Job:
    """What every runner trains: `steps` batches per epoch, two epochs, the second timed."""

    device: torch.device
    batch: int
    steps: int
    workers: int

    @property
    def samples(self) -> int:
        return self.batch * self.steps

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Cell:
    """One runner on one kind of data, compiled or not: its images/s and peak memory per round."""

    speeds: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)


def tensors(
    train: bool = True, *, size: int, val_size: int = 256, device: str = "cpu"
) -> TensorDataset:
    """Seeded random CIFAR-sized images and labels on `device`; made once, then shared."""
    size = size if train else val_size
    key = (train, size, device)
    if key not in _TENSORS:
        generator = torch.Generator().manual_seed(0 if train else 1)
        images = torch.randn(size, *IMAGE, generator=generator)
        labels = torch.randint(CLASSES, (size,), generator=generator)
        _TENSORS[key] = TensorDataset(images.to(device), labels.to(device))
    return _TENSORS[key]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resnet18() -> nn.Module:
    return torchvision.models.resnet18(num_classes=CLASSES)


# ---------------------------------------------------------------- the three runners


def hand_written(job: Job, data: str, compiled: bool) -> float:
    """The classic loop, with the same autocast and memory format; images/s of epoch 2."""
    torch.manual_seed(0)
    model = resnet18().to(job.device, memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    batches = gpu_batches(job) if data == "gpu" else worker_loader(job)
    seconds = 0.0
    for _ in range(2):
        model.train()
        synchronize(job.device)
        started = time.perf_counter()
        for inputs, targets in batches():
            inputs = inputs.to(job.device, non_blocking=True)
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            targets = targets.to(job.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(job.device.type, dtype=torch.bfloat16):
                loss = loss_fn(forward(inputs), targets)
            loss.backward()
            optimizer.step()
        synchronize(job.device)
        seconds = time.perf_counter() - started
    return job.samples / seconds


def gpu_batches(job: Job) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """Per epoch: a permutation on the device, and batches by indexing the device tensors."""
    images, labels = tensors(True, size=job.samples, device=str(job.device)).tensors

    def epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(job.samples, device=job.device)
        for start in range(0, job.samples, job.batch):
            index = order[start : start + job.batch]
            yield images[index], labels[index]

    return epoch


def worker_loader(job: Job) -> Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]:
    """Per epoch: the same DataLoader (persistent workers, pinned memory on CUDA)."""
    loader = DataLoader(
        tensors(True, size=job.samples),
        batch_size=job.batch,
        shuffle=True,
        num_workers=job.workers,
        pin_memory=job.on_cuda,
        persistent_workers=True,
        drop_last=True,
    )
    return lambda: loader


def trainer_fit(job: Job, data: str, compiled: bool) -> float:
    """The job through `trainer fit`; its train/samples_per_s of epoch 2."""
    from trainer.config import validate_config
    from trainer.engine.loop import fit
    from trainer.runs.metrics_file import is_epoch_record, read_metrics

    on_gpu = data == "gpu"
    with tempfile.TemporaryDirectory() as out_dir:
        config = validate_config(
            {
                "name": "bench-gpu",
                "seed": 0,
                "model": {"name": "resnet18", "num_classes": CLASSES},
                "data": {
                    "name": "bench_gpu:tensors",
                    "size": job.samples,
                    "val_size": job.batch,
                    "device": str(job.device) if on_gpu else "cpu",
                    "batch_size": job.batch,
                    "num_workers": 0 if on_gpu else job.workers,
                    "pin_memory": job.on_cuda and not on_gpu,
                    "persistent_workers": not on_gpu,
                },
                "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9},
                "trainer": {
                    "epochs": 2,
                    "device": str(job.device),
                    "precision": "bf16",
                    "channels_last": True,
                    "compile": compiled,
                    "log_every": 10 * job.steps,  # no read-back inside an epoch
                    "out_dir": out_dir,
                },
                "checkpoint": {"every_epochs": None},
            }
        )
        result = fit(config, console=Console(file=io.StringIO()))
        records = read_metrics(result.run_dir / "metrics.jsonl")
    return [r["train/samples_per_s"] for r in records if is_epoch_record(r)][-1]


def lightning_module() -> tuple[Any, str] | None:
    """(`lightning.pytorch` or `pytorch_lightning`, its version), or None without either."""
    for distribution, name in (
        ("lightning", "lightning.pytorch"),
        ("pytorch-lightning", "pytorch_lightning"),
    ):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(name)
            for logger in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric"):
                logging.getLogger(logger).setLevel(logging.WARNING)  # no "GPU available" per run
            return module, f"{distribution} {importlib.metadata.version(distribution)}"
    return None


def lightning(job: Job, data: str, compiled: bool) -> float:
    """The job as a LightningModule under `Trainer(precision="bf16-mixed")`; epoch 2's images/s."""
    pl, _ = lightning_module()

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            net = resnet18().to(memory_format=torch.channels_last)
            self.net = torch.compile(net) if compiled else net
            self.loss_fn = nn.CrossEntropyLoss()

        def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
            inputs, targets = batch
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            return self.loss_fn(self.net(inputs), targets)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.started, self.seconds = 0.0, 0.0

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            synchronize(job.device)
            self.started = time.perf_counter()

        def on_train_batch_end(
            self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_index: int
        ) -> None:
            if batch_index + 1 == job.steps:
                synchronize(job.device)
                self.seconds = time.perf_counter() - self.started

    if data == "gpu":
        dataset = tensors(True, size=job.samples, device=str(job.device))
        sampler = BatchSampler(RandomSampler(dataset), job.batch, drop_last=True)
        loader = DataLoader(dataset, sampler=sampler, batch_size=None)
    else:
        loader = worker_loader(job)()
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator="gpu" if job.on_cuda else "cpu",
        devices=1,
        precision="bf16-mixed",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(Classifier(), train_dataloaders=loader)
    return job.samples / timer.seconds


CONTENDERS: dict[str, Callable[[Job, str, bool], float]] = {
    "hand-written": hand_written,
    "trainer fit": trainer_fit,
    "Lightning": lightning,
}


# ---------------------------------------------------------------- rounds and the table


def measure(runner: str, job: Job, data: str, compiled: bool, cell: Cell) -> None:
    """One run of one runner; its images/s and peak memory go into `cell`."""
    gc.collect()
    if job.on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(job.device)
    started = time.perf_counter()
    label = f"  {runner:12} {DATA_KINDS[data]:28} compile={compiled!s:5}"
    try:
        cell.speeds.append(CONTENDERS[runner](job, data, compiled))
    except Exception:  # one broken runner must not cost the other figures of a GPU visit
        traceback.print_exc()
        print(f"{label} failed (traceback above)", flush=True)
        return
    if job.on_cuda:
        cell.peaks.append(torch.cuda.max_memory_allocated(job.device))
    seconds = time.perf_counter() - started
    print(f"{label} {cell.speeds[-1]:10,.0f} images/s  ({seconds:.1f} s run)", flush=True)


def table(cells: dict[tuple[str, bool, str], Cell], runners: list[str], header: list[str]) -> str:
    """The markdown table: median images/s, ratio to the hand-written loop, peak memory."""
    lines = [*header, "", "| data | compile | runner | images/s | vs hand-written | peak memory |"]
    lines.append("| --- | --- | --- | ---: | ---: | ---: |")
    for data in DATA_KINDS:
        for compiled in (False, True):
            hand = median(cells[data, compiled, "hand-written"].speeds)
            for runner in runners:
                cell = cells[data, compiled, runner]
                speed = median(cell.speeds)
                images = f"{speed:,.0f}" if speed else "failed"
                ratio = f"{speed / hand:.3f}" if speed and hand else "-"
                peak = f"{max(cell.peaks) / 2**20:,.0f} MiB" if cell.peaks else "-"
                lines.append(
                    f"| {DATA_KINDS[data]} | {'yes' if compiled else 'no'} | {runner} "
                    f"| {images} | {ratio} | {peak} |"
                )
    return "\n".join(lines) + "\n"


def median(values: list[float]) -> float | None:
    """The median, or None when every run failed."""
    return statistics.median(values) if values else None


def describe(job: Job, rounds: str, tiny: bool, lightning_note: str) -> list[str]:
    """What ran where: the device, versions, the job, the rounds."""
    device = torch.cuda.get_device_name(job.device) if job.on_cuda else platform.processor()
    compile_note = "torch.compile backend eager (--tiny)" if tiny else "torch.compile (inductor)"
    return [
        f"- machine: {device or platform.machine()}, {datetime.now(timezone.utc):%Y-%m-%d} (UTC)",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, {lightning_note}",
        f"- job: ResNet-18, {'x'.join(map(str, IMAGE))}, batch {job.batch}, SGD momentum 0.9, "
        f"bf16 autocast, channels_last; {job.steps} steps timed per run after {job.steps} "
        f"warm-up steps; {rounds}; {compile_note}; DataLoader: {job.workers} persistent workers"
        f"{', pinned memory' if job.on_cuda else ''}",
    ]


def compile_for_tiny() -> None:
    """--tiny: every torch.compile (the runner's too) uses dynamo's `eager` backend."""
    real = torch.compile

    def eager(model: Any = None, **kwargs: Any) -> Any:
        return real(model, **{**kwargs, "backend": "eager"})

    torch.compile = eager


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table as markdown here")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--budget-s", type=float, default=175, help="start no round that would end past this"
    )
    parser.add_argument("--tiny", action="store_true", help="a dry run on the CPU in seconds")
    args = parser.parse_args()

    # The runner imports `bench_gpu:tensors` (this module, run as `bench_gpu`, see the end).
    trusted = os.environ.get("TRAINER_TRUST", "")
    os.environ["TRAINER_TRUST"] = f"{trusted},bench_gpu" if trusted else "bench_gpu"
    tiny = args.tiny or not torch.cuda.is_available()
    if tiny:
        args.rounds, args.steps, args.batch, args.workers = 1, 2, 8, 2
        compile_for_tiny()
    # Every run compiles a fresh model: room for all of them, before dynamo falls back to eager.
    dynamo = torch._dynamo.config
    setattr(
        dynamo, "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit", 64
    )
    job = Job(
        device=torch.device("cpu" if tiny else "cuda"),
        batch=args.batch,
        steps=args.steps,
        workers=args.workers,
    )
    found = lightning_module()
    runners = list(RUNNERS if found else RUNNERS[:2])
    lightning_note = (
        found[1]
        if found
        else "Lightning skipped: neither lightning nor pytorch_lightning is installed"
    )
    run_rounds(
        job, runners, args, header=lambda rounds: describe(job, rounds, tiny, lightning_note)
    )


def run_rounds(
    job: Job, runners: list[str], args: argparse.Namespace, *, header: Callable[[str], list[str]]
) -> None:
    """Rounds of every (data, compile, runner) run, in turns; the table after each round."""
    cells = {
        (data, compiled, runner): Cell()
        for data in DATA_KINDS
        for compiled in (False, True)
        for runner in runners
    }
    started, text = time.perf_counter(), ""
    # Compile the training graph once before the rounds, so that no round pays for it alone
    # and the first round's length predicts the next one's (see --budget-s).
    try:
        hand_written(replace(job, steps=2), "gpu", True)
    except Exception:  # the compiled runs will say so; the eager ones still run
        traceback.print_exc()
    print(f"compiled the training graph once: {time.perf_counter() - started:.0f} s", flush=True)
    for done in range(1, args.rounds + 1):
        round_started = time.perf_counter()
        print(f"round {done}/{args.rounds}", flush=True)
        turn = (done - 1) % len(runners)  # who goes first changes from round to round
        for data in DATA_KINDS:
            for compiled in (False, True):
                for runner in runners[turn:] + runners[:turn]:
                    measure(runner, job, data, compiled, cells[data, compiled, runner])
        text = table(cells, runners, header(f"median of {done} round(s) of {args.rounds}"))
        if args.out:
            args.out.write_text(text, encoding="utf-8")  # a later timeout keeps this much
        now = time.perf_counter()
        if done < args.rounds and (now - started) + (now - round_started) > args.budget_s:
            print(f"stopping after {done} round(s): another would pass --budget-s", flush=True)
            break
    print(text, end="")


if __name__ == "__main__":
    # Run as the module `bench_gpu`, which the runner imports by path: one copy of the data.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_gpu

    bench_gpu.main()
