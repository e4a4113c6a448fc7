"""Runner overhead: `trainer fit` against the hand-written loop on the same tiny MLP job.

Both train the same MLP on in-memory tensors (batch 64, SGD with momentum, StepLR per epoch,
a shuffled DataLoader) in this one process, alternating, several rounds, next to the
in-memory floor: the same job with batches cut by index from the tensors, no DataLoader and
no runner (the least a loop can do). Samples/s counts
training only (validation excluded) and is the median over epochs of all rounds. The runner
batches a TensorDataset by indexing whole batches; the last lines measure that against
per-sample collation, loading alone.

    uv run python scripts/bench.py [--epochs 3] [--rounds 3] [--job mlp|cnn]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

FEATURES, CLASSES, SAMPLES, BATCH = 32, 10, 16384, 64


def tiny_mlp() -> nn.Module:
    """The benchmark's model: 32 → 64 → 10."""
    return nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, CLASSES))


def tensors(train: bool = True) -> TensorDataset:
    """A fixed random classification problem held in memory."""
    generator = torch.Generator().manual_seed(0 if train else 1)
    inputs = torch.randn(SAMPLES if train else 1024, FEATURES, generator=generator)
    return TensorDataset(inputs, (inputs[:, :CLASSES] * 3).argmax(dim=1))


def small_cnn() -> nn.Module:
    """The runner's built-in small_cnn, as the quickstart trains it (4 classes)."""
    from trainer.components.models import small_cnn as build

    return build(num_classes=4)


def shapes(train: bool = True) -> TensorDataset:
    """The built-in shapes at 32x32, as plain tensors."""
    from trainer.components.datasets import shapes as build

    data = build(train, size=2048 if train else 512)
    return TensorDataset(data.images, data.targets)


# --job: (model, data) for the hand-written loop and the floor; the runner's config names.
JOBS = {
    "mlp": (tiny_mlp, tensors, {"name": "bench:tiny_mlp"}, {"name": "bench:tensors"}),
    "cnn": (
        small_cnn,
        shapes,
        {"name": "small_cnn", "num_classes": 4},
        {"name": "shapes", "size": 2048, "num_classes": 4},
    ),
}
JOB = JOBS["mlp"]


def training_objects() -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, Any]:
    """The job's model (seeded), loss, SGD with momentum and StepLR, as the runner's config
    names them: what the hand-written loop and the floor share."""
    torch.manual_seed(0)
    model = JOB[0]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    return model, nn.CrossEntropyLoss(), optimizer, scheduler


def hand_written(epochs: int) -> list[float]:
    """The loop users write by hand; returns samples/s per epoch."""
    model, loss_fn, optimizer, scheduler = training_objects()
    loader = DataLoader(JOB[1](True), batch_size=BATCH, shuffle=True)
    speeds = []
    for _ in range(epochs):
        model.train()
        started, samples = time.perf_counter(), 0
        for inputs, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            samples += inputs.shape[0]
        speeds.append(samples / (time.perf_counter() - started))
        scheduler.step()
    return speeds


def floor(epochs: int) -> list[float]:
    """The least a loop can do: data in memory, batches cut by index, no DataLoader, no
    runner, the same model, optimizer and schedule; samples/s per epoch."""
    model, loss_fn, optimizer, scheduler = training_objects()
    inputs, targets = JOB[1](True).tensors
    samples = len(inputs)
    speeds = []
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(samples)
        for start in range(0, samples, BATCH):
            index = order[start : start + BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs[index]), targets[index])
            loss.backward()
            optimizer.step()
        speeds.append(samples / (time.perf_counter() - started))
        scheduler.step()
    return speeds


def runner(epochs: int, out_dir: str) -> list[float]:
    """The same job through `trainer fit`; returns its train/samples_per_s per epoch."""
    from trainer.config import validate_config
    from trainer.engine.loop import fit
    from trainer.runs.metrics_file import is_epoch_record, read_metrics

    os.environ["TRAINER_TRUST"] = "bench"  # this script's own callables, trusted from outside

    config = validate_config(
        {
            "name": "bench",
            "seed": 0,
            "model": JOB[2],
            "data": {**JOB[3], "batch_size": BATCH},
            "optimizer": {"name": "SGD", "lr": 0.05, "momentum": 0.9},
            "scheduler": {"name": "StepLR", "step_size": 1, "gamma": 0.5},
            "trainer": {"epochs": epochs, "device": "cpu", "log_every": 50, "out_dir": out_dir},
            "checkpoint": {"every_epochs": None},
        }
    )
    result = fit(config, console=Console(file=io.StringIO()))
    records = read_metrics(result.run_dir / "metrics.jsonl")
    return [r["train/samples_per_s"] for r in records if is_epoch_record(r)]


def loader_speeds(rounds: int) -> tuple[float, float]:
    """Samples/s of one epoch's loading alone: per-sample collation vs whole-batch indexing."""
    from torch.utils.data import BatchSampler, RandomSampler

    dataset = tensors(True)
    collated = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    indexed = DataLoader(
        dataset, sampler=BatchSampler(RandomSampler(dataset), BATCH, False), batch_size=None
    )
    speeds: dict[str, list[float]] = {"collated": [], "indexed": []}
    for _ in range(rounds):
        for name, loader in (("collated", collated), ("indexed", indexed)):
            started = time.perf_counter()
            count = sum(inputs.shape[0] for inputs, _ in loader)
            speeds[name].append(count / (time.perf_counter() - started))
    return statistics.median(speeds["collated"]), statistics.median(speeds["indexed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--job", choices=JOBS, default="mlp", help="the tiny MLP or small_cnn")
    args = parser.parse_args()
    global JOB
    JOB = JOBS[args.job]
    hand, ours, least = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            least += floor(args.epochs)
            hand += hand_written(args.epochs)
            ours += runner(args.epochs, f"{tmp}/run{round_}")
    hand_speed, our_speed = statistics.median(hand), statistics.median(ours)
    floor_speed = statistics.median(least)
    threads = torch.get_num_threads()
    print(f"machine: {platform.machine()}, {threads} threads, torch {torch.__version__}")
    described = {
        "mlp": f"MLP {FEATURES}-64-{CLASSES}, {SAMPLES} samples",
        "cnn": "small_cnn on 2048 shapes of 3x32x32",
    }
    print(f"job: {described[args.job]}, batch {BATCH}, {args.epochs} epochs x {args.rounds} rounds")
    print(f"hand-written loop: {hand_speed:10,.0f} samples/s")
    print(f"trainer fit:       {our_speed:10,.0f} samples/s")
    print(f"in-memory floor:   {floor_speed:10,.0f} samples/s")
    print(f"ratio (trainer / hand-written): {our_speed / hand_speed:.3f}")
    print(f"ratio (trainer / floor):        {our_speed / floor_speed:.3f}")
    collated, indexed = loader_speeds(args.rounds * 2)
    print(f"loading alone, per-sample collation: {collated:10,.0f} samples/s")
    print(f"loading alone, whole-batch indexing: {indexed:10,.0f} samples/s")
    print(f"ratio (indexing / collation): {indexed / collated:.1f}")


if __name__ == "__main__":
    main()
