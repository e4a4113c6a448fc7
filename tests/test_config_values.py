"""Config values the schema refuses by key: booleans are not integers (nor integers
booleans), every float is finite, and keys the runner sets itself are not the config's."""

from __future__ import annotations

import pytest
from helpers.configs import MINIMAL

from trainer.config import validate_config
from trainer.errors import UserError

# ---------------------------------------------------------------- types and numbers


@pytest.mark.parametrize(
    ("section", "value", "problem"),
    [
        ("trainer", {"epochs": True}, "trainer.epochs: Input should be a valid integer (got True)"),
        ("seed", True, "seed: Input should be a valid integer (got True)"),
        (
            "data",
            {"name": "shapes", "batch_size": False},
            "data.batch_size: Input should be a valid integer (got False)",
        ),
        (
            "data",
            {"name": "shapes", "shuffle": 1},
            "data.shuffle: Input should be a valid boolean (got 1)",
        ),
    ],
)
def test_booleans_are_not_integers_nor_integers_booleans(section, value, problem) -> None:
    with pytest.raises(UserError) as info:
        validate_config({**MINIMAL, section: value})
    assert info.value.problems == [problem]


def test_integer_overrides_still_work(tiny_yaml, write_config, run_cli) -> None:
    result = run_cli("config", write_config(tiny_yaml), "trainer.epochs=3", "seed=4")
    assert result.exit_code == 0, result.output
    assert "epochs: 3\n" in result.stdout
    assert "seed: 4\n" in result.stdout


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("optimizer.lr=.nan", "optimizer.lr"),
        ("optimizer.weight_decay=.inf", "optimizer.weight_decay"),
        ("optimizer={name: Adam, betas: [0.9, -.inf]}", "optimizer.betas.1"),
        ("trainer.clip_grad_norm=.nan", "trainer.clip_grad_norm"),
        ("param_groups.rules=[{name: head, match: fc, lr: .nan}]", "param_groups.rules.0.lr"),
        (
            "param_groups.rules=[{name: head, match: fc, momentum: .inf}]",
            "param_groups.rules.0.momentum",
        ),
    ],
)
def test_every_float_in_a_config_is_finite(
    override, path, tiny_yaml, write_config, user_error, tmp_path
) -> None:
    stderr = user_error(
        "fit", write_config(tiny_yaml), override, expect=[f"{path}: ", "is not a finite number"]
    )
    assert stderr.count("error: ") == 1  # the schema's own verdict on the value is not repeated
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- keys the runner sets


def test_scheduler_last_epoch_says_resume_continues_a_schedule(
    tiny_yaml, write_config, user_error, tmp_path
) -> None:
    text = tiny_yaml + "scheduler: {name: StepLR, step_size: 1, last_epoch: 3}\n"
    user_error(
        "fit",
        write_config(text),
        expect=["scheduler.last_epoch: set by the runner", "trainer fit --resume"],
    )
    assert not (tmp_path / "runs").exists()
