"""What a metric's name says: the runner's own epoch metrics, the names a monitor may take, and
which direction is better (a config's `mode` defaults to it)."""

from __future__ import annotations

import re
from typing import Literal

EPOCH_METRICS = ("train/loss", "val/loss", "val/acc", "val/perplexity")
EMA_PREFIX = "val/ema/"  # the EMA weights' validation (trainer.ema): val/ema/<name>
MONITOR_PATTERN = re.compile(r"(train|val|val/ema)/[A-Za-z0-9_.-]+")


def ema_name(name: str) -> str:
    """`val/ema/<name>` of a validation metric `val/<name>`."""
    return EMA_PREFIX + name.removeprefix("val/")


def default_mode(monitor: str) -> Literal["min", "max"]:
    """Higher is better for accuracy and what counts modes or scores, lower for the rest
    (losses, perplexity, distances)."""
    higher = ("acc", "accuracy", "f1", "score", "covered", "auroc", "precision", "recall")
    return "max" if monitor.rpartition("/")[2].lower().endswith(higher) else "min"


def check_monitor(monitor: str) -> str:
    """A monitor that names an epoch metric (`train/<name>`, `val/<name>`, or the EMA
    weights' `val/ema/<name>`); else a ValueError.

    Any epoch metric can be monitored (a custom step's `val/<key>` too); whether this run logs
    it is known before training where the steps say what they log, else after its first epoch.
    """
    if not MONITOR_PATTERN.fullmatch(monitor):
        raise ValueError(
            f"{monitor!r} is not an epoch metric name: expected train/<name>, val/<name> or "
            f"val/ema/<name>, e.g. {', '.join(EPOCH_METRICS)}"
        )
    return monitor


def class_name(name: str) -> str:
    """`MulticlassAccuracy` of `MulticlassAccuracy` or `pkg.module:MulticlassAccuracy`."""
    return name.rpartition(":")[2].rpartition(".")[2]
