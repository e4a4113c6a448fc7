"""trainer.config: safe YAML, dotted overrides, the schema and its error messages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from helpers.configs import MINIMAL

from trainer.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_to_yaml,
    load_config,
    parse_yaml,
    read_configs,
    validate_config,
)
from trainer.errors import UserError


def problems_of(raw: dict) -> list[str]:
    """The problems validate_config reports for `raw` (it must reject it)."""
    with pytest.raises(UserError) as info:
        validate_config(raw)
    return info.value.problems


# ---------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1e-3", 1e-3), ("1.0e-3", 1e-3), ("-2E+2", -200.0), ("5e4", 5e4), (".5e1", 5.0)],
)
def test_exponent_notation_parses_as_float(text: str, expected: float) -> None:
    value = parse_yaml(text, source="t")
    assert type(value) is float
    assert value == expected


@pytest.mark.parametrize(("text", "expected"), [("3", 3), ("0.5", 0.5), ("abc", "abc")])
def test_other_scalars_keep_their_yaml_types(text: str, expected: object) -> None:
    value = parse_yaml(text, source="t")
    assert type(value) is type(expected)
    assert value == expected


def test_python_tags_are_refused_and_never_run(tmp_path) -> None:
    marker = tmp_path / "pwned"
    text = f"model: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(UserError, match=r"line 1.*python tags are not allowed"):
        parse_yaml(text, source="cfg.yaml")
    assert not marker.exists()


def test_yaml_syntax_error_names_source_and_line() -> None:
    text = "name: x\nmodel: {name: small_cnn}\ndata: name: shapes\n"
    with pytest.raises(UserError, match=r"^cfg\.yaml \(line 3, column \d+\): not valid YAML"):
        parse_yaml(text, source="cfg.yaml")


def test_read_configs_defaults_name_to_file_stem(tmp_path) -> None:
    path = tmp_path / "my-run.yaml"
    path.write_text("model: {name: small_cnn}\ndata: {name: shapes}\n")
    assert read_configs(path).raw["name"] == "my-run"
    path.write_text("name: other\nmodel: {name: small_cnn}\ndata: {name: shapes}\n")
    assert read_configs(path).raw["name"] == "other"


def test_read_configs_rejects_a_directory(tmp_path) -> None:
    with pytest.raises(UserError, match="is a directory"):
        read_configs(tmp_path)


# ---------------------------------------------------------------- overrides


def test_overrides_set_nested_keys_and_create_missing_sections() -> None:
    raw = {"optimizer": {"name": "SGD", "lr": 0.1}}
    apply_overrides(
        raw, ["optimizer.lr=1e-3", "optimizer.momentum=0.9", "trainer.epochs=3", "seed=7"]
    )
    assert raw == {
        "optimizer": {"name": "SGD", "lr": 1e-3, "momentum": 0.9},
        "trainer": {"epochs": 3},
        "seed": 7,
    }


def test_override_values_are_yaml() -> None:
    raw: dict = {"param_groups": {"freeze": ["^a"]}}
    apply_overrides(
        raw, ["param_groups.freeze=[]", "scheduler=null", "data.shuffle=false", "name=a=b"]
    )
    assert raw["param_groups"]["freeze"] == []
    assert raw["scheduler"] is None
    assert raw["data"]["shuffle"] is False
    assert raw["name"] == "a=b"


def test_override_indexes_into_lists() -> None:
    raw = {"param_groups": {"rules": [{"name": "head", "match": "fc", "lr": 0.1}]}}
    apply_overrides(raw, ["param_groups.rules.0.lr=0.5"])
    assert raw["param_groups"]["rules"][0]["lr"] == 0.5


def test_override_problems_are_reported_together() -> None:
    raw = {"trainer": {"epochs": 2}, "param_groups": {"rules": []}}
    with pytest.raises(UserError) as info:
        apply_overrides(
            raw,
            ["optimizer.lr", "trainer.epochs.max=3", "param_groups.rules.0.lr=1", ".x=1"],
        )
    problems = info.value.problems
    assert len(problems) == 4
    assert "override 'optimizer.lr': expected KEY=VALUE" in problems[0]
    assert "trainer.epochs is a value, not a section" in problems[1]
    assert "param_groups.rules.0: no item 0 in a list of 0" in problems[2]
    assert "override '.x=1'" in problems[3]


def test_override_with_bad_yaml_value_names_the_override() -> None:
    with pytest.raises(UserError, match=r"^override 'optimizer.lr=\[1'.*not valid YAML"):
        apply_overrides({}, ["optimizer.lr=[1"])


# ---------------------------------------------------------------- schema


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = validate_config(dict(MINIMAL))
    assert config.seed == 0
    assert config.loss.name == "CrossEntropyLoss"
    assert config.scheduler is None
    assert config.trainer.device == "auto"
    assert config.trainer.precision == "fp32"
    assert config.trainer.accumulate == 1
    assert config.trainer.out_dir is None
    assert config.data.shuffle is True


def test_component_keys_become_keyword_arguments() -> None:
    raw = {**MINIMAL, "model": {"name": "small_cnn", "width": 8, "init_from": "w.pt"}}
    raw["scheduler"] = {"name": "StepLR", "step_size": 2, "interval": "step"}
    raw["data"] = {"name": "shapes", "size": 10, "batch_size": 5}
    config = validate_config(raw)
    assert config.model.kwargs == {"width": 8}
    assert config.model.init_from.path == "w.pt"
    assert config.scheduler.kwargs == {"step_size": 2}
    assert config.scheduler.interval == "step"
    assert config.data.kwargs == {"size": 10}
    assert config.data.batch_size == 5


def test_unknown_keys_suggest_the_closest_allowed_key() -> None:
    raw = {**MINIMAL, "optimizerr": {"name": "SGD"}, "trainer": {"epoch": 3}}
    problems = problems_of(raw)
    assert len(problems) == 2
    top = next(p for p in problems if p.startswith("optimizerr:"))
    nested = next(p for p in problems if p.startswith("trainer.epoch:"))
    assert "did you mean 'optimizer'?" in top
    assert "did you mean 'epochs'?" in nested
    allowed = nested.partition("(allowed: ")[2].rstrip(")").split(", ")
    assert {"epochs", "device", "precision", "accumulate"} <= set(allowed)


@pytest.mark.parametrize(
    ("section", "value", "path", "fragment"),
    [
        ("trainer", {"epochs": "ten"}, "trainer.epochs", "'ten'"),
        ("trainer", {"epochs": 0}, "trainer.epochs", "greater than 0"),
        ("trainer", {"precision": "fp8"}, "trainer.precision", "'fp32', 'bf16' or 'fp16'"),
        ("trainer", {"device": "gpu"}, "trainer.device", "auto, cpu, cuda, cuda:N or mps"),
        ("trainer", {"device": "cuda:x"}, "trainer.device", "'cuda:x'"),
        ("checkpoint", {"mode": "maximum"}, "checkpoint.mode", "'min' or 'max'"),
        ("param_groups", {"freeze": ["^a", "("]}, "param_groups.freeze.1", "invalid regex"),
        ("param_groups", {"no_decay": ["weights"]}, "param_groups.no_decay.0", "'weights'"),
        ("data", {"name": "shapes", "batch_size": -1}, "data.batch_size", "-1"),
        ("optimizer", 0.1, "optimizer", "expected a mapping with keys name"),
    ],
)
def test_bad_values_name_the_key_path(section, value, path, fragment) -> None:
    problems = problems_of({**MINIMAL, section: value})
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:")
    assert fragment in problems[0]


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_valid_device_strings(device: str) -> None:
    assert validate_config({**MINIMAL, "trainer": {"device": device}}).trainer.device == device


def test_missing_required_sections() -> None:
    problems = problems_of({"name": "m"})
    assert sorted(problems) == ["data: required key is missing", "model: required key is missing"]


def test_every_problem_is_reported_at_once() -> None:
    raw = {
        **MINIMAL,
        "optimizerr": {},
        "trainer": {"epochs": "ten", "precision": "fp8", "device": "gpu"},
    }
    problems = problems_of(raw)
    paths = sorted(p.split(":")[0] for p in problems)
    assert paths == ["optimizerr", "trainer.device", "trainer.epochs", "trainer.precision"]


def test_rule_sets_lr_or_lr_mult_not_both() -> None:
    rule = {"name": "head", "match": "fc", "lr": 0.1, "lr_mult": 10}
    problems = problems_of({**MINIMAL, "param_groups": {"rules": [rule]}})
    assert len(problems) == 1
    assert problems[0].startswith("param_groups.rules.0.lr_mult:")
    assert "set lr or lr_mult, not both" in problems[0]


def test_rule_names_must_be_unique() -> None:
    rules = [{"name": "a", "match": "x"}, {"name": "a", "match": "y"}]
    problems = problems_of({**MINIMAL, "param_groups": {"rules": rules}})
    assert len(problems) == 1
    assert problems[0].startswith("param_groups.rules: rule names must be unique; repeated: a ")


def test_rule_options_beyond_lr_and_weight_decay() -> None:
    rule = {"name": "head", "match": "fc", "lr_mult": 10, "momentum": 0.5}
    config = validate_config({**MINIMAL, "param_groups": {"rules": [rule]}})
    assert config.param_groups.rules[0].options == {"momentum": 0.5}


def test_run_name_must_be_a_safe_directory_name() -> None:
    problems = problems_of({**MINIMAL, "name": "../escape"})
    assert len(problems) == 1
    assert problems[0].startswith("name:")


def test_resolved_yaml_round_trips(tmp_path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "model: {name: small_cnn, width: 4}\n"
        "data: {name: shapes, size: 64}\n"
        "scheduler: {name: StepLR, step_size: 1}\n"
        "param_groups: {rules: [{name: head, match: '^fc\\.', lr_mult: 10}]}\n"
    )
    config = load_config(path, ["optimizer.lr=0.5"])
    dumped = config_to_yaml(config)
    assert Config.model_validate(yaml.safe_load(dumped)) == config
    assert list(yaml.safe_load(dumped)) == list(Config.model_fields)


def test_strings_that_look_like_other_values_round_trip() -> None:
    """A quoted `'1e5'` (a float to this loader) comes back from a run's config.yaml a string."""
    looks_like = ["1e5", "-1E+5", "true", "null", "0x10", "1_000", "~", "on", ".inf", "1:30"]
    raw = {**MINIMAL, "model": {"name": "small_cnn", "tags": looks_like, "label": "1e-3"}}
    config = validate_config(raw)
    loaded = parse_yaml(config_to_yaml(config), source="config.yaml")
    assert (loaded["model"]["tags"], loaded["model"]["label"]) == (looks_like, "1e-3")
    assert validate_config(loaded) == config


