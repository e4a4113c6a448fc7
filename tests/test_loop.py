"""The training loop against the same loop written by hand: schedulers, accumulation, clipping,
precision, closure optimizers, stopping rules.

Every run trains `helpers.loop:tiny` (no BatchNorm, no dropout) from the same saved initial
weights on 96 shapes of 8x8 in batches of 16 (6 batches per epoch) in a fixed order, so the
hand-written loop below sees the same batches in the same order and must end on the same
weights, bit for bit unless a comment says why not.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.configs import TINY_MLP_CONFIG
from helpers.loop import sequential, tiny
from rich.console import Console
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader

from trainer.components import registry
from trainer.config import load_config
from trainer.engine.build import check_before_building
from trainer.engine.loop import FitResult, fit
from trainer.errors import TrainingError, UserError
from trainer.runs.metrics_file import is_epoch_record, read_metrics

EPOCHS, BATCHES, BATCH_SIZE = 3, 6, 16
DATA = {"size": BATCHES * BATCH_SIZE, "image_size": 8}

BASE = textwrap.dedent(
    """
    name: loop
    seed: 0
    model: {name: "helpers.loop:tiny"}
    data: {name: shapes, size: 96, image_size: 8, batch_size: 16, shuffle: false}
    optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
    trainer: {epochs: 3, device: cpu, log_every: 1}
    """
).lstrip()


@pytest.fixture
def write(tmp_path: Path, initial: Path) -> Callable[..., Path]:
    """`write(extra_yaml)`: BASE plus `extra_yaml` as a config file, starting from `initial`."""

    def config(extra: str = "") -> Path:
        path = tmp_path / "cfg.yaml"
        text = BASE.replace('"helpers.loop:tiny"', f'"helpers.loop:tiny", init_from: "{initial}"')
        text = text.replace("log_every: 1", f'log_every: 1, out_dir: "{tmp_path / "runs"}"')
        path.write_text(text + textwrap.dedent(extra).lstrip(), encoding="utf-8")
        return path

    return config


@pytest.fixture
def train(write: Callable[..., Path]) -> Callable[..., tuple[FitResult, str]]:
    """`train(extra_yaml, *overrides)`: an in-process `fit`; (result, what it printed)."""

    def run(extra: str = "", *overrides: str) -> tuple[FitResult, str]:
        output = io.StringIO()
        config = load_config(write(extra), list(overrides))
        result = fit(config, console=Console(file=output, width=200))
        return result, output.getvalue()

    return run


# ---------------------------------------------------------------- the hand-written loop


@dataclass
class Trace:
    """What the hand loop saw: the lr of every epoch's first step and of every step, the mean
    loss of every optimizer step's window, pre-clip grad norms, and validation losses."""

    epoch_lrs: list[float] = field(default_factory=list)
    step_lrs: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    batch_losses: list[list[float]] = field(default_factory=list)  # per epoch, finite ones


def sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def loaders() -> tuple[DataLoader, DataLoader]:
    """What `data.shuffle: false` gives: 0..N-1 every epoch, in batches of 16."""
    shapes = registry.resolve("datasets", "shapes", key="data.name")
    train_loader = DataLoader(shapes(True, **DATA), batch_size=BATCH_SIZE, shuffle=False)
    val_loader = DataLoader(shapes(False, **DATA), batch_size=BATCH_SIZE, shuffle=False)
    return train_loader, val_loader


