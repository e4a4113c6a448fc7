"""The monitored value: which epoch is best, and when early stopping gives up."""

from __future__ import annotations

import math

import pytest

from trainer.runs.monitor import EarlyStopping, better, improved_best

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("mode", ["min", "max"])
def test_a_non_finite_value_never_improves(value: float, mode: str) -> None:
    assert not better(value, None, mode)
    assert not better(value, 1.0, mode)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_a_finite_value_improves_on_a_non_finite_best(mode: str) -> None:
    assert better(1.0, math.nan, mode)
    assert better(1.0, None, mode)


def test_min_delta_and_direction() -> None:
    assert better(0.5, 1.0, "min") and not better(0.5, 1.0, "max")
    assert not better(0.95, 1.0, "min", min_delta=0.1)


@pytest.mark.parametrize("value", NON_FINITE)
def test_a_non_finite_epoch_is_never_the_best_checkpoint(value: float) -> None:
    first = improved_best(None, {"epoch": 1, "val/loss": value}, "val/loss", "min")
    assert first is None  # no best.pt for a diverged epoch
    second = improved_best(first, {"epoch": 2, "val/loss": 3.0}, "val/loss", "min")
    assert second == {"monitor": "val/loss", "mode": "min", "value": 3.0, "epoch": 2}
    third = improved_best(second, {"epoch": 3, "val/loss": value}, "val/loss", "min")
    assert third is second


@pytest.mark.parametrize("value", NON_FINITE)
def test_early_stopping_counts_a_non_finite_epoch_as_no_improvement(value: float) -> None:
    stopping = EarlyStopping(monitor="val/loss", patience=2, mode="min", min_delta=0.0)
    assert not stopping.update({"val/loss": 2.0})
    assert not stopping.update({"val/loss": value})
    assert stopping.state_dict() == {"best": 2.0, "bad_epochs": 1}
    assert stopping.update({"val/loss": value})  # two epochs without improvement: stop


def test_early_stopping_starting_on_a_non_finite_epoch_keeps_no_best() -> None:
    stopping = EarlyStopping(monitor="val/acc", patience=3, mode="max", min_delta=0.0)
    stopping.update({"val/acc": math.nan})
    assert stopping.state_dict() == {"best": None, "bad_epochs": 1}
    stopping.update({"val/acc": 0.25})
    assert stopping.state_dict() == {"best": 0.25, "bad_epochs": 0}
