"""Validation: `val/loss`, `val/acc` for class-index targets, `val/perplexity` for
sequences of them, the configured metrics; `trainer eval`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import torch

from trainer.components.language import classes_last
from trainer.config import Config, ema_name
from trainer.engine.device import autocast, batch_size, check_precision, pick_device, to_device
from trainer.engine.distributed import SINGLE, Distributed
from trainer.engine.sharding import is_sharded
from trainer.engine.steps import Batch, StepContext, ValStep
from trainer.errors import UserError

if TYPE_CHECKING:
    from trainer.components.metrics import MetricSet
    from trainer.engine.ema import EmaWeights


def forwards(
    loader: Iterable[Batch], model: torch.nn.Module, job: Distributed, device: torch.device
) -> Iterator[tuple[Batch, bool]]:
    """The loader's batches, each marked counted. Under fsdp every forward is a collective
    (each unit gathers its parameters from all ranks), so a rank with fewer validation
    batches than another runs its last batch again, not counted, until every rank has run
    as many forwards (one all-reduce before the first)."""
    if not (job.enabled and is_sharded(model)):
        yield from ((batch, True) for batch in loader)
        return
    batches = len(loader)  # type: ignore[arg-type]  # the runner's loaders have a length
    most, negated_least = job.most([batches, -batches], device)
    least = -negated_least
    if least == 0 and most > 0:  # every rank knows: all of them stop
        raise UserError(
            f"data: a process has no validation batch while another has {most}: under "
            "trainer.strategy: fsdp every process runs each validation forward; use fewer "
            "processes or more validation samples"
        )
    last = None
    for last in loader:
        yield last, True
    for _ in range(most - batches):
        yield last, False


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    loss_fn: torch.nn.Module,
    device: torch.device,
    precision: str,
    *,
    job: Distributed = SINGLE,
    metrics: MetricSet | None = None,
) -> dict[str, float]:
    """`val/loss`, `val/acc` when targets are class indices, and `metrics` (`val/<key>`);
    without metrics, one host sync at the end. For a sequence's logits (classes last, see
    trainer.components.language) loss and accuracy are per token, weighted by tokens, the
    metrics see the tokens, and `val/perplexity` is exp(val/loss).

    Under torch.distributed each rank sees its share and the sums are all-reduced (the
    metrics gather their states), so every rank reports the same numbers.
    """
    model.eval()
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, count
    loss_sum, correct, count = totals[0], totals[1], 0
    classify, sequences = True, True
    for (inputs, targets), counted in forwards(loader, model, job, device):
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(precision, device):
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
        if not counted:
            continue
        sequence = classes_last(outputs, targets)
        if sequence:  # tokens, with the classes last
            outputs, targets = outputs.flatten(0, 1), targets.flatten()
        size = targets.shape[0] if sequence else inputs.shape[0]  # tokens, or samples
        loss_sum += loss.double() * size
        count += size
        sequences = sequences and sequence
        classify = classify and not targets.is_floating_point()
        classify = classify and outputs.dim() == targets.dim() + 1
        if classify:
            correct += (outputs.argmax(dim=1) == targets).sum()
        if metrics is not None:
            metrics.update(outputs, targets)
    totals[2] = count
    loss_total, correct_total, count_total = job.sum_(totals).tolist()
    values = {"val/loss": loss_total / max(count_total, 1)}
    if classify and count_total:
        values["val/acc"] = correct_total / count_total
    if sequences and count_total:
        values["val/perplexity"] = perplexity(values["val/loss"])
    return values | (metrics.compute() if metrics is not None else {})


def perplexity(loss: float) -> float:
    """exp(loss), infinite where that overflows a float."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def validate(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    *,
    step_name: str,
    val_step: ValStep | None,
    loss_fn: torch.nn.Module,
    metrics: MetricSet | None,
    ctx: StepContext,
    job: Distributed = SINGLE,
) -> dict[str, float]:
    """The validation of `fit` and `trainer eval`: the config's `val_step` when it has one,
    else val/loss, val/acc and the metrics for the supervised step (nothing for others)."""
    if val_step is not None:
        return evaluate_step(val_step, model, loader, ctx, job=job)
    if step_name == "supervised":
        return evaluate(model, loader, loss_fn, ctx.device, ctx.precision, job=job, metrics=metrics)
    return {}


