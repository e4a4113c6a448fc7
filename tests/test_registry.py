"""trainer.components.registry: names and import paths → callables, signature checks, building;
a malformed or failing import path is exit 2 by key, a bug in the user's own code exit 1."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.configs import USER_MODELS
from torch import nn

from trainer.components import registry
from trainer.components.checks import check_components
from trainer.config import validate_config
from trainer.errors import UserError, did_you_mean


def takes_a_and_b(a: int, b: int = 1, *, c: int = 2) -> None:
    """A callable with one required argument."""


def takes_anything(a: int = 0, **kwargs: int) -> None:
    """A callable that accepts any keyword."""


# ---------------------------------------------------------------- check_arguments


def test_check_arguments_unknown_keyword_suggests_the_closest() -> None:
    problems = registry.check_arguments(
        takes_a_and_b, {"a": 1, "bb": 2}, key="model", kind="models"
    )
    assert problems == [
        "model.bb: not an argument of takes_a_and_b; did you mean 'b'? (arguments: a, b, c)"
    ]


def test_check_arguments_missing_required_argument() -> None:
    problems = registry.check_arguments(takes_a_and_b, {"c": 3}, key="model", kind="models")
    assert problems == ["model.a: required argument of takes_a_and_b is missing"]


def test_check_arguments_reports_every_problem() -> None:
    problems = registry.check_arguments(takes_a_and_b, {"x": 1, "y": 2}, key="m", kind="models")
    assert [p.split(":")[0] for p in problems] == ["m.x", "m.y", "m.a"]


def test_check_arguments_accepts_anything_with_var_keyword() -> None:
    assert registry.check_arguments(takes_anything, {"z": 1}, key="m", kind="models") == []


def test_check_arguments_refuses_what_the_runner_supplies() -> None:
    problems = registry.check_arguments(
        torch.optim.SGD, {"params": [], "lr": 0.1}, key="optimizer", kind="optimizers"
    )
    assert problems == [
        "optimizer.params: set by the runner, not by the config; param_groups decides the "
        "tensors (and options) of each group"
    ]


def test_check_arguments_real_optimizer_and_scheduler() -> None:
    sgd = registry.check_arguments(
        torch.optim.SGD, {"lrr": 0.1}, key="optimizer", kind="optimizers"
    )
    assert len(sgd) == 1
    assert sgd[0].startswith("optimizer.lrr: not an argument of SGD; did you mean 'lr'?")
    step_lr = torch.optim.lr_scheduler.StepLR
    problems = registry.check_arguments(step_lr, {}, key="scheduler", kind="schedulers")
    assert problems == ["scheduler.step_size: required argument of StepLR is missing"]


def test_did_you_mean_is_case_insensitive_and_quiet_when_nothing_is_close() -> None:
    assert did_you_mean("adamw", ["SGD", "AdamW"]) == "; did you mean 'AdamW'?"
    assert did_you_mean("zzzz", ["SGD", "AdamW"]) == ""


# ---------------------------------------------------------------- resolve


@pytest.mark.parametrize(
    ("kind", "names"),
    [
        ("optimizers", ["SGD", "Adam", "AdamW"]),
        ("schedulers", ["StepLR", "OneCycleLR", "ReduceLROnPlateau"]),
        ("losses", ["CrossEntropyLoss", "MSELoss"]),
        ("models", ["small_cnn", "resnet18"]),
        ("datasets", ["shapes"]),
    ],
)
def test_entries_hold_the_expected_names(kind: str, names: list[str]) -> None:
    table = registry.entries(kind)
    for name in names:
        assert callable(table[name])
    assert "Optimizer" not in table
    assert "LRScheduler" not in table


def test_entries_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown kind 'widgets'"):
        registry.entries("widgets")


def test_describe_gives_one_line_per_name() -> None:
    import timm

    described = dict(registry.describe("models"))
    timm_names = {f"timm/{name}" for name in timm.list_models()}  # after the others
    assert set(described) == set(registry.entries("models")) | timm_names
    assert described["small_cnn"]
    assert all("\n" not in text for text in described.values())


def test_resolve_unknown_name_suggests_and_lists_choices() -> None:
    with pytest.raises(UserError) as info:
        registry.resolve("optimizers", "adamm", key="optimizer.name")
    (message,) = info.value.problems
    assert message.startswith("optimizer.name: unknown 'adamm'; did you mean 'Adam'?")
    assert "(choices: " in message
    assert "SGD" in message


def test_resolve_import_path() -> None:
    assert registry.resolve("models", "torch.nn:Linear", key="model.name") is nn.Linear
    assert registry.resolve("losses", "torch.nn:MSELoss", key="loss.name") is nn.MSELoss
    with pytest.raises(UserError, match="which is not a loss"):  # called with the kwargs alone
        registry.resolve("losses", "torch.nn.functional:cross_entropy", key="loss.name")


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("nosuchmodule:thing", "model.name: cannot import 'nosuchmodule'"),
        ("torch.nn:NoSuchThing", "model.name: 'torch.nn' has no attribute 'NoSuchThing'"),
        ("torch.nn:modules", "model.name: 'torch.nn:modules' is not callable"),
    ],
)
def test_resolve_bad_import_paths(path: str, fragment: str) -> None:
    with pytest.raises(UserError) as info:
        registry.resolve("models", path, key="model.name")
    assert fragment in info.value.problems[0]


# ---------------------------------------------------------------- build


def tiny_problem(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A module and input that `name` can optimize (some optimizers need special params)."""
    if name == "SparseAdam":  # needs sparse gradients
        return nn.Embedding(4, 2, sparse=True), torch.tensor([0, 1, 2])
    if name == "Muon":  # only 2-D parameters
        return nn.Linear(4, 2, bias=False), torch.ones(3, 4)
    return nn.Linear(4, 2), torch.ones(3, 4)