def test_config_comments_cite_only_files_in_the_repository() -> None:
    root = Path(__file__).resolve().parent.parent
    for config in sorted((root / "configs").glob("*.yaml")):
        for cited in re.findall(r"[\w./-]+\.md\b", config.read_text(encoding="utf-8")):
            assert (root / cited).is_file(), f"{config.name} cites {cited}, which is not there"


# ---------------------------------------------------------------- its layer


BELOW_CONFIG = ("trainer.config", "trainer.errors", "trainer.interrupt", "trainer.user_path")


def test_config_imports_nothing_from_the_layers_above_it() -> None:
    """Module-level and lazy imports alike: components, engine, runs, ... import config."""
    import trainer.config

    above = []
    for source in sorted(Path(trainer.config.__path__[0]).glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
                if node.module == "trainer":
                    names = [f"trainer.{alias.name}" for alias in node.names]
            else:
                continue
            above += [
                f"{source.name}: {name}"
                for name in names
                if name.partition(".")[0] == "trainer" and not name.startswith(BELOW_CONFIG)
            ]
    assert above == []


def test_a_refused_config_keeps_the_component_sections_that_pass_on_their_own() -> None:
    """What the CLI checks the component names of, so one run lists both kinds of problem."""
    raw = {
        **MINIMAL,
        "data": {"name": "shapes", "batch_size": 0},
        "trainer": {"epoch": 3},
        "optimizers": {
            "g": {
                "params": "fc",
                "optimizer": {"name": "Adamm"},
                "scheduler": {"name": "StepLR", "interval": "often"},
            },
            "d": {"params": "conv", "optimizer": {"name": "SGD", "lr": -1}},
        },
    }
    with pytest.raises(ConfigError) as refused:
        validate_config(raw)
    keys = [problem.partition(":")[0] for problem in refused.value.problems]
    assert keys == ["data.batch_size", "optimizers.g.scheduler.interval", "trainer.epoch"]
    sections = refused.value.components
    assert {kind: list(by_key) for kind, by_key in sections.by_kind.items()} == {
        "model": ["model"],
        "optimizer": ["optimizers.g.optimizer", "optimizers.d.optimizer"],
        "scheduler": [],
    }
    assert sections.by_kind["optimizer"]["optimizers.d.optimizer"].kwargs == {"lr": -1}
    assert sections.rule_options == {}


def test_the_component_sections_of_a_config_are_each_optimizers_own() -> None:
    rule = {"name": "head", "match": "fc", "betas": [0.5, 0.9]}
    config = validate_config(
        {
            **MINIMAL,
            "optimizers": {
                "g": {
                    "params": "fc",
                    "optimizer": {"name": "Adam"},
                    "param_groups": {"rules": [rule]},
                    "scheduler": {"name": "StepLR", "step_size": 2},
                },
                "d": {"params": "conv", "optimizer": {"name": "SGD"}},
            },
        }
    )
    sections = config.component_sections()
    assert {kind: list(by_key) for kind, by_key in sections.by_kind.items()} == {
        "model": ["model"],
        "data": ["data"],
        "loss": ["loss"],
        "optimizer": ["optimizers.g.optimizer", "optimizers.d.optimizer"],
        "scheduler": ["optimizers.g.scheduler"],
    }
    assert config.optimizers is not None
    assert (
        sections.by_kind["scheduler"]["optimizers.g.scheduler"] is config.optimizers["g"].scheduler
    )
    assert sections.rule_options == {"optimizers.g.param_groups.rules.0": {"betas": [0.5, 0.9]}}
