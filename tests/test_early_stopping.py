"""A monitor whose higher values are better (mode max): `min_delta` for early stopping, and
which epoch becomes best.pt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from trainer.runs.metrics_file import read_metrics
from trainer.runs.monitor import EarlyStopping, better, improved_best


def test_in_max_mode_a_value_must_rise_by_more_than_min_delta() -> None:
    assert better(1.15, 1.0, "max", min_delta=0.1)
    assert not better(1.05, 1.0, "max", min_delta=0.1)  # up, but by less than min_delta
    assert not better(0.95, 1.0, "max", min_delta=0.1)
    assert not better(0.85, 1.0, "max", min_delta=0.1)  # down by more than min_delta
    assert better(1.01, 1.0, "max") and not better(1.0, 1.0, "max")


def test_early_stopping_in_max_mode_counts_rises_below_min_delta_as_no_improvement() -> None:
    stopping = EarlyStopping(monitor="val/acc", patience=2, mode="max", min_delta=0.1)
    assert not stopping.update({"val/acc": 0.5})
    assert not stopping.update({"val/acc": 0.55})  # +0.05: not enough
    assert stopping.state_dict() == {"best": 0.5, "bad_epochs": 1}
    assert not stopping.update({"val/acc": 0.65})  # +0.15 on the best: an improvement
    assert stopping.state_dict() == {"best": 0.65, "bad_epochs": 0}
    assert not stopping.update({"val/acc": 0.3})
    assert stopping.update({"val/acc": 0.7})  # +0.05 on the best again: two epochs, stop
    assert stopping.state_dict() == {"best": 0.65, "bad_epochs": 2}


def test_in_max_mode_the_best_epoch_is_the_highest_and_a_tie_keeps_the_first() -> None:
    best = None
    for epoch, value in enumerate([0.5, 0.7, 0.6, 0.7], start=1):
        best = improved_best(best, {"epoch": epoch, "val/acc": value}, "val/acc", "max")
    assert best == {"monitor": "val/acc", "mode": "max", "value": 0.7, "epoch": 2}


def test_a_run_stops_when_val_acc_cannot_rise_by_min_delta_and_best_pt_is_its_highest_epoch(
    tiny_yaml: str, write_config: Callable[..., Path], run_cli: Callable, tmp_path: Path
) -> None:
    config = write_config(tiny_yaml + "checkpoint: {monitor: val/acc}\n")
    # val/acc is at most 1: it never rises by 1.0, so patience 2 stops after epoch 3.
    result = run_cli(
        "fit",
        config,
        "trainer.epochs=6",
        "trainer.early_stopping={monitor: val/acc, patience: 2, min_delta: 1.0}",
    )
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    accuracies = [r["val/acc"] for r in read_metrics(run_dir / "metrics.jsonl") if "val/acc" in r]
    assert len(accuracies) == 3
    assert "early stopping: val/acc did not improve by 1.0 for 2 epochs" in result.output

    assert len(set(accuracies)) > 1, "the test needs val/acc to change between epochs"
    best_epoch = accuracies.index(max(accuracies)) + 1  # the first epoch with the highest
    checkpoints = run_dir / "checkpoints"
    best = torch.load(checkpoints / "best.pt", weights_only=True)["model"]
    of_epoch = torch.load(checkpoints / f"epoch-{best_epoch:04d}.pt", weights_only=True)["model"]
    assert all(torch.equal(best[name], tensor) for name, tensor in of_epoch.items())
