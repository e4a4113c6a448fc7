"""Watching a metric across epochs: the best checkpoint, and early stopping."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def better(value: float | None, than: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `than` by more than `min_delta`; never when NaN, inf or missing."""
    if value is None or not math.isfinite(value):
        return False
    if than is None or not math.isfinite(than):
        return True
    return value < than - min_delta if mode == "min" else value > than + min_delta


def improved_best(
    best: dict[str, Any] | None, record: dict[str, Any], monitor: str, mode: str
) -> dict[str, Any] | None:
    """The best-so-far entry after this epoch's record (unchanged if it did not improve)."""
    value = record.get(monitor)
    if not better(value, best["value"] if best is not None else None, mode):
        return best
    return {"monitor": monitor, "mode": mode, "value": value, "epoch": record["epoch"]}


@dataclass
class EarlyStopping:
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs."""

    monitor: str
    patience: int
    mode: str
    min_delta: float
    best: float | None = None
    bad_epochs: int = 0

    def update(self, record: dict[str, Any]) -> bool:
        """Take an epoch's record; True when training should stop (NaN/inf: no improvement)."""
        value = record[self.monitor]
        if better(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
