"""`trainer lr-find`: the lr range test. A short run on a model built for it alone, the lr
growing exponentially step by step, the loss smoothed, stopped when it diverges; then a
suggested lr and the overrides that set it.

The run is built as `fit` builds it (`build_run`, without schedulers) and trains through its
own step and optimizer handles, so each update is `fit`'s: accumulation, precision, clipping.
Every param group of every optimizer is scaled together: each keeps its ratio to the first
optimizer's lr, so `lr_mult` rules, rules with their own `lr` and several optimizers keep
their proportions. Nothing is written: no run directory, no checkpoint, and
`model.init_from` is only read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainer.errors import TrainingError, UserError
from trainer.runs.report import save_figure

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.engine.build import Run
    from trainer.engine.steps import Batch, Metrics

DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this many times its minimum
MAX_STEPS = 10_000  # a range test is 100 to 1,000 steps; far more is a typo, not a test
LOSS_KEY = "loss"  # the metric followed; a step that returns none: its first metric


@dataclass
class RangeTest:
    """What one lr range test measured and concluded."""

    lrs: list[float]  # the first optimizer's lr at each step
    losses: list[float]  # the loss of each step, before its update
    smoothed: list[float]  # exponential moving average of the losses, bias-corrected
    group_lrs: dict[str, list[float]]  # the lr each param group used at each step
    stopped: str  # why the test ended
    suggestion: float | None  # for the first optimizer's lr
    rule: str  # how the suggestion was chosen (or why there is none)
    overrides: list[str]  # KEY=VALUE that set the suggested lrs in the config
    suggestions: dict[str, float] = field(default_factory=dict)  # lr by optimizer name
    lr_key: str = "optimizer.lr"  # the config key of `lrs`
    loss_key: str = LOSS_KEY  # the step's metric recorded as the loss

    def to_json(self) -> dict[str, Any]:
        """Every series and the verdict, for `--json`."""
        return {
            "lr": self.lrs,
            "lr_key": self.lr_key,
            "loss_key": self.loss_key,
            "loss": [_finite_or_none(v) for v in self.losses],
            "smoothed_loss": [_finite_or_none(v) for v in self.smoothed],
            "group_lr": self.group_lrs,
            "stopped": self.stopped,
            "suggestion": self.suggestion,
            "suggestions": self.suggestions,
            "rule": self.rule,
            "overrides": self.overrides,
        }

    def charted(self) -> tuple[list[float], list[float]]:
        """(lrs, smoothed losses) without a last non-finite loss, which a chart cannot draw."""
        count = len(self.smoothed) - (not math.isfinite(self.smoothed[-1]))
        return self.lrs[:count], self.smoothed[:count]


def lr_range(start: float, end: float, steps: int) -> list[float]:
    """`steps` lrs from `start` to `end`, evenly spaced on a log scale."""
    ratio = end / start
    return [start * ratio ** (i / (steps - 1)) for i in range(steps)]


def check_range(start: float, end: float, steps: int) -> None:
    """The options of the test: a growing, positive range of at least two steps."""
    problems = []
    if not start > 0:
        problems.append(f"--start: {start} must be above 0 (the lr grows on a log scale)")
    if not end > start:
        problems.append(f"--end: {end} must be above --start {start}")
    if steps < 2:
        problems.append(f"--steps: {steps}; the test needs at least 2 steps")
    if steps > MAX_STEPS:
        problems.append(
            f"--steps: {steps:,} is more than a range test takes (at most {MAX_STEPS:,})"
        )
    if problems:
        raise UserError(problems)


def lr_find(config: Config, *, start: float, end: float, steps: int) -> RangeTest:
    """Run the range test on the run `config` describes: its model, param groups,
    optimizers, step and data, each update as `fit` takes it."""
    check_range(start, end, steps)
    run, base_lrs = build_for_test(config)
    first = next(iter(base_lrs))
    scaling, updates = LrScaling(run, base_lrs[first]), RangeUpdates(run)
    lrs, curve = lr_range(start, end, steps), RangeCurve(steps)
    stopped = f"reached --end {end:g} after {steps} steps"
    for lr in lrs:
        scaling.set(lr)
        why = curve.add(updates.next_loss(), lr)
        if why is not None:
            stopped = why
            break
    lrs = lrs[: len(curve.losses)]
    suggestion, rule = suggest(lrs, curve.smoothed)
    # Each optimizer's suggested lr keeps its ratio to the first's (exactly 1 for the first).
    suggestions = (
        {}
        if suggestion is None
        else {name: suggestion * (base / base_lrs[first]) for name, base in base_lrs.items()}
    )
    return RangeTest(
        lrs, curve.losses, curve.smoothed, scaling.history, stopped, suggestion, rule,
        overrides=suggested_overrides(config, suggestions, base_lrs) if suggestions else [],
        suggestions=suggestions,
        lr_key=f"{config.optimizer_specs()[0].key}optimizer.lr",
        loss_key=updates.loss_key,
    )  # fmt: skip


def build_for_test(config: Config) -> tuple[Run, dict[str, float]]:
    """The run as `fit` builds it (every problem reported first), without schedulers; and
    each optimizer's configured lr, by name."""
    from trainer.engine.build import build_run, check_before_building
    from trainer.engine.device import pick_device

    device, _ = pick_device(config.trainer.device)
    check_before_building(config, device, writes=False)
    base_lrs = optimizer_lrs(config)
    return build_run(config, device, schedules=False), base_lrs