def validate_ema(ema: EmaWeights, validation: Callable[[], dict[str, float]]) -> dict[str, float]:
    """`validation` (the run's, as its raw weights had it) of the EMA weights, swapped into
    the model for it and back after: each `val/<metric>` as `val/ema/<metric>`."""
    with ema.swapped_in():
        return {ema_name(key): value for key, value in validation().items()}


def evaluate_checkpoint(config: Config, path: str, *, ema: bool = False) -> dict[str, float]:
    """Validation metrics of a checkpoint's weights (`trainer eval`), as `fit` validates;
    with `ema` of its EMA weights, named `val/ema/<metric>` as `fit` logs them."""
    from trainer.components.checks import check_components
    from trainer.components.data import build_loaders
    from trainer.components.metrics import build_metrics, check_metrics
    from trainer.components.models import build_model
    from trainer.components.optim import build_loss
    from trainer.engine.build import build_val_step, step_problems
    from trainer.engine.resume import model_changes
    from trainer.state.checkpoint import load_checkpoint, no_ema

    problems = check_components(config, sections=("model", "data", "loss"))
    problems += check_metrics(config) + step_problems(config)  # eval uses no monitor
    if config.step.name != "supervised" and config.val_step is None:
        problems.append(
            f"val_step: step {config.step.name!r} has no val_step, so there is nothing to "
            "validate; name one (val_step: {name: ...})"
        )
    if problems:
        raise UserError(list(dict.fromkeys(problems)))
    saved = load_checkpoint(path, option="--checkpoint")
    if ema and saved.ema is None:
        raise UserError(no_ema(path))
    weights = saved.ema.weights if ema and saved.ema is not None else saved.model
    device, _ = pick_device(config.trainer.device)
    check_precision(config.trainer.precision, device)
    model = build_model(config.model)
    mismatch = model_changes(weights, model)
    if mismatch:
        raise UserError([f"--checkpoint: {path} does not fit the configured model:", *mismatch])
    model.load_state_dict(weights)
    _, val_loader = build_loaders(config.data, seed=config.seed, device=device)
    loss_fn = build_loss(config.loss).to(device)
    ctx = StepContext.of(config, device, loss_fn, epoch=saved.position.epoch)
    values = validate(
        model.to(device),
        val_loader,
        step_name=config.step.name,
        val_step=build_val_step(config),
        loss_fn=loss_fn,
        metrics=build_metrics(config.metrics, device=device),
        ctx=ctx,
    )
    return {ema_name(key): value for key, value in values.items()} if ema else values


@torch.no_grad()
def evaluate_step(
    val_step: ValStep,
    model: torch.nn.Module,
    loader: Iterable[Batch],
    ctx: StepContext,
    *,
    job: Distributed = SINGLE,
) -> dict[str, float]:
    """`val/<key>` for every metric a `val_step` returns, averaged over the validation set
    (weighted by batch size, summed over ranks); one host sync at the end."""
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for index, (batch, counted) in enumerate(forwards(loader, model, job, ctx.device)):
        batch = to_device(batch, ctx.device)
        ctx.batch = index
        size = batch_size(batch)
        with ctx.autocast():
            metrics = val_step(batch, model, ctx)
        if not counted:
            continue
        for key, value in metrics.items():
            total = sums.setdefault(key, torch.zeros((), device=ctx.device, dtype=torch.float64))
            total += torch.as_tensor(value, device=ctx.device).double() * size
        count += size
    if not sums:
        return {}
    totals = job.sum_(
        torch.stack(
            [*sums.values(), torch.tensor(float(count), device=ctx.device, dtype=torch.float64)]
        )
    ).tolist()
    return {
        f"val/{key}": total / max(totals[-1], 1) for key, total in zip(sums, totals, strict=False)
    }
