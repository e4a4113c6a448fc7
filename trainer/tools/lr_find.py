"""`trainer lr-find`: the lr range test. A short run on a model built for it alone, the lr
growing exponentially step by step, the loss smoothed, stopped when it diverges; then a
suggested lr and the override that sets it.

Every param group's lr is scaled together (each keeps its ratio to `optimizer.lr`), so
`lr_mult` rules and rules with their own `lr` keep their proportions. Nothing is written:
no run directory, no checkpoint, and `model.init_from` is only read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainer.errors import TrainingError, UserError
from trainer.runs.report import save_figure

if TYPE_CHECKING:
    import torch

    from trainer.config import Config

DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this many times its minimum
MAX_STEPS = 10_000  # a range test is 100 to 1,000 steps; far more is a typo, not a test


@dataclass
class RangeTest:
    """What one lr range test measured and concluded."""

    lrs: list[float]  # optimizer.lr at each step
    losses: list[float]  # the loss of each step, before its update
    smoothed: list[float]  # exponential moving average of the losses, bias-corrected
    group_lrs: dict[str, list[float]]  # the lr each param group used at each step
    stopped: str  # why the test ended
    suggestion: float | None
    rule: str  # how the suggestion was chosen (or why there is none)
    overrides: list[str]  # KEY=VALUE that set the suggested lr in the config

    def to_json(self) -> dict[str, Any]:
        """Every series and the verdict, for `--json`."""
        return {
            "lr": self.lrs,
            "loss": [_finite_or_none(v) for v in self.losses],
            "smoothed_loss": [_finite_or_none(v) for v in self.smoothed],
            "group_lr": self.group_lrs,
            "stopped": self.stopped,
            "suggestion": self.suggestion,
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
    """Run the range test on the model, param groups, optimizer and data `config` names."""
    from trainer.components.checks import check_components
    from trainer.components.data import build_loaders
    from trainer.components.models import build_model, load_initial_weights
    from trainer.components.optim import build_loss, build_optimizer, optimizer_defaults
    from trainer.components.param_groups import build_param_groups, held_norms
    from trainer.engine.device import check_precision, grad_scaler, pick_device
    from trainer.state.checkpoint import seed_everything

    check_range(start, end, steps)
    several = getattr(config, "optimizers", None)
    if several:
        raise UserError(
            f"optimizers: lr-find needs one optimizer (the optimizer/param_groups form); "
            f"this config has optimizers: {', '.join(several)}; test one at a time, each "
            "as the optimizer of its own config"
        )
    step = getattr(config, "step", None)
    if step is not None and step.name != "supervised":
        raise UserError(
            f"step.name: lr-find runs the supervised step (loss of model(inputs) against "
            f"the targets), not {step.name!r}"
        )
    problems = check_components(config)
    if problems:
        raise UserError(problems)
    device, _ = pick_device(config.trainer.device)
    check_precision(config.trainer.precision, device)
    options = optimizer_defaults(config.optimizer)
    base_lr = options.get("lr")
    if not isinstance(base_lr, (int, float)) or isinstance(base_lr, bool) or base_lr <= 0:
        raise UserError(
            f"optimizer.lr: lr-find scales the optimizer's lr, but {config.optimizer.name} "
            f"has lr {base_lr!r}; set optimizer.lr to a positive number"
        )

    seed_everything(config.seed)
    model = build_model(config.model)
    if config.model.init_from is not None:
        load_initial_weights(model, config.model.init_from)
    groups, _ = build_param_groups(
        model, options, config.param_groups, optimizer=config.optimizer.name
    )
    model.to(device).train()
    if config.param_groups.freeze_norm_stats:
        for layer in held_norms(model).values():  # as fit holds them
            layer.eval()
    optimizer = build_optimizer(config.optimizer, groups)
    ratios = [group["lr"] / base_lr for group in optimizer.param_groups]
    loss_fn = build_loss(config.loss).to(device)
    loader, _ = build_loaders(config.data, seed=config.seed, device=device)
    scaler = grad_scaler(config.trainer.precision, device)
    batches = _endless(loader, seed=config.seed)

    lrs = lr_range(start, end, steps)
    losses: list[float] = []
    smoothed: list[float] = []
    group_lrs: dict[str, list[float]] = {g["name"]: [] for g in optimizer.param_groups}
    # The moving average spans about a tenth of the steps: long enough to quiet the noise
    # of single batches, short enough not to lag the lr by decades (fastai's and
    # Lightning's fixed 0.98 spans 50 of their 100 steps, and so suggests too high an lr).
    smoothing = max(0.0, 1 - 10 / steps)
    average, lowest = 0.0, math.inf
    stopped = f"reached --end {end:g} after {steps} steps"
    for index, lr in enumerate(lrs):
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
            group_lrs[group["name"]].append(group["lr"])
        window = [next(batches) for _ in range(config.trainer.accumulate)]
        loss = _step(model, optimizer, scaler, loss_fn, window, config=config, device=device)
        average = smoothing * average + (1 - smoothing) * loss
        smooth = average / (1 - smoothing ** (index + 1))
        if index == 0 and not math.isfinite(loss):
            raise TrainingError(
                f"the loss is {loss} at the first step (lr {lr:.3g}), before the lr could "
                "matter: the model or the data gives a non-finite loss; nothing to test"
            )
        losses.append(loss)
        smoothed.append(smooth)
        if not math.isfinite(smooth):
            stopped = f"stopped at step {index + 1} (lr {lr:.3g}): the loss is {loss}"
            break
        if smooth > DIVERGENCE * lowest:
            stopped = (
                f"stopped at step {index + 1} (lr {lr:.3g}): smoothed loss {smooth:.4g} > "
                f"{DIVERGENCE:g} x its minimum {lowest:.4g} (diverged)"
            )
            break
        lowest = min(lowest, smooth)
    lrs = lrs[: len(losses)]
    suggestion, rule = suggest(lrs, smoothed)
    overrides = [] if suggestion is None else suggested_overrides(config, suggestion, base_lr)
    return RangeTest(lrs, losses, smoothed, group_lrs, stopped, suggestion, rule, overrides)


def _endless(loader: Any, *, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of the training set, epoch after epoch, each epoch in its own order."""
    from trainer.components.data import start_epoch

    epoch = 0
    while True:
        epoch += 1
        start_epoch(loader, epoch, seed=seed)
        yield from loader


