"""The built-in `distill` step's loss on a fixed batch, against its formula written out:
alpha x T^2 x KL(teacher || student at temperature T) + (1 - alpha) x cross-entropy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.engine.steps import StepContext, distill


class Pair(nn.Module):
    """A student and a teacher: two linear layers on 6 features, 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.student, self.teacher = nn.Linear(6, 4), nn.Linear(6, 4)


class Recorder:
    """Stands in for the step's optimizers: keeps the loss it is asked to update with."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def update(self, loss: torch.Tensor) -> torch.Tensor:
        self.losses.append(loss.detach())
        return loss


def written_out(
    student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, *, t: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, hard, soft) by the formula, term by term."""
    rows = torch.arange(len(targets))
    hard = -torch.log_softmax(student, dim=1)[rows, targets].mean()
    p_teacher = torch.softmax(teacher / t, dim=1)
    log_ratio = torch.log_softmax(teacher / t, dim=1) - torch.log_softmax(student / t, dim=1)
    soft = t * t * (p_teacher * log_ratio).sum(dim=1).mean()
    return alpha * soft + (1 - alpha) * hard, hard, soft


@pytest.mark.parametrize(("temperature", "alpha"), [(2.0, 0.7), (4.0, 0.2)])
def test_the_distillation_loss_is_the_formula(temperature: float, alpha: float) -> None:
    torch.manual_seed(0)
    model = Pair()
    inputs, targets = torch.randn(5, 6), torch.tensor([0, 3, 1, 1, 2])
    ctx = StepContext(device=torch.device("cpu"), loss_fn=nn.CrossEntropyLoss())
    optimizers = Recorder()

    logged = distill(
        (inputs, targets), model, optimizers, ctx, temperature=temperature, alpha=alpha
    )

    with torch.no_grad():
        loss, hard, soft = written_out(
            model.student(inputs), model.teacher(inputs), targets, t=temperature, alpha=alpha
        )
    assert soft > 0.05 and hard > 0.5, "the test needs both terms to matter"
    torch.testing.assert_close(logged["hard_loss"].detach(), hard, rtol=1e-6, atol=0)
    torch.testing.assert_close(logged["soft_loss"].detach(), soft, rtol=1e-5, atol=0)
    torch.testing.assert_close(logged["loss"].detach(), loss, rtol=1e-5, atol=0)
    assert len(optimizers.losses) == 1 and torch.equal(optimizers.losses[0], logged["loss"])
