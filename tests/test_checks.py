"""The checking stage's option values (trainer.components.checks.BOUNDS): every bound
refuses what it should and lets the rest through, and `trainer fit` reports them with the
other config problems, by key, before anything is built or written."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.configs import TINY_MLP_CONFIG

from trainer.components.checks import BOUNDS, check_values

ROOT = Path(__file__).resolve().parent.parent

# (kind, option) -> (a value that is allowed, a value that is not): one line per bound.
SAMPLES: dict[tuple[str, str], tuple[Any, Any]] = {
    ("optimizers", "lr"): (0.0, -0.1),
    ("optimizers", "weight_decay"): (0.0, -1e-4),
    ("optimizers", "momentum"): (0.9, -0.9),
    ("optimizers", "betas"): ([0.9, 0.999], [0.9]),
    ("schedulers", "max_lr"): ([0.1, 0.0], [0.1, -1]),
    ("schedulers", "base_lr"): (1e-4, -1e-4),
    ("schedulers", "eta_min"): (0.0, -1),
    ("schedulers", "min_lr"): ([0.0, 1e-6], -1e-6),
    ("schedulers", "gamma"): (0.5, -1),
    ("schedulers", "factor"): (0.1, 0),
    ("schedulers", "div_factor"): (25.0, 0),
    ("schedulers", "final_div_factor"): (1e4, -1),
    ("schedulers", "power"): (0, -1.0),
    ("schedulers", "step_size"): (1, 0),
    ("schedulers", "step_size_up"): (2000, 0),
    ("schedulers", "T_max"): (10, 0),
    ("schedulers", "T_0"): (1, 2.5),
    ("schedulers", "total_steps"): (100, -3),
    ("losses", "label_smoothing"): (1.0, 1.5),
}
EVERY_BOUND = [(kind, option) for kind, bounds in BOUNDS.items() for option in bounds]


def test_every_bound_has_samples() -> None:
    assert sorted(SAMPLES) == sorted(EVERY_BOUND)


@pytest.mark.parametrize(("kind", "option"), EVERY_BOUND)
def test_each_bound_refuses_its_bad_value_by_key(kind: str, option: str) -> None:
    good, bad = SAMPLES[kind, option]
    assert check_values(kind, {option: good, "name_like": "x"}, key="section") == []
    problems = check_values(kind, {option: bad}, key="section")
    assert len(problems) == 1
    key = f"section.{option}"
    if isinstance(bad, list) and BOUNDS[kind][option].count is None:  # per group: by index
        key += f".{next(i for i, v in enumerate(bad) if v != good[i])}"
        bad = bad[-1]
    assert problems[0].startswith(f"{key}: {bad!r} is out of range (allowed: ")


def _torch_arguments(kind: str) -> set[str]:
    """Every keyword argument of torch's own optimizers, schedulers or losses."""
    module, base = {
        "optimizers": (torch.optim, torch.optim.Optimizer),
        "schedulers": (torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler),
        "losses": (torch.nn.modules.loss, torch.nn.modules.loss._Loss),
    }[kind]
    return {
        name
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, base)
        for name in inspect.signature(cls).parameters
    }


@pytest.mark.parametrize(("kind", "option"), EVERY_BOUND)
def test_each_bound_names_an_argument_torch_has(kind: str, option: str) -> None:
    assert option in _torch_arguments(kind)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.1", []),  # not a number: the signature check or torch says so
        (True, []),
        ([0.9, 0.999, 0.5], ["s.betas: [0.9, 0.999, 0.5] is out of range (allowed: two numbers"]),
        ([0.9, 1.0], ["s.betas: [0.9, 1.0] is out of range"]),
        (0.9, ["s.betas: 0.9 is out of range"]),
    ],
)
def test_values_that_are_not_plain_numbers(value: Any, expected: list[str]) -> None:
    option = "betas" if expected else "lr"
    problems = check_values("optimizers", {option: value}, key="s")
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start)


# ---------------------------------------------------------------- through the command line

TINY = """
    name: tiny
    seed: 0
    model: {name: small_cnn, num_classes: 4, in_channels: 3, width: 4}
    data: {name: shapes, num_classes: 4, size: 64, image_size: 16, batch_size: 32}
    loss: {name: CrossEntropyLoss}
    optimizer: {name: Adam, lr: 0.01}
    trainer: {epochs: 3, device: cpu, log_every: 2}
"""