def _step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_fn: torch.nn.Module,
    window: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    config: Config,
    device: torch.device,
) -> float:
    """One optimizer step over a window of batches (as `trainer.accumulate` says), with
    the run's precision and clipping; returns the window's mean loss before the step."""
    import torch

    from trainer.engine.device import autocast

    settings = config.trainer
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for inputs, targets in window:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast(settings.precision, device):
                loss = loss_fn(model(inputs), targets) / len(window)
            scaler.scale(loss).backward()
            total += loss.detach()
        if settings.clip_grad_norm is not None or settings.clip_grad_value is not None:
            scaler.unscale_(optimizer)
        if settings.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, settings.clip_grad_norm)
        if settings.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(params, settings.clip_grad_value)
        return total

    if scaler.is_enabled():  # fp16: the scaler steps (and skips steps with inf gradients)
        loss = closure()
        scaler.step(optimizer)
        scaler.update()
    else:  # every torch optimizer takes a closure; LBFGS needs one
        loss = optimizer.step(closure)
    return float(loss)


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


def suggested_overrides(config: Config, lr: float, base_lr: float) -> list[str]:
    """`optimizer.lr=<lr>`, and for each rule with its own lr, that lr scaled alike."""
    overrides = [f"optimizer.lr={lr:.2g}"]
    for index, rule in enumerate(config.param_groups.rules):
        if rule.lr is not None:
            overrides.append(f"param_groups.rules.{index}.lr={rule.lr * lr / base_lr:.2g}")
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
    axes.set_xlabel("optimizer.lr")
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
    lines = [
        f"lr range test: {len(test.lrs)} steps from lr {test.lrs[0]:.3g} to "
        f"{test.lrs[-1]:.3g}; param groups scaled together: {ratios}",
        test.stopped,
    ]
    if test.suggestion is None:
        return [*lines, test.rule]
    return [
        *lines,
        f"suggested lr: {test.suggestion:.2g} ({test.rule})",
        f"use it: {command} {' '.join(test.overrides)}",
    ]