@torch.no_grad()
def validation_loss(model: nn.Module, loader: DataLoader, loss_fn: nn.Module) -> float:
    """val/loss as trainer/evaluate.py defines it: batch means weighted by batch size."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for inputs, targets in loader:
        total += loss_fn(model(inputs), targets).double() * inputs.shape[0]
        count += inputs.shape[0]
    model.train()
    return total.item() / count


def hand_train(
    initial: Path,
    *,
    epochs: int = EPOCHS,
    optimizer: Callable[[Any], torch.optim.Optimizer] = sgd,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    interval: str = "epoch",
    accumulate: int = 1,
    clip: Callable[[list[nn.Parameter]], torch.Tensor] | None = None,
    precision: torch.dtype | None = None,
    max_steps: int | None = None,
    skip: tuple[tuple[int, int], ...] = (),
) -> tuple[nn.Module, Trace]:
    """The runner's loop, written out: zero_grad at each window's start, forward, loss divided
    by the window's length, backward, (clip), step, scheduler.step per step or per epoch.
    `skip` lists (epoch, batch) pairs, counted from 1 and 0, whose batch is left out."""
    model = tiny()
    model.load_state_dict(torch.load(initial, weights_only=True))
    params = list(model.parameters())
    opt = optimizer(params)
    sched = scheduler(opt) if scheduler else None
    plateau = isinstance(sched, lr_scheduler.ReduceLROnPlateau)
    train_loader, val_loader = loaders()
    loss_fn = nn.CrossEntropyLoss()
    trace, step = Trace(), 0
    model.train()
    for epoch in range(1, epochs + 1):
        trace.epoch_lrs.append(opt.param_groups[0]["lr"])
        trace.batch_losses.append([])
        window_loss = torch.zeros(())
        for batch, (inputs, targets) in enumerate(train_loader):
            window_start = batch - batch % accumulate
            window = min(accumulate, BATCHES - window_start)
            if batch == window_start:
                opt.zero_grad(set_to_none=True)
            if (epoch, batch) not in skip:
                autocast = (
                    torch.autocast("cpu", dtype=precision)
                    if precision
                    else contextlib.nullcontext()
                )
                with autocast:
                    loss = loss_fn(model(inputs), targets)
                (loss / window).backward()
                window_loss += loss.detach()
                trace.batch_losses[-1].append(loss.item())
            if batch + 1 < window_start + window:
                continue
            if clip is not None:
                trace.grad_norms.append(float(clip(params)))
            trace.step_lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            step += 1
            trace.step_losses.append(window_loss.item() / window)
            window_loss.zero_()
            if sched is not None and interval == "step":
                sched.step()
            if max_steps is not None and step >= max_steps:
                return model, trace
        trace.val_losses.append(validation_loss(model, val_loader, loss_fn))
        if plateau:
            sched.step(trace.val_losses[-1])
        elif sched is not None and interval == "epoch":
            sched.step()
    return model, trace


# ---------------------------------------------------------------- comparing


def last_checkpoint(result: FitResult) -> dict[str, Any]:
    return torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)


def assert_same_weights(result: FitResult, model: nn.Module, *, atol: float = 0.0) -> None:
    """The run's final weights (last.pt) equal `model`'s: exactly, or within `atol`."""
    saved = last_checkpoint(result)["model"]
    expected = model.state_dict()
    assert saved.keys() == expected.keys()
    for name, tensor in expected.items():
        if atol == 0:
            assert torch.equal(saved[name], tensor), f"{name} differs"
        else:
            assert torch.allclose(saved[name], tensor, rtol=0, atol=atol), f"{name} differs"
    initial = torch.load(result.run_dir.parent / "initial.pt", weights_only=True)
    assert not torch.equal(saved["1.weight"], initial["1.weight"]), "nothing was trained"


def epoch_records(result: FitResult) -> list[dict[str, Any]]:
    return [r for r in read_metrics(result.run_dir / "metrics.jsonl") if is_epoch_record(r)]


def step_records(result: FitResult) -> list[dict[str, Any]]:
    return [r for r in read_metrics(result.run_dir / "metrics.jsonl") if not is_epoch_record(r)]


def assert_same_lrs(result: FitResult, trace: Trace) -> None:
    """Epoch records carry the lr of the epoch's first step, step records the step's lr."""
    assert [r["lr/default"] for r in epoch_records(result)] == trace.epoch_lrs
    assert [r["lr/default"] for r in step_records(result)] == trace.step_lrs


# ---------------------------------------------------------------- schedulers

STEPS = EPOCHS * BATCHES  # optimizer steps of the run


SCHEDULERS = {
    "StepLR": (
        "{name: StepLR, step_size: 1, gamma: 0.5}",
        lambda opt: lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        "epoch",
    ),
    "MultiStepLR": (
        "{name: MultiStepLR, milestones: [1, 2], gamma: 0.3}",
        lambda opt: lr_scheduler.MultiStepLR(opt, milestones=[1, 2], gamma=0.3),
        "epoch",
    ),
    "CosineAnnealingLR-epoch": (
        "{name: CosineAnnealingLR, eta_min: 0.01}",
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS, eta_min=0.01),
        "epoch",
    ),
    "CosineAnnealingLR-step": (
        "{name: CosineAnnealingLR, interval: step}",
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS),
        "step",
    ),
    "CosineAnnealingLR-given-T_max": (  # a length in the config is kept
        "{name: CosineAnnealingLR, T_max: 7, interval: step}",
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=7),
        "step",
    ),
    "OneCycleLR-step": (
        "{name: OneCycleLR, max_lr: 0.5, interval: step}",
        lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=STEPS),
        "step",
    ),
    "LinearLR-step": (  # torch's default total_iters is 5: the fill-in makes it the run's 18
        "{name: LinearLR, start_factor: 0.2, interval: step}",
        lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.2, total_iters=STEPS),
        "step",
    ),
    "PolynomialLR-epoch": (
        "{name: PolynomialLR, power: 2.0}",
        lambda opt: lr_scheduler.PolynomialLR(opt, total_iters=EPOCHS, power=2.0),
        "epoch",
    ),
    "warmup-steps": (
        "{name: CosineAnnealingLR, interval: step, warmup: {steps: 4, start_factor: 0.1}}",
        sequential(4, 0.1, lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS - 4)),
        "step",
    ),
    "warmup-epochs": (
        "{name: CosineAnnealingLR, warmup: {epochs: 1, start_factor: 0.25}}",
        sequential(1, 0.25, lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS - 1)),
        "epoch",
    ),
    "warmup-epochs-step-interval": (  # one epoch of warmup is 6 optimizer steps
        "{name: CosineAnnealingLR, interval: step, warmup: {epochs: 1, start_factor: 0.25}}",
        sequential(
            BATCHES,
            0.25,
            lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS - BATCHES),
        ),
        "step",
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_matches_the_hand_loop(name, train, initial) -> None:
    config, build, interval = SCHEDULERS[name]
    result, _ = train(f"scheduler: {config}\n")
    model, trace = hand_train(initial, scheduler=build, interval=interval)
    assert_same_weights(result, model)
    assert_same_lrs(result, trace)
    assert len(set(trace.step_lrs)) > 1, "the schedule should change the lr"
    assert last_checkpoint(result)["step"] == STEPS


def test_reduce_on_plateau_steps_on_the_validation_loss(train, initial) -> None:
    # The model overfits the 96 samples: val/loss rises, so with patience 0 the lr drops.
    result, _ = train(
        "scheduler: {name: ReduceLROnPlateau, monitor: val/loss, factor: 0.5, patience: 0}\n",
        "trainer.epochs=4",
    )
    plateau = functools.partial(lr_scheduler.ReduceLROnPlateau, factor=0.5, patience=0)
    model, trace = hand_train(initial, epochs=4, scheduler=plateau)
    assert_same_weights(result, model)
    assert_same_lrs(result, trace)
    assert trace.epoch_lrs[-1] < trace.epoch_lrs[0], "the test needs the lr to drop"
    # Summed in another precision or order than here, val/loss is equal to rounding.
    logged = [r["val/loss"] for r in epoch_records(result)]
    assert logged == pytest.approx(trace.val_losses, rel=1e-6)
    # The scheduler was given the validation losses: its best is the lowest of them.
    assert last_checkpoint(result)["schedulers"]["optimizer"]["best"] == min(logged)


def test_plateau_monitor_must_be_a_logged_metric(write, user_error) -> None:
    path = write("scheduler: {name: ReduceLROnPlateau, monitor: val/accuracy}\n")
    user_error(
        "fit",
        path,
        expect=["scheduler.monitor", "'val/accuracy' is not a logged metric", "val/loss, val/acc"],
    )


def test_one_cycle_per_epoch_warns(train) -> None:
    _, printed = train("scheduler: {name: OneCycleLR, max_lr: 0.5}\n", "trainer.epochs=2")
    assert "OneCycleLR is meant to step per batch" in printed
    assert "set scheduler.interval: step" in printed


def test_per_batch_scheduler_per_step_does_not_warn(train) -> None:
    _, printed = train("scheduler: {name: OneCycleLR, max_lr: 0.5, interval: step}\n")
    assert "warning" not in printed


# ---------------------------------------------------------------- closure optimizers


def test_lbfgs_steps_with_a_closure(train, initial) -> None:
    result, _ = train("", "optimizer={name: LBFGS, lr: 0.5, max_iter: 3}", "trainer.epochs=2")

    model = tiny()
    model.load_state_dict(torch.load(initial, weights_only=True))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
    loss_fn, first_losses = nn.CrossEntropyLoss(), []
    for _ in range(2):
        for inputs, targets in loaders()[0]:

            def closure(x: torch.Tensor = inputs, y: torch.Tensor = targets) -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                return loss

            first_losses.append(opt.step(closure).item())

    assert_same_weights(result, model)
    # A step's train/loss is the loss LBFGS saw first, before it moved the weights.
    logged = [r["train/loss"] for r in step_records(result)]
    assert logged == pytest.approx(first_losses, rel=1e-6)


def test_lbfgs_cannot_accumulate(write, user_error) -> None:
    user_error(
        "fit",
        write(),
        "optimizer={name: LBFGS}",
        "trainer.accumulate=2",
        expect=["trainer.accumulate: LBFGS evaluates the loss itself", "use accumulate: 1"],
    )


def test_fp16_on_cpu_says_to_use_bf16(write, user_error) -> None:
    stderr = user_error(
        "fit",
        write(),
        "optimizer={name: LBFGS}",
        "trainer.precision=fp16",
        expect=["trainer.precision: fp16 needs a CUDA device (found cpu)", "use bf16"],
    )
    assert "Traceback" not in stderr


def test_lbfgs_with_fp16_is_refused_on_cuda_too(write) -> None:
    # The check itself needs no GPU: only the device's type is looked at.
    config = load_config(write(), ["optimizer={name: LBFGS}", "trainer.precision=fp16"])
    with pytest.raises(UserError, match=r"fp16 needs a GradScaler.*LBFGS's step\(closure\)"):
        check_before_building(config, torch.device("cuda"))


# ---------------------------------------------------------------- accumulation and clipping


@pytest.mark.parametrize("accumulate", [2, 4])
def test_accumulate_steps_once_per_window(accumulate, train, initial) -> None:
    # 6 batches: windows of 2 (x3), or a window of 4 and a trailing window of 2.
    steps = EPOCHS * math.ceil(BATCHES / accumulate)
    result, _ = train(
        "scheduler: {name: CosineAnnealingLR, interval: step}\n",
        f"trainer.accumulate={accumulate}",
    )
    cosine = functools.partial(lr_scheduler.CosineAnnealingLR, T_max=steps)
    model, trace = hand_train(initial, scheduler=cosine, interval="step", accumulate=accumulate)
    assert_same_weights(result, model)
    assert_same_lrs(result, trace)
    checkpoint = last_checkpoint(result)
    assert checkpoint["step"] == steps
    assert checkpoint["schedulers"]["optimizer"]["last_epoch"] == steps  # once per optimizer step
    # A step's train/loss is the mean (undivided) loss of its window.
    logged = [r["train/loss"] for r in step_records(result)]
    assert logged == pytest.approx(trace.step_losses, rel=1e-6)


def clip_norm(params: list[nn.Parameter]) -> torch.Tensor:
    return nn.utils.clip_grad_norm_(params, 0.05)


def clip_value(params: list[nn.Parameter]) -> torch.Tensor:
    norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    nn.utils.clip_grad_value_(params, 0.001)
    return norm


@pytest.mark.parametrize(
    ("setting", "clip", "threshold"),
    [("clip_grad_norm=0.05", clip_norm, 0.05), ("clip_grad_value=0.001", clip_value, 0.001)],
)
def test_clipping_matches_the_hand_loop(setting, clip, threshold, train, initial) -> None:
    result, _ = train("", f"trainer.{setting}", "trainer.accumulate=2")
    model, trace = hand_train(initial, clip=clip, accumulate=2)
    assert_same_weights(result, model)
    assert min(trace.grad_norms) > threshold, "the test needs clipping to happen"
    # train/grad_norm is the norm before clipping.
    logged = [r["train/grad_norm"] for r in step_records(result)]
    assert logged == pytest.approx(trace.grad_norms, rel=1e-6)


def test_no_grad_norm_without_clipping(train) -> None:
    result, _ = train()
    assert all("train/grad_norm" not in r for r in step_records(result))


# ---------------------------------------------------------------- precision and layout


def test_bf16_autocast_on_cpu(train, initial) -> None:
    result, _ = train("", "trainer.precision=bf16", "trainer.epochs=2")
    model, _ = hand_train(initial, epochs=2, precision=torch.bfloat16)
    assert_same_weights(result, model)
    fp32, _ = hand_train(initial, epochs=2)
    assert not torch.equal(model.state_dict()["1.weight"], fp32.state_dict()["1.weight"])


def test_channels_last_matches_the_plain_run(train) -> None:
    conv = ["model.name=helpers.loop:tiny_conv", "model.init_from=null", "trainer.epochs=2"]
    plain, _ = train("", *conv)
    layout, _ = train("", *conv, "trainer.channels_last=true")
    ours, theirs = last_checkpoint(layout)["model"], last_checkpoint(plain)["model"]
    # The conv weight really was trained in channels_last (torch.save keeps the strides).
    assert ours["0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert not ours["0.weight"].is_contiguous()
    # Other convolution kernels sum in another order: equal to rounding, not bit for bit.
    for name, tensor in theirs.items():
        assert torch.allclose(ours[name], tensor, rtol=0, atol=1e-6), name


@pytest.mark.parametrize(
    "backend",
    [
        # The dynamo frontend and the runner's wrapping, without code generation.
        "eager",
        pytest.param(
            "inductor",
            marks=pytest.mark.skip(reason="inductor compiles for ~30 s on a 2-core CPU"),
        ),
    ],
)
def test_compile_trains_the_same_weights_under_plain_names(
    backend, train, initial, monkeypatch
) -> None:
    compiled = []
    real_compile = torch.compile

    def compile_with_backend(module: nn.Module, **kwargs: Any) -> nn.Module:
        compiled.append(module)
        return real_compile(module, backend=backend, **kwargs)

    monkeypatch.setattr(torch, "compile", compile_with_backend)
    torch._dynamo.reset()
    result, _ = train("", "trainer.compile=true", "trainer.epochs=2")
    torch._dynamo.reset()
    assert len(compiled) == 1
    keys = last_checkpoint(result)["model"].keys()
    assert not [key for key in keys if "_orig_mod" in key]
    model, _ = hand_train(initial, epochs=2)
    # inductor may fuse the arithmetic in another order: equal to rounding.
    assert_same_weights(result, model, atol=0 if backend == "eager" else 1e-6)


# ---------------------------------------------------------------- stopping


@pytest.mark.parametrize(
    ("max_steps", "epoch", "batch_in_epoch"),
    [
        (8, 1, 2),  # mid-epoch: epoch 1 done, 2 batches of epoch 2
        pytest.param(
            12,
            2,
            0,
        ),
    ],
)
def test_max_steps_stops_at_that_step(max_steps, epoch, batch_in_epoch, train, initial) -> None:
    result, printed = train(
        "scheduler: {name: CosineAnnealingLR, interval: step}\n", f"trainer.max_steps={max_steps}"
    )
    # The step schedule's length is max_steps, not the 18 steps of 3 epochs.
    cosine = functools.partial(lr_scheduler.CosineAnnealingLR, T_max=max_steps)
    model, trace = hand_train(initial, scheduler=cosine, interval="step", max_steps=max_steps)
    checkpoint = last_checkpoint(result)
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["batch_in_epoch"]) == (
        max_steps,
        epoch,
        batch_in_epoch,
    )
    assert result.step == max_steps
    assert_same_weights(result, model)
    assert [r["lr/default"] for r in step_records(result)] == trace.step_lrs
    assert f"trainer.max_steps={max_steps} reached" in printed


@pytest.mark.parametrize(
    "scheduler",
    [
        "{name: StepLR, step_size: 1, gamma: 0.5}",
        pytest.param(
            "{name: ReduceLROnPlateau, monitor: val/loss, factor: 0.5, patience: 1}",
        ),
    ],
)
def test_max_steps_then_resume_equals_a_straight_run(scheduler, train, write) -> None:
    # Epoch schedulers step at the end of a whole epoch only, and the cut epoch ends once.
    extra = f"scheduler: {scheduler}\n"
    straight, _ = train(extra, "trainer.epochs=4")
    stopped, _ = train(extra, "trainer.epochs=4", "trainer.max_steps=8")
    resumed = fit(
        load_config(write(extra), ["trainer.epochs=4"]),
        resume=str(stopped.run_dir / "checkpoints" / "last.pt"),
        console=Console(file=io.StringIO()),
    )
    ours, theirs = last_checkpoint(resumed), last_checkpoint(straight)
    schedulers = ours["schedulers"]["optimizer"], theirs["schedulers"]["optimizer"]
    assert schedulers[0]["last_epoch"] == schedulers[1]["last_epoch"] == 4
    # metrics.jsonl also holds the record of the cut epoch: the later record of an epoch wins.
    lrs = [{r["epoch"]: r["lr/default"] for r in epoch_records(run)} for run in (resumed, straight)]
    assert lrs[0] == lrs[1]
    for name, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][name], tensor), name


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_after_patience_epochs_without_improvement(patience, train) -> None:
    # lr 0: the weights never move, so val/loss never improves after the first epoch.
    result, printed = train(
        "",
        "optimizer.lr=0.0",
        "trainer.epochs=10",
        f"trainer.early_stopping={{patience: {patience}}}",
    )
    records = epoch_records(result)
    assert [r["epoch"] for r in records] == list(range(1, patience + 2))
    assert len({r["val/loss"] for r in records}) == 1
    assert result.epoch == patience + 1
    assert last_checkpoint(result)["epoch"] == patience + 1
    assert f"early stopping: val/loss did not improve by 0.0 for {patience} epochs" in printed


def test_no_early_stopping_while_improving(train) -> None:
    result, printed = train(
        "", "trainer.epochs=4", "trainer.early_stopping={monitor: train/loss, patience: 1}"
    )
    losses = [r["train/loss"] for r in epoch_records(result)]
    assert losses == sorted(losses, reverse=True), "the test needs a falling train/loss"
    assert result.epoch == 4
    assert "early stopping" not in printed


NAN_MODEL = "model.name=helpers.loop:tiny_nan_at"


@pytest.mark.parametrize(("log_every", "step"), [(1, 9), (50, 12)])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    log_every, step, write, run_cli, initial, tmp_path
) -> None:
    # The 9th training forward (epoch 2, step 9) gives NaN. The loss is read back every
    # log_every steps (and at the epoch's end), so that is where the NaN is noticed.
    result = run_cli("fit", write(), NAN_MODEL, "model.forward=9", f"trainer.log_every={log_every}")
    assert result.exit_code == 1, result.output
    assert f"error: train/loss is nan by step {step}: training stopped" in result.stderr
    assert "Traceback" not in result.output
    checkpoint = torch.load(tmp_path / "runs" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["model"].values())
    model, _ = hand_train(initial, epochs=1)
    for name, tensor in model.state_dict().items():
        assert torch.equal(checkpoint["model"][name], tensor), name


def test_nan_error_is_a_training_error(train) -> None:
    with pytest.raises(TrainingError, match="by step 9"):
        train("", NAN_MODEL, "model.forward=9")


def test_skip_nonfinite_skips_the_nan_batch(train, initial) -> None:
    result, _ = train("", NAN_MODEL, "model.forward=9", "trainer.skip_nonfinite=true")
    model, _ = hand_train(initial, skip=((2, 2),))  # forward 9 is epoch 2's third batch
    assert_same_weights(result, model)


def test_skip_nonfinite_keeps_the_rest_of_the_window(train, initial) -> None:
    # Forward 10 is epoch 2's batch 3, the second of the window (2, 3): batch 2 still counts.
    result, _ = train(
        "", NAN_MODEL, "model.forward=10", "trainer.skip_nonfinite=true", "trainer.accumulate=2"
    )
    model, _ = hand_train(initial, skip=((2, 3),), accumulate=2)
    assert_same_weights(result, model)


def test_skipped_batch_is_left_out_of_the_epoch_loss(train, initial) -> None:
    result, _ = train("", NAN_MODEL, "model.forward=9", "trainer.skip_nonfinite=true")
    _, trace = hand_train(initial, skip=((2, 2),))
    second = epoch_records(result)[1]["train/loss"]
    assert len(trace.batch_losses[1]) == BATCHES - 1
    assert second == pytest.approx(sum(trace.batch_losses[1]) / (BATCHES - 1), rel=1e-6)


INF_GRAD_MODEL = "model.name=helpers.loop:tiny_inf_grad_at"


def test_skip_nonfinite_skips_a_step_whose_gradients_are_not_finite(train, initial) -> None:
    # Forward 9 (epoch 2, batch 2) has a finite loss and inf gradients: no step on them.
    result, _ = train("", INF_GRAD_MODEL, "model.forward=9", "trainer.skip_nonfinite=true")
    model, _ = hand_train(initial, skip=((2, 2),))
    assert_same_weights(result, model)
    assert [r["train/skipped"] for r in epoch_records(result)] == [0, 1, 0]


def test_a_step_skipped_for_its_gradients_does_not_step_the_scheduler(train) -> None:
    result, _ = train(
        "scheduler: {name: StepLR, step_size: 1, gamma: 0.9, interval: step}\n",
        INF_GRAD_MODEL, "model.forward=9", "trainer.skip_nonfinite=true",
    )  # fmt: skip
    lrs = [r["lr/default"] for r in step_records(result)]
    assert lrs[9] == lrs[8], "the step after the skipped one still has the skipped one's lr"
    assert last_checkpoint(result)["schedulers"]["optimizer"]["last_epoch"] == STEPS - 1


def test_inf_gradients_without_skip_nonfinite_never_reach_a_checkpoint(
    write, run_cli, tmp_path
) -> None:
    result = run_cli("fit", write(), INF_GRAD_MODEL, "model.forward=9")
    assert result.exit_code == 1, result.output
    checkpoint = torch.load(tmp_path / "runs" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["model"].values())


def test_weights_that_are_not_finite_are_never_saved(write, run_cli, tmp_path) -> None:
    # Forward 9 makes a buffer NaN while every loss stays finite: the save at the end of
    # epoch 2 refuses, exit 1, and epoch 1's checkpoint stays last.pt.
    result = run_cli(
        "fit", write(), "model.name=helpers.loop:NanBufferAt", "model.forward=9",
        "model.init_from=null", "trainer.skip_nonfinite=true",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "the model's weights are not finite at step 12 (first: seen): not saved" in (
        result.stderr
    )
    checkpoints = tmp_path / "runs" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "epoch-0001.pt", "last.pt"]
    assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 1
    status = json.loads((tmp_path / "runs" / "status.json").read_text())
    assert status["status"] == "failed"


# ---------------------------------------------------------------- a diverged run


DIVERGES = """
import torch
from torch import nn