def optimizer_lrs(config: Config) -> dict[str, float]:
    """Each optimizer's lr, which the test scales; exit 2 where one is not a positive number."""
    from trainer.components.optim import optimizer_defaults

    lrs, problems = {}, []
    for spec in config.optimizer_specs():
        key = f"{spec.key}optimizer"
        lr = optimizer_defaults(spec.optimizer, key=key).get("lr")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
            problems.append(
                f"{key}.lr: lr-find scales the optimizer's lr, but {spec.optimizer.name} "
                f"has lr {lr!r}; set {key}.lr to a positive number"
            )
        else:
            lrs[spec.name] = float(lr)
    if problems:
        raise UserError(problems)
    return lrs


class LrScaling:
    """Every param group of every optimizer at its ratio to the first optimizer's lr, set
    step by step (one factor scales them all); the lrs set, by group."""

    def __init__(self, run: Run, first_lr: float) -> None:
        several = len(run.optimizers) > 1
        self.groups = [
            (f"{name}/{group['name']}" if several else group["name"], group, group["lr"] / first_lr)
            for name, handle in run.optimizers.items()
            for group in handle.optimizer.param_groups
        ]
        self.history: dict[str, list[float]] = {name: [] for name, _, _ in self.groups}

    def set(self, lr: float) -> None:
        """The first optimizer's lr is `lr`; every group's follows at its ratio."""
        for name, group, ratio in self.groups:
            group["lr"] = lr * ratio
            self.history[name].append(group["lr"])


class RangeUpdates:
    """Optimizer updates as `fit` takes them: a window of `trainer.accumulate` batches, each
    through the run's step and handles, in the training set's order epoch after epoch."""

    def __init__(self, run: Run) -> None:
        from trainer.engine.steps import StepContext

        self.run = run
        self.context = StepContext.of(run.config, run.device, run.loss_fn, epoch=1)
        self.batches = _endless(run)
        self.loss_key = LOSS_KEY
        run.train_mode()

    def next_loss(self) -> float:
        """One update; the window's mean of the step's loss metric (before the update)."""
        import torch

        from trainer.engine.device import to_device

        run, context = self.run, self.context
        size, losses = run.config.trainer.accumulate, []
        for position in range(size):
            context.epoch, context.batch, batch = next(self.batches)
            batch = to_device(batch, run.device, channels_last=run.config.trainer.channels_last)
            run.optimizers.start_batch(size, position == size - 1, measure_norm=False)
            metrics = run.step(batch, run.model, run.optimizers, context)
            self.loss_key = followed_metric(metrics, step=run.config.step.name)
            loss = metrics[self.loss_key]
            losses.append(float(loss.detach() if isinstance(loss, torch.Tensor) else loss))
        context.step += 1
        return sum(losses) / size


def followed_metric(metrics: Metrics, *, step: str) -> str:
    """The metric the test follows: `loss`, or else the step's first metric."""
    if LOSS_KEY in metrics:
        return LOSS_KEY
    if not metrics:
        raise UserError(
            f"step.name: step {step!r} returns no metrics; lr-find follows the loss it "
            f"returns ({LOSS_KEY!r}, or else its first metric)"
        )
    return next(iter(metrics))


def _endless(run: Run) -> Iterator[tuple[int, int, Batch]]:
    """(epoch, index in the epoch, batch) of the training set, epoch after epoch, each epoch
    in the order `fit` gives it."""
    from trainer.components.data import start_epoch

    epoch = 0
    while True:
        epoch += 1
        start_epoch(run.train_loader, epoch, seed=run.config.seed)
        for index, batch in enumerate(run.train_loader):
            yield epoch, index, batch