@pytest.mark.parametrize("name", list(registry.entries("optimizers")))
def test_every_optimizer_builds_and_steps(name: str) -> None:
    torch.manual_seed(0)
    module, inputs = tiny_problem(name)
    before = [p.detach().clone() for p in module.parameters()]
    optimizer = registry.build(
        "optimizers", name, {}, key="optimizer", params=list(module.parameters())
    )
    assert isinstance(optimizer, registry.entries("optimizers")[name])

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = module(inputs).pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    for old, new in zip(before, module.parameters(), strict=True):
        assert not torch.equal(old, new)


def test_build_passes_supplied_and_config_arguments() -> None:
    params = list(nn.Linear(4, 2).parameters())
    optimizer = registry.build(
        "optimizers", "SGD", {"lr": 0.5, "momentum": 0.9}, key="optimizer", params=params
    )
    assert optimizer.param_groups[0]["lr"] == 0.5
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_build_turns_rejected_values_into_user_errors() -> None:
    params = list(nn.Linear(4, 2).parameters())
    with pytest.raises(UserError, match=r"^optimizer: SGD rejected its arguments: .*-1"):
        registry.build("optimizers", "SGD", {"lr": -1.0}, key="optimizer", params=params)


def test_build_checks_arguments_before_calling() -> None:
    with pytest.raises(UserError) as info:
        registry.build("models", "small_cnn", {"widht": 4, "depth": 2}, key="model")
    assert [p.split(":")[0] for p in info.value.problems] == ["model.widht", "model.depth"]
    assert "did you mean 'width'?" in info.value.problems[0]