class Diverges(nn.Module):
    \"\"\"A linear classifier whose training outputs are NaN from its `after`-th forward on.\"\"\"

    def __init__(self, after: int = 3) -> None:
        super().__init__()
        self.linear, self.after, self.calls = nn.Linear(192, 4), after, 0

    def forward(self, x):
        out = self.linear(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out
"""


def test_a_diverged_run_with_skip_nonfinite_logs_skips_and_stops(
    write_config: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    (tmp_path / "diverging.py").write_text(DIVERGES, encoding="utf-8")
    diverging = TINY_MLP_CONFIG.replace('"helpers.loop:tiny"', '"diverging:Diverges"')
    path = write_config(diverging)
    result = run_cli(
        "fit", path, "trainer.skip_nonfinite=true", "trainer.max_consecutive_skips=3",
        "trainer.log_every=1",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "batches in a row had a non-finite loss" in result.stderr
    assert "trainer.max_consecutive_skips=3" in result.stderr
    records = read_metrics(tmp_path / "runs" / "tiny" / "metrics.jsonl")
    assert all("train/skipped" in r for r in records)
    assert any(r["train/skipped"] > 0 for r in records)
    # A window whose every batch was skipped has no loss: never a loss of 0.
    assert all(r.get("train/loss") != 0 for r in records)
    assert any("train/loss" not in r for r in records if r["train/skipped"])