@pytest.mark.parametrize(
    ("overrides", "expect"),
    [
        (
            ["scheduler={name: StepLR, step_size: 1, gamma: -1}"],
            ["scheduler.gamma: -1 is out of range (allowed: > 0; the lr is multiplied by it)"],
        ),
        (
            ["scheduler={name: OneCycleLR, max_lr: -1, interval: step}"],
            ["scheduler.max_lr: -1 is out of range (allowed: >= 0; a negative lr climbs"],
        ),
        (
            ["scheduler={name: StepLR, step_size: 0}"],
            ["scheduler.step_size: 0 is out of range (allowed: a whole number >= 1)"],
        ),
        (
            ["scheduler={name: CosineAnnealingLR, T_max: 0}"],
            ["scheduler.T_max: 0 is out of range (allowed: a whole number >= 1)"],
        ),
        (
            ["param_groups.rules=[{name: head, match: '^fc', betas: [0.9]}]"],
            ["param_groups.rules.0.betas: [0.9] is out of range (allowed: two numbers in [0, 1))"],
        ),
        (
            ["loss.label_smoothing=2"],
            ["loss.label_smoothing: 2 is out of range (allowed: from 0 to 1)"],
        ),
        (  # all at once, with the schema's own problems
            [
                "trainer.epoch=3",
                "optimizer.lr=-0.1",
                "scheduler={name: ExponentialLR, gamma: 0}",
                "loss.label_smoothing=-0.1",
            ],
            [
                "trainer.epoch: unknown key",
                "optimizer.lr: -0.1 is out of range",
                "scheduler.gamma: 0 is out of range",
                "loss.label_smoothing: -0.1 is out of range",
            ],
        ),
    ],
    ids=["gamma", "max_lr", "step_size", "T_max", "rule-betas", "label_smoothing", "at-once"],
)
def test_fit_refuses_values_torch_would_train_on_before_writing_anything(
    write_config: Callable[..., Path],
    user_error: Callable[..., str],
    tmp_path: Path,
    overrides: list[str],
    expect: list[str],
) -> None:
    stderr = user_error("fit", write_config(TINY), *overrides, expect=expect)
    assert stderr.count("error: ") == len(expect)
    assert not (tmp_path / "runs").exists()


def test_each_optimizers_section_is_checked_by_its_key(user_error: Callable[..., str]) -> None:
    stderr = user_error(
        "schedule",
        ROOT / "configs" / "gan.yaml",
        "optimizers.generator.scheduler={name: StepLR, step_size: 1, gamma: -1}",
        "optimizers.discriminator.optimizer.betas=[0.5]",
        expect=[
            "optimizers.generator.scheduler.gamma: -1 is out of range",
            "optimizers.discriminator.optimizer.betas: [0.5] is out of range",
        ],
    )
    assert stderr.count("error: ") == 2


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        (
            "param_groups.rules=[{name: head, match: '^3', betas: [1.5, 0.9]}]",
            "param_groups.rules.0.betas: [1.5, 0.9] is out of range (allowed: two numbers in "
            "[0, 1))",
        ),
        ("optimizer.nesterov=true", "optimizer: SGD rejected its arguments"),
        (
            "param_groups.rules=[{name: head, match: '^3', nesterov: true, dampening: 0.5}]",
            "param_groups.rules.0: SGD rejects group 'head'",
        ),
        ("loss.reduction=bogus", "loss.reduction: 'bogus' is not a reduction of CrossEntropyLoss"),
    ],
    ids=["betas", "nesterov-without-momentum", "nesterov-with-dampening", "reduction"],
)
def test_option_values_are_checked_before_the_run_directory_exists(
    write_config: Callable[..., Path],
    user_error: Callable[..., str],
    tmp_path: Path,
    override,
    expect,
) -> None:
    text = TINY_MLP_CONFIG
    if "betas" in override:
        adam = "{name: Adam, lr: 0.001}"
        text = TINY_MLP_CONFIG.replace("{name: SGD, lr: 0.1, momentum: 0.9}", adam)
    if "nesterov=true" in override:
        text = TINY_MLP_CONFIG.replace(", momentum: 0.9}", "}")
    user_error("fit", write_config(text), override, expect=[expect])
    assert not (tmp_path / "runs").exists()