class RangeCurve:
    """The losses of the test, smoothed, and whether they say stop."""

    def __init__(self, steps: int) -> None:
        # The moving average spans about a tenth of the steps: long enough to quiet the
        # noise of single batches, short enough not to lag the lr by decades (fastai's and
        # Lightning's fixed 0.98 spans 50 of their 100 steps, and so suggests too high an lr).
        self.smoothing = max(0.0, 1 - 10 / steps)
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.average, self.lowest = 0.0, math.inf

    def add(self, loss: float, lr: float) -> str | None:
        """Record one step's loss; why the test stops there, or None to go on."""
        index = len(self.losses)
        if index == 0 and not math.isfinite(loss):
            raise TrainingError(
                f"the loss is {loss} at the first step (lr {lr:.3g}), before the lr could "
                "matter: the model or the data gives a non-finite loss; nothing to test"
            )
        self.average = self.smoothing * self.average + (1 - self.smoothing) * loss
        smooth = self.average / (1 - self.smoothing ** (index + 1))
        self.losses.append(loss)
        self.smoothed.append(smooth)
        if not math.isfinite(smooth):
            return f"stopped at step {index + 1} (lr {lr:.3g}): the loss is {loss}"
        if smooth > DIVERGENCE * self.lowest:
            return (
                f"stopped at step {index + 1} (lr {lr:.3g}): smoothed loss {smooth:.4g} > "
                f"{DIVERGENCE:g} x its minimum {self.lowest:.4g} (diverged)"
            )
        self.lowest = min(self.lowest, smooth)
        return None


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, str]:
    """The lr where the smoothed loss falls fastest (per log-lr), before its minimum.

    The first tenth of the steps is left out: the moving average is still settling there.
    """
    lowest = min(range(len(smoothed)), key=lambda i: _or_inf(smoothed[i]))
    first = max(1, len(smoothed) // 10)
    if lowest - first < 2:
        return None, (
            f"no suggestion: the loss was lowest at step {lowest + 1}, too early to see it "
            "fall; lower --start or raise --steps"
        )
    logs = [math.log10(lr) for lr in lrs]
    slopes = {
        i: (smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1])
        for i in range(first, lowest)
    }
    steepest = min(slopes, key=lambda i: slopes[i])
    return lrs[steepest], (
        f"steepest fall of the smoothed loss (step {steepest + 1}); the loss was lowest at "
        f"lr {lrs[lowest]:.3g}"
    )


def suggested_overrides(
    config: Config, lrs: dict[str, float], base_lrs: dict[str, float]
) -> list[str]:
    """Each optimizer's `optimizer.lr=<lr>`, and for each rule with its own lr, that lr
    scaled alike."""
    overrides = []
    for spec in config.optimizer_specs():
        lr, base = lrs[spec.name], base_lrs[spec.name]
        overrides.append(f"{spec.key}optimizer.lr={lr:.2g}")
        overrides += [
            f"{spec.key}param_groups.rules.{index}.lr={rule.lr * lr / base:.2g}"
            for index, rule in enumerate(spec.param_groups.rules)
            if rule.lr is not None
        ]
    return overrides


def _or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def loss_axis(test: RangeTest) -> tuple[str, float, float] | None:
    """The plot's y axis, (scale, bottom, top): log where every loss is above 0, else linear;
    from the lowest loss up to the first smoothed loss or DIVERGENCE x the smoothed minimum,
    whichever is higher, so the losses past the divergence do not flatten the rest."""
    finite = [v for v in (*test.losses, *test.smoothed) if math.isfinite(v)]
    smoothed = [v for v in test.smoothed if math.isfinite(v)] or finite
    if not finite:
        return None
    bottom = min(finite)
    top = min(max(finite), max(smoothed[0], DIVERGENCE * min(smoothed)))
    if bottom > 0:
        margin = (top / bottom) ** 0.05 if top > bottom else 1.1
        return "log", bottom / margin, top * margin
    margin = 0.05 * (top - bottom) or 1.0
    return "linear", bottom - margin, top + margin


def plot_range_test(test: RangeTest, path: str) -> None:
    """Loss and smoothed loss against the lr (log scale), the suggestion marked; the y axis
    as `loss_axis` says."""
    from trainer.runs.report import pyplot

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 4))
    axes.plot(test.lrs, [_finite_or_none(v) for v in test.losses], alpha=0.3, label="loss")
    axes.plot(test.lrs, [_finite_or_none(v) for v in test.smoothed], label="smoothed loss")
    if test.suggestion is not None:
        axes.axvline(test.suggestion, color="red", linestyle="--", label="suggested lr")
    axes.set_xscale("log")
    y_axis = loss_axis(test)
    if y_axis is not None:
        scale, bottom, top = y_axis
        axes.set_yscale(scale)
        axes.set_ylim(bottom, top)
    axes.set_xlabel(test.lr_key)
    axes.set_ylabel(f"loss{' (log scale)' if y_axis and y_axis[0] == 'log' else ''}")
    axes.legend()
    figure.tight_layout()
    try:
        save_figure(figure, str(path), option="--plot")
    finally:
        plt.close(figure)


def summary_lines(test: RangeTest, *, command: str) -> list[str]:
    """What `trainer lr-find` prints around its chart: the test, why it stopped, the verdict."""
    ratios = ", ".join(
        f"{name} x{lrs[0] / test.lrs[0]:.3g}" for name, lrs in test.group_lrs.items()
    )
    lr = "lr" if test.lr_key == "optimizer.lr" else test.lr_key
    followed = "" if test.loss_key == LOSS_KEY else f"; loss: the step's {test.loss_key}"
    lines = [
        f"lr range test: {len(test.lrs)} steps from {lr} {test.lrs[0]:.3g} to "
        f"{test.lrs[-1]:.3g}; param groups scaled together: {ratios}{followed}",
        test.stopped,
    ]
    if test.suggestion is None:
        return [*lines, test.rule]
    suggested = (
        f"{test.suggestion:.2g}"
        if len(test.suggestions) == 1
        else ", ".join(f"{name} {lr:.2g}" for name, lr in test.suggestions.items())
    )
    return [
        *lines,
        f"suggested lr: {suggested} ({test.rule})",
        f"use it: {command} {' '.join(test.overrides)}",
    ]
