"""fp16's GradScaler and the per-step scheduler, on a CPU scaler: the scheduler steps after
each update the scaler lets through and not after one it skips for inf gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from trainer.components.schedulers import ScheduleDriver
from trainer.config import SchedulerConfig
from trainer.engine.device import grad_scaler
from trainer.engine.handles import OptimizerHandle, Optimizers, Window

STEPS, INF_AT = 5, 2  # the update at index INF_AT gets inf gradients


def model_of(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def split(model: nn.Sequential, optimizers: int) -> list[nn.Module]:
    """The whole model for one optimizer; its two linear layers for two."""
    return [model] if optimizers == 1 else [model[0], model[2]]


def hand_written(optimizers: int, inputs: torch.Tensor) -> nn.Module:
    """The same updates in fp32 without a scaler, the inf step left out: scaling by a power
    of two and unscaling is exact, so the weights must agree bit for bit."""
    model = model_of()
    pairs = []
    for part in split(model, optimizers):
        optimizer = torch.optim.SGD(part.parameters(), lr=1.0)
        pairs.append((optimizer, lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)))
    for index in range(STEPS):
        if index == INF_AT:
            continue
        model(inputs).pow(2).mean().backward()
        for optimizer, scheduler in pairs:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
    return model


def handles(parts: list[nn.Module]) -> Optimizers:
    """One handle per part: SGD, a StepLR halving the lr per step, fp16's scaler."""
    window, built = Window(), {}
    for index, part in enumerate(parts):
        optimizer = torch.optim.SGD(part.parameters(), lr=1.0)
        scheduler = lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        built[f"part{index}"] = OptimizerHandle(
            f"part{index}",
            optimizer,
            schedule=ScheduleDriver(scheduler, SchedulerConfig(name="StepLR", interval="step")),
            scaler=grad_scaler("fp16", torch.device("cpu")),
            window=window,
            own_grads_only=len(parts) > 1,
        )
    return Optimizers(built, window)


@pytest.mark.parametrize("optimizers", [1, 2], ids=["one-optimizer", "two-optimizers"])
def test_a_step_the_scaler_skips_does_not_step_the_scheduler(optimizers: int) -> None:
    model = model_of()
    run = handles(split(model, optimizers))
    assert all(h.scaler.is_enabled() for h in run.values()), "the test needs fp16's scaler"
    inputs = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    lrs, scales, moved = [], [], []
    for index in range(STEPS):
        before = [p.detach().clone() for p in model.parameters()]
        hooks = []
        if index == INF_AT:  # a finite loss whose gradients are inf
            hooks = [p.register_hook(lambda g: g * float("inf")) for p in model.parameters()]
        run.start_batch(1, True, measure_norm=False)
        loss = run.update(model(inputs).pow(2).mean())
        for hook in hooks:
            hook.remove()
        assert torch.isfinite(loss)
        lrs.append([h.optimizer.param_groups[0]["lr"] for h in run.values()])
        scales.append([h.scaler.get_scale() for h in run.values()])
        after = list(model.parameters())
        moved.append(any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)))

    # Halved after each update the scaler let through; kept after the skipped one.
    expected = [0.5, 0.25, 0.25, 0.125, 0.0625]
    assert lrs == [[lr] * optimizers for lr in expected]
    assert moved == [True, True, False, True, True]
    first = scales[0][0]
    assert scales == [[s] * optimizers for s in (first, first, first / 2, first / 2, first / 2)]
    assert run.updates() == {name: STEPS - 1 for name in run}

    expected_model = hand_written(optimizers, inputs)
    for name, tensor in expected_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
