"""The JSON Schema of a config file (`trainer schema`, configs/trainer.schema.json): current,
named by every example config, and in agreement with the loader: what the loader refuses of
the runner's own keys the schema refuses too, and what the loader accepts the schema accepts,
over cases generated from the pydantic model (so keys added later are covered) and written
out by hand. What only the loader can refuse is listed (LOADER_ONLY), as the README says."""

from __future__ import annotations

import copy
import math
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.configs import MINIMAL
from helpers.imports import torch_modules_imported
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from trainer.config import Config, ConfigError, load_config, parse_yaml, validate_config
from trainer.config.json_schema import config_json_schema, config_json_schema_text

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
COMMITTED = CONFIGS / "trainer.schema.json"
SCHEMA_LINE = "# yaml-language-server: $schema=trainer.schema.json"
VALIDATOR = Draft202012Validator(config_json_schema())


def schema_accepts(raw: dict[str, Any]) -> bool:
    return VALIDATOR.is_valid(raw)


def loader_accepts(raw: dict[str, Any]) -> bool:
    try:  # as a file is read: `name` defaults to the file's name
        validate_config(copy.deepcopy({"name": "cfg", **raw}))
    except ConfigError:
        return False
    return True


def changed(raw: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A copy of `raw` with the key at `path` set to `value` (or removed, for DELETE)."""
    raw = copy.deepcopy(raw)
    parent = raw
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return raw


DELETE = object()

# ---------------------------------------------------------------- the file and the command


def test_committed_schema_is_what_trainer_schema_prints() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == config_json_schema_text(), (
        "configs/trainer.schema.json is out of date with the config models; regenerate it: "
        "uv run trainer schema > configs/trainer.schema.json"
    )


def test_schema_is_draft_2020_12() -> None:
    schema = config_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_trainer_schema_prints_it_without_torch() -> None:
    output, modules = torch_modules_imported(["schema"])
    assert modules == []
    assert output + "\n" == config_json_schema_text()


def test_trainer_schema_out_writes_the_file(run_cli, tmp_path) -> None:
    result = run_cli("schema", "--out", "schema.json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "schema.json").read_text(encoding="utf-8") == config_json_schema_text()
    assert result.stdout == ""


def test_trainer_schema_out_to_a_missing_directory_is_exit_2(run_cli) -> None:
    result = run_cli("schema", "--out", "no/such/dir/schema.json")
    assert result.exit_code == 2
    assert "--out no/such/dir/schema.json: cannot write" in result.stderr


def test_every_runner_key_is_described() -> None:
    """Editors show a key's description on hover: give a new key `Field(description=...)`
    (a section's own description is its class docstring)."""
    schema = config_json_schema()
    undescribed = [
        f"{name}.{key}"
        for name, definition in schema["$defs"].items()
        for key, field in definition.get("properties", {}).items()
        if "description" not in field
        and "$ref" not in field
        and not any("$ref" in option for option in field.get("anyOf", []))
    ]
    assert undescribed == []
    assert [n for n, d in schema["$defs"].items() if "description" not in d] == []


EXAMPLES = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.endswith("_space.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_names_the_schema_and_passes_it(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == SCHEMA_LINE, f"{path.name}: first line is not {SCHEMA_LINE}"
    errors = [e.message for e in VALIDATOR.iter_errors(parse_yaml(text, source=str(path)))]
    assert errors == []
    load_config(path)  # and the loader accepts it


def test_every_config_in_configs_is_checked() -> None:
    """Only search spaces (`*_space.yaml`: dotted config keys and `enqueue`) are left out."""
    assert len(EXAMPLES) >= 13
    for space in sorted(set(CONFIGS.glob("*.yaml")) - set(EXAMPLES)):
        keys = parse_yaml(space.read_text(encoding="utf-8"), source=str(space))
        assert all("." in key or key == "enqueue" for key in keys), space.name


# ---------------------------------------------------------------- generated cases

# A valid config with every section present, in each form: one optimizer, several.
ONE: dict[str, Any] = {
    **MINIMAL,
    "seed": 1,
    "model": {"name": "small_cnn", "width": 4, "init_from": {"path": "w.pt", "prefix": {"a": ""}}},
    "data": {"name": "shapes", "batch_size": 8, "train_transforms": [{"name": "RandomCrop"}]},
    "loss": {"name": "CrossEntropyLoss"},
    "step": {"name": "supervised"},
    "optimizer": {"name": "SGD", "lr": 0.1},
    "param_groups": {
        "freeze": ["^conv1"],
        "no_decay": ["bias"],
        "rules": [{"name": "head", "match": "^fc", "lr": 0.1, "weight_decay": 0.0}],
        "layer_decay": {"rate": 0.75, "layers": r"^layer(\d+)\.", "head": "^fc"},
    },
    "scheduler": {"name": "ReduceLROnPlateau", "monitor": "val/loss", "warmup": {"epochs": 1}},
    "trainer": {
        "epochs": 2,
        "device": "cpu",
        "early_stopping": {"patience": 2},
        "strategy": "fsdp",
    },
    "fsdp": {"units": ["^blocks"]},
    "checkpoint": {"every_epochs": 1},
    "metrics": [{"name": "MulticlassAccuracy", "key": "top1"}],
    "logging": {"tensorboard": False},
}
SEVERAL: dict[str, Any] = {
    **MINIMAL,
    "optimizers": {
        "gen": {
            "params": "^gen",
            "optimizer": {"name": "Adam", "lr": 0.1},
            "param_groups": {"no_decay": ["norm"], "rules": [{"name": "a", "match": "x"}]},
            "scheduler": {"name": "StepLR", "interval": "step", "warmup": {"steps": 2}},
            "clip_grad_norm": 1.0,
        }
    },
    "param_groups": {"freeze": ["^enc"]},
}

# Values of every kind, and some just inside or outside the usual constraints.
CANDIDATES: list[Any] = [
    "x",
    "val/loss",
    "cuda:1",
    7,
    0,
    -1,
    0.5,
    1.5,
    True,
    None,
    [],
    ["a"],
    [{"name": "x"}],
    {},
    {"name": "x"},
    DELETE,
]


def nested_model(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """("one" | "list" | "dict", the model) where a field holds sections, else None."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return nested_model(args[0])
    if origin in (typing.Union, types.UnionType):
        found = [nested_model(arg) for arg in args if arg is not type(None)]
        return next((f for f in found if f), None)
    if origin in (list, dict) and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
        return ("list" if origin is list else "dict"), args[-1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "one", annotation
    return None


Path_ = tuple[str | int, ...]


def sections(model: type[BaseModel], raw: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """(path, model) of every section `raw` holds, nested ones and list items included."""
    yield path, model
    for name, field in model.model_fields.items():
        found = nested_model(field.annotation)
        if found is None or not isinstance(raw.get(name), (dict, list)):
            continue
        kind, inner = found
        value = raw[name]
        keys = range(len(value)) if kind == "list" else value if kind == "dict" else [None]
        for key in keys:
            item = value if key is None else value[key]
            if isinstance(item, dict):
                where = (*path, name) if key is None else (*path, name, key)
                yield from sections(inner, item, where)


def generated_cases(base: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every candidate value (or none) for every key of every section."""
    for path, model in sections(Config, base):
        for name in model.model_fields:
            for value in CANDIDATES:
                where = ".".join(map(str, (*path, name)))
                shown = "<deleted>" if value is DELETE else repr(value)
                yield f"{where}={shown}", changed(base, (*path, name), value)


@pytest.mark.parametrize("base", [ONE, SEVERAL], ids=["one-optimizer", "several-optimizers"])
def test_schema_and_loader_agree_on_generated_configs(base: dict[str, Any]) -> None:
    assert loader_accepts(base) and schema_accepts(base)
    cases = dict(generated_cases(base))
    verdicts = {name: (loader_accepts(raw), schema_accepts(raw)) for name, raw in cases.items()}
    differ = {name: f"loader {v[0]}, schema {v[1]}" for name, v in verdicts.items() if v[0] != v[1]}
    assert differ == {}
    refused = [name for name, (loader, _) in verdicts.items() if not loader]
    assert len(cases) > 800 and len(refused) > 300  # the cases reach the constraints


@pytest.mark.parametrize("base", [ONE, SEVERAL], ids=["one-optimizer", "several-optimizers"])
def test_unknown_keys_are_refused_but_in_components(base: dict[str, Any]) -> None:
    """A component's (and a rule's) other keys are the callable's; a section's are errors."""
    checked = []
    for path, model in sections(Config, base):
        raw = changed(base, (*path, "not_a_key"), 1)
        opened = model.model_config.get("extra") == "allow"
        assert (loader_accepts(raw), schema_accepts(raw)) == (opened, opened), path
        checked.append(".".join(map(str, path)))
    assert "trainer.early_stopping" in checked or "optimizers.gen.scheduler.warmup" in checked


# ---------------------------------------------------------------- cases written out

# (dotted key, value): both refuse ONE with it. The constraints DESIGN.md and the README
# name, each just outside what is allowed, and the rules between keys a schema can state.
BOTH_REFUSE: list[tuple[str, Any]] = [
    ("trainer.epochs", 0),
    ("trainer.accumulate", 0),
    ("trainer.precision", "fp8"),
    ("trainer.device", "gpu"),
    ("trainer.device", "cuda:x"),
    ("trainer.strategy", "zero"),
    ("trainer.early_stopping.patiense", 3),
    ("trainer.early_stopping.monitor", "loss"),
    ("trainr", {"epochs": 2}),
    ("seed", 2**63),
    ("name", "my run"),
    ("data.batch_size", "64"),
    ("data.val_fraction", 1),
    ("data.train_transforms", [{"size": 4}]),  # (the component check's refusal, see below)
    ("model", {"width": 4}),
    ("model.init_from", {"path": "w.pt", "strict": "no"}),
    ("param_groups.rules.0.lr", -0.1),
    ("param_groups.rules.0.lr_mult", 2.0),  # with lr
    ("param_groups.rules.0.wd_mult", 0.5),  # with weight_decay
    ("param_groups.rules.0.name", "default"),
    ("param_groups.rules.0.name", "head.no_decay"),
    ("param_groups.no_decay", ["weights"]),
    ("param_groups.layer_decay.rate", 0),
    ("param_groups.layer_decay.rate", 1.5),
    ("param_groups.layer_decay", {"rate": 0.5}),
    ("scheduler.warmup", {"epochs": 1, "steps": 10}),
    ("scheduler.warmup", {"start_factor": 0.5}),
    ("scheduler.warmup.start_factor", 0),
    ("scheduler.name", "StepLR"),  # with monitor
    ("scheduler.warmup", {"steps": 10}),  # with interval: epoch
    ("scheduler.interval", "batch"),
    ("trainer.clip_grad_value", 1.0),  # with clip_grad_norm
    ("fsdp.param_dtype", "fp8"),
    ("trainer.strategy", "ddp"),  # with an fsdp section
    ("checkpoint.keep_last", -1),
    ("checkpoint.mode", "best"),
    ("metrics.0.key", "val/top1"),
    ("optimizers", {}),
    ("optimizers", {"1st": {"params": ".", "optimizer": {"name": "SGD"}}}),
    ("optimizers", {"g": {"params": ".", "optimizer": {"name": "SGD"}}}),  # with optimizer
]


def with_clip_norm(raw: dict[str, Any]) -> dict[str, Any]:
    return changed(raw, ("trainer", "clip_grad_norm"), 1.0)


def dotted(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    path = tuple(int(part) if part.isdigit() else part for part in key.split("."))
    return changed(raw, path, value)


@pytest.mark.parametrize(("key", "value"), BOTH_REFUSE, ids=[f"{k}={v}" for k, v in BOTH_REFUSE])
def test_schema_refuses_what_the_loader_refuses(key: str, value: Any) -> None:
    base = with_clip_norm(ONE) if key == "trainer.clip_grad_value" else ONE
    raw = dotted(base, key, value)
    if key == "data.train_transforms":  # the config loader leaves transforms to the check
        from trainer.components.checks import check_components

        assert loader_accepts(raw)
        components = validate_config(raw).component_sections()
        assert any("needs a name" in p for p in check_components(components))
    else:
        assert not loader_accepts(raw)
    assert not schema_accepts(raw)


SEVERAL_REFUSED: list[tuple[str, Any]] = [
    ("param_groups.rules", [{"name": "a", "match": "x"}]),  # per optimizer with optimizers
    ("param_groups.no_decay", ["bias"]),
    ("param_groups.layer_decay", {"rate": 0.5, "layers": r"^blocks\.(\d+)\."}),
    ("scheduler", {"name": "StepLR"}),
    ("optimizers.gen.param_groups.freeze", ["^x"]),  # freeze is global
    ("optimizers.gen.param_groups.freeze_norm_stats", False),
    ("optimizers.gen.clip_grad_value", 1.0),  # with its clip_grad_norm
    ("optimizers.gen.params", None),
]


@pytest.mark.parametrize(("key", "value"), SEVERAL_REFUSED, ids=[k for k, _ in SEVERAL_REFUSED])
def test_schema_refuses_what_the_loader_refuses_of_several_optimizers(key, value) -> None:
    raw = dotted(SEVERAL, key, value)
    assert (loader_accepts(raw), schema_accepts(raw)) == (False, False)


BOTH_ACCEPT: list[tuple[str, Any]] = [
    ("model.init_from", "weights/backbone.pt"),
    ("model.weights", None),  # a keyword argument of the callable: anything
    ("optimizer", {"name": "AdamW", "lr": 1e-3, "betas": [0.9, 0.95], "fused": True}),
    ("loss", {"label_smoothing": 0.1}),  # name: CrossEntropyLoss by default
    ("param_groups.rules.0", {"name": "h", "match": "x", "lr_mult": 2, "momentum": 0.5}),
    ("param_groups.rules.0.lr", None),
    ("scheduler", {"name": "CosineAnnealingLR", "interval": "step", "warmup": {"steps": 9}}),
    ("scheduler", None),
    ("trainer.device", "cuda:12"),
    ("trainer.max_steps", 100),
    ("trainer.early_stopping", {"monitor": "val/top1", "mode": "max"}),
    ("fsdp", None),
    ("checkpoint", {"every_epochs": None, "every_steps": 50, "keep_last": 0}),
    ("metrics", [{"name": "MulticlassAccuracy", "num_classes": 4, "top_k": 2, "key": "top2"}]),
    ("val_step", {"name": "helpers.steps:scores", "temperature": 2.0}),
    ("data.val_fraction", 0.1),
    ("seed", 2**63 - 1),
    ("param_groups.layer_decay", {"rate": 0.75, "layers": r"^layer(?P<i>\d+)\."}),  # named
]


@pytest.mark.parametrize(("key", "value"), BOTH_ACCEPT, ids=[k for k, _ in BOTH_ACCEPT])
def test_schema_accepts_what_the_loader_accepts(key: str, value: Any) -> None:
    raw = dotted(ONE, key, value)
    assert (loader_accepts(raw), schema_accepts(raw)) == (True, True)


# What the loader refuses and a JSON Schema cannot state (README, "Editor support"): they
# stay the loader's, and `trainer config` reports them. When the schema learns one, move it.
LOADER_ONLY: dict[str, tuple[dict[str, Any], str, Any]] = {
    "a regex that does not compile": (ONE, "param_groups.freeze", ["("]),
    "a regex too slow to search": (ONE, "param_groups.rules.0.match", "(a+)+b"),
    "layers with two capture groups": (ONE, "param_groups.layer_decay.layers", r"(a)(\d+)"),
    "a monitor nothing logs": (ONE, "checkpoint.monitor", "val/nothing"),
    "rule names given twice": (
        ONE,
        "param_groups.rules",
        [{"name": "a", "match": "x"}, {"name": "a", "match": "y"}],
    ),
    "metrics logged under one name": (
        ONE,
        "metrics",
        [{"name": "MulticlassAccuracy"}, {"name": "torchmetrics:MulticlassAccuracy"}],
    ),
    "a metric logged as the runner's own": (ONE, "metrics.0.key", "acc"),
    "an integer written as a float": (ONE, "trainer.epochs", 2.0),
    "not a finite number": (ONE, "optimizer.lr", math.nan),
    "one clipping across sections": (SEVERAL, "trainer", {"clip_grad_value": 1.0}),
}


@pytest.mark.parametrize("what", LOADER_ONLY)
def test_loader_only_checks_are_the_loaders(what: str) -> None:
    base, key, value = LOADER_ONLY[what]
    raw = dotted(base, key, value)
    assert (loader_accepts(raw), schema_accepts(raw)) == (False, True)


def test_a_monitor_of_the_wrong_type_is_a_config_error() -> None:
    """Found by the generated cases: a list as monitor with metrics configured raised a
    TypeError (a traceback) where a key-named error belongs."""
    raw = dotted(ONE, "checkpoint.monitor", ["val/top1"])
    with pytest.raises(ConfigError, match=r"checkpoint\.monitor: Input should be a valid string"):
        validate_config(raw)


# ---------------------------------------------------------------- a file with `base`


@pytest.mark.parametrize(
    "variant",
    [
        {"base": "quickstart.yaml", "trainer": {"epochs": 3}},
        {"base": ["a.yaml", "b.yaml"], "model": {"width": 8}, "data": {"batch_size": 16}},
        {"base": "a.yaml", "scheduler": {"warmup": {"start_factor": 0.5}}, "~fsdp": None},
        {"base": "a.yaml", "optimizers": {"g": {"params": "^g"}}, "fsdp": {"units": []}},
    ],
    ids=["one-key", "bases-and-partial-components", "partial-warmup-and-deletion", "cross-keys"],
)
def test_a_file_with_base_holds_only_what_it_changes(variant: dict[str, Any]) -> None:
    assert [e.message for e in VALIDATOR.iter_errors(variant)] == []


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ({"trainer": {"epochs": 3}}, "'model' is a required property"),
        ({"base": "a.yaml", "trainer": {"epochs": 0}}, "0 is less than or equal to the minimum"),
        ({"base": "a.yaml", "trainer": {"epoch": 3}}, "'epoch' was unexpected"),
        ({"base": "a.yaml", "trainr": {}}, "'trainr' does not match any of the regexes"),
        ({"base": "a.yaml", "~trainer": {}}, "{} is not of type 'null'"),
        ({"base": 3}, "3 is not valid under any of the given schemas"),
        ({"base": []}, "[] is not valid under any of the given schemas"),
        ({"base": "a.yaml", "trainer": {"clip_grad_norm": 1, "clip_grad_value": 1}}, "should not"),
        ({**MINIMAL, "~trainer": None}, "'~trainer' was unexpected"),
    ],
    ids=[
        "no-base-needs-model",
        "values-still-checked",
        "unknown-keys-still-refused",
        "unknown-section",
        "deletion-is-null",
        "base-is-a-path",
        "base-names-one",
        "not-both-still-holds",
        "deletion-needs-base",
    ],
)
def test_a_file_with_base_is_still_checked(variant: dict[str, Any], message: str) -> None:
    messages = [e.message for e in VALIDATOR.iter_errors(variant)]
    assert any(message in m for m in messages), messages