def test_check_components_of_a_whole_config() -> None:
    config = validate_config(
        {
            "name": "m",
            "model": {"name": "small_cnn", "widht": 4},
            "data": {"name": "shapes", "train": False},
            "loss": {"name": "CrossEntropyLos"},
            "optimizer": {"name": "SGD", "lrr": 0.1},
            "scheduler": {"name": "StepLR"},
        }
    )
    problems = check_components(config)
    assert [p.split(":")[0] for p in problems] == [
        "model.widht",
        "data.train",
        "loss.name",
        "optimizer.lrr",
        "scheduler.step_size",
    ]
    assert "did you mean 'CrossEntropyLoss'?" in problems[2]


# ---------------------------------------------------------------- import paths


@pytest.mark.parametrize("path", [":", "x:", ":y", "a b:c", "x:y:z", "1x:y"])
def test_malformed_import_paths(path, tiny_yaml, write_config, user_error) -> None:
    text = tiny_yaml.replace("name: small_cnn,", f"name: {path!r},")
    user_error(
        "groups",
        write_config(text),
        expect=[f"model.name: {path!r} is not an import path: expected 'package.module:callable'"],
    )


@pytest.mark.parametrize(
    ("source", "line", "error"),
    [
        ("import torch\n\ndef net(:\n", 3, "SyntaxError: invalid syntax"),
        ("import torch\nraise ValueError('boom')\n", 2, "ValueError: boom"),
        ("import torch\nimport no_such_dependency\n", 2, "No module named 'no_such_dependency'"),
        ("def helper():\n    return {}['k']\n\nhelper()\n", 2, "KeyError: 'k'"),
    ],
    ids=["syntax", "raise", "missing-dependency", "raise-in-a-function"],
)
@pytest.mark.parametrize("command", ["groups", "fit"])
def test_a_module_that_fails_to_import_names_the_place(
    command, source, line, error, module, tiny_yaml, write_config, user_error, tmp_path
) -> None:
    where = module("broken_mod", source)
    text = tiny_yaml.replace("name: small_cnn,", "name: 'broken_mod:net',")
    user_error(
        command,
        write_config(text),
        expect=[
            f"model.name: importing 'broken_mod' for 'broken_mod:net' failed at {where}:{line}",
            error,
        ],
    )
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- the user's own code


def user_model_config(write_config: Callable[..., Path], tiny_yaml: str, model: str) -> Path:
    """The tiny config with `model: {model}` (a YAML flow mapping)."""
    lines = [line for line in tiny_yaml.splitlines() if not line.startswith("model:")]
    return write_config("\n".join([*lines, f"model: {model}"]) + "\n")


def test_a_bug_in_the_users_model_is_exit_1_with_their_traceback(
    module, tiny_yaml, write_config, run_cli
) -> None:
    where = module("user_models", USER_MODELS)
    config = user_model_config(write_config, tiny_yaml, "{name: 'user_models:Buggy'}")
    result = run_cli("groups", config)
    assert result.exit_code == 1
    assert isinstance(result.exception, KeyError)
    (last,) = traceback.extract_tb(result.exception.__traceback__)[-1:]
    assert (last.filename, last.lineno) == (str(where), 12)
    assert "a bug in that code, not a problem of the config" in result.exception.__notes__[0]


def test_argument_problems_with_the_users_callable_stay_exit_2(
    module, tiny_yaml, write_config, user_error
) -> None:
    module("user_models", USER_MODELS)
    user_error(
        "groups",
        user_model_config(write_config, tiny_yaml, "{name: 'user_models:positional', width: 3}"),
        expect=["model: user_models:positional cannot take these arguments", "positional only"],
    )
    user_error(
        "groups",
        user_model_config(write_config, tiny_yaml, "{name: 'user_models:net', width: -1}"),
        expect=["model: user_models:net rejected its arguments", "negative dimension"],
    )


def test_registry_build_lets_the_users_own_errors_through(module, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module("user_models", USER_MODELS)
    with pytest.raises(KeyError, match="missing"):
        registry.build("models", "user_models:Buggy", {}, key="model")
    with pytest.raises(UserError, match="rejected its arguments"):
        registry.build("models", "small_cnn", {"width": -1}, key="model")
