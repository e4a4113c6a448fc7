"""The metrics a config monitors (checkpoint.monitor, each ReduceLROnPlateau scheduler's,
trainer.early_stopping.monitor): one list, `monitors()`, that every check of them reads."""

from __future__ import annotations

from trainer.config.metric_names import EMA_PREFIX, EPOCH_METRICS, ema_name
from trainer.config.schema import Config
from trainer.errors import did_you_mean


def monitors(config: Config) -> dict[str, tuple[str, str]]:
    """Every monitored metric by config key: (metric, mode), e.g. checkpoint.monitor."""
    checkpoint = config.checkpoint
    found: dict[str, tuple[str, str]] = {
        "checkpoint.monitor": (checkpoint.monitor, checkpoint.direction)
    }
    for spec in config.optimizer_specs():
        if spec.scheduler and spec.scheduler.name == "ReduceLROnPlateau":
            mode = spec.scheduler.kwargs.get("mode", "min")  # torch's own default
            found[f"{spec.key}scheduler.monitor"] = (spec.scheduler.monitor or "val/loss", mode)
    stopping = config.trainer.early_stopping
    if stopping:
        found["trainer.early_stopping.monitor"] = (stopping.monitor, stopping.direction)
    return found


def monitor_problems(config: Config) -> list[str]:
    """Monitors of `val/<key>` that nothing logs: not the runner, not a configured metric;
    `val/ema/<key>` without trainer.ema, or whose `val/<key>` nothing logs.

    A custom `val_step` logs metrics of its own, known after the first epoch only; a step
    other than `supervised` without one logs no `val/` metric (checked where steps are).
    """
    found = monitors(config)
    problems = [
        f"{key}: {monitor!r} is the EMA weights' metric; set trainer.ema (e.g. "
        "trainer.ema: {decay: 0.999}) to keep and validate them"
        for key, (monitor, _) in found.items()
        if monitor.startswith(EMA_PREFIX) and config.trainer.ema is None
    ]
    if problems or config.val_step is not None or config.step.name != "supervised":
        return problems
    logged = [*EPOCH_METRICS, *(m.logged_as for m in config.metrics)]
    known = logged + ([ema_name(name) for name in logged[1:]] if config.trainer.ema else [])
    also = f"; with trainer.ema each also as {EMA_PREFIX}<name>" if config.trainer.ema else ""
    return [
        f"{key}: {monitor!r} is not a logged metric{did_you_mean(monitor, known)} "
        f"(validation metrics: {', '.join(logged[1:])}{also})"
        for key, (monitor, _) in found.items()
        if monitor.startswith("val/") and monitor not in known
    ]
