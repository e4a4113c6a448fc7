"""Validation metrics named in the config (torchmetrics), over the whole validation set.

`metrics: [{name: MulticlassF1Score, num_classes: 10}]` logs `val/MulticlassF1Score` per epoch.
Under torch.distributed each rank updates with its share of the validation set (the loader
gives each sample to one rank, unpadded) and torchmetrics gathers the states across ranks in
`compute`, so every rank gets the value over the whole set. torchmetrics is an optional extra,
imported only when a config names a metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainer.components import registry
from trainer.errors import UserError

if TYPE_CHECKING:
    import torch

    from trainer.config import Config, MetricConfig


@dataclass
class MetricSet:
    """The configured metrics on one device, by logged name (`val/<key>`)."""

    metrics: dict[str, Any]  # logged name -> torchmetrics.Metric
    keys: dict[str, str]  # logged name -> config key, for messages

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a validation batch (outputs in fp32, whatever the autocast precision)."""
        for name, metric in self.metrics.items():
            try:
                metric.update(outputs.float(), targets)
            except ValueError as err:  # torchmetrics' own check of shapes and values
                raise UserError(
                    f"{self.keys[name]}: {type(metric).__name__} cannot take the model's "
                    f"outputs {_shape(outputs)} and targets {_shape(targets)}: {err}"
                ) from None

    def compute(self) -> dict[str, float]:
        """Every metric over all batches since the last compute (all ranks), then reset."""
        values = {}
        for name, metric in self.metrics.items():
            value = metric.compute()
            metric.reset()
            if not hasattr(value, "numel") or value.numel() != 1:
                raise UserError(
                    f"{self.keys[name]}: {type(metric).__name__} computes "
                    f"{_shape(value) if hasattr(value, 'shape') else type(value).__name__}, "
                    "not one number; choose a metric that gives one (`trainer list metrics`)"
                )
            values[name] = float(value)
        return values


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def build_metrics(configs: list[MetricConfig], *, device: torch.device) -> MetricSet | None:
    """The configured metrics on `device`; None when there are none."""
    if not configs:
        return None
    metrics, keys = {}, {}
    for index, config in enumerate(configs):
        key = f"metrics.{index}"
        metric = registry.build("metrics", config.name, config.kwargs, key=key)
        metrics[config.logged_as] = metric.to(device)
        keys[config.logged_as] = f"{key}.name"
    return MetricSet(metrics, keys)


def check_metrics(config: Config) -> list[str]:
    """Problems with the configured metrics, before a run: names, arguments (each metric is
    built once on the CPU, which is cheap) and monitors whose mode runs against the
    metric's direction (`higher_is_better`)."""
    from trainer.config import monitors

    problems: list[str] = []
    directions = {}
    for index, metric in enumerate(config.metrics):
        try:
            built = registry.build("metrics", metric.name, metric.kwargs, key=f"metrics.{index}")
        except UserError as err:
            problems += [problem for problem in err.problems if problem not in problems]
            continue
        higher = getattr(built, "higher_is_better", None)
        if higher is not None:  # the same for the EMA weights' val/ema/<key>
            ema = metric.logged_as.replace("val/", "val/ema/", 1)
            directions[metric.logged_as] = directions[ema] = "max" if higher else "min"
    for key, (monitor, mode) in monitors(config).items():
        wanted = directions.get(monitor)
        if wanted and mode != wanted:
            mode_key = key.removesuffix("monitor") + "mode"
            better = "higher" if wanted == "max" else "lower"
            problems.append(
                f"{mode_key}: {mode!r} for {monitor}, where {better} is better; set {wanted}"
            )
    return problems
