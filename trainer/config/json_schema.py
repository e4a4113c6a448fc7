"""The JSON Schema of a config file, for editors and `trainer schema`: generated from `Config`
and completed in one place (`_for_files`) with what pydantic's own schema leaves out.

The schema types and constrains the runner's own keys (unknown ones refused, required ones
required) and leaves a component's keyword arguments open: those are checked against the
callable's signature by `trainer.components.checks`, which needs torch. What the loader
checks that a schema cannot express (regex safety, monitors of metrics nothing logs, unique
names, one clipping across sections, 2.0 given for an integer) stays the loader's alone.

A file that names a `base` holds only what it changes (composition merges it over the base
before validation), so it is checked against its `Partial` definitions: the same sections with
nothing required and none of the rules the base could complete (if/then, exactly one of);
rules on values and "not both" still hold.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from trainer.config.schema import Config

DIALECT = "https://json-schema.org/draft/2020-12/schema"
DEFS = "#/$defs/"
PARTIAL = "Partial"  # suffix of the definitions a file with `base` is checked against

Schema = dict[str, Any]


def config_json_schema() -> Schema:
    """The JSON Schema (draft 2020-12) of a config file."""
    return _for_files(Config.model_json_schema())


def config_json_schema_text() -> str:
    """The schema as `trainer schema` prints it: indented, keys sorted, one trailing newline."""
    return json.dumps(config_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _given(key: str) -> Schema:
    """A mapping where `key` is present and not null (null means "not set" to the loader)."""
    return {"required": [key], "properties": {key: {"not": {"type": "null"}}}}


def _not_both(first: str, second: str) -> Schema:
    return {"not": {"allOf": [_given(first), _given(second)]}}


def _for_files(schema: Schema) -> Schema:
    """Pydantic's schema of Config, completed: the validators' rules that a schema can state,
    transforms that need a name, and the form of a file with `base` (see the module)."""
    defs = schema.pop("$defs")
    defs["Config"] = schema
    clips = _not_both("clip_grad_norm", "clip_grad_value")
    defs["TrainerConfig"]["allOf"] = [clips]
    defs["OptimizerEntry"]["allOf"] = [clips]
    defs["OptimizerEntry"]["properties"]["param_groups"].update(  # freeze is global
        properties={"freeze": {"maxItems": 0}}, **{"not": {"required": ["freeze_norm_stats"]}}
    )
    defs["WarmupConfig"]["oneOf"] = [_given("steps"), _given("epochs")]
    defs["SchedulerConfig"]["allOf"] = [
        {"if": _given("monitor"), "then": {"properties": {"name": {"const": "ReduceLROnPlateau"}}}},
        {
            "if": {
                "required": ["warmup"],
                "properties": {"warmup": {"type": "object", **_given("steps")}},
            },
            "then": {"required": ["interval"], "properties": {"interval": {"const": "step"}}},
        },
    ]
    rule = defs["RuleConfig"]
    rule["allOf"] = [_not_both("lr", "lr_mult"), _not_both("weight_decay", "wd_mult")]
    rule["properties"]["name"]["not"] = {
        "anyOf": [{"const": "default"}, {"pattern": r"\.no_decay$"}]
    }
    defs["Transform"] = {
        "type": "object",
        "title": "Transform",
        "description": "A torchvision.transforms.v2 transform by name, with its keyword arguments.",
        "required": ["name"],
        "properties": {"name": {"type": "string", "description": "A transform's class name."}},
    }
    for key in ("train_transforms", "val_transforms"):
        listed = defs["DataConfig"]["properties"][key]["anyOf"][0]
        listed["items"] = {"$ref": f"{DEFS}Transform"}
    schema["required"] = ["model", "data"]  # name: the file's name by default
    schema["allOf"] = [
        {
            "if": _given("optimizers"),
            "then": {
                "not": {"anyOf": [{"required": ["optimizer"]}, {"required": ["scheduler"]}]},
                "properties": {  # only freeze is global
                    "param_groups": {
                        "properties": {"rules": {"maxItems": 0}, "no_decay": {"maxItems": 0}}
                    }
                },
            },
        },
        {
            "if": _given("fsdp"),
            "then": {
                "required": ["trainer"],
                "properties": {
                    "trainer": {
                        "required": ["strategy"],
                        "properties": {"strategy": {"const": "fsdp"}},
                    }
                },
            },
        },
    ]
    partial = {f"{name}{PARTIAL}": _partial(definition) for name, definition in defs.items()}
    partial[f"Config{PARTIAL}"]["properties"]["base"] = {
        "description": "The config file(s) this one changes, merged first (paths relative to "
        "this file); this file holds only what differs.",
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
        ],
    }
    partial[f"Config{PARTIAL}"]["patternProperties"] = {
        "^~": {"type": "null", "description": "`~key:` deletes key of the base."}
    }
    return {
        "$schema": DIALECT,
        "title": "trainer config",
        "description": "A trainer config file (`trainer fit CONFIG`); made by `trainer schema`.",
        "$defs": {**defs, **partial},
        "if": {"required": ["base"]},
        "then": {"$ref": f"{DEFS}Config{PARTIAL}"},
        "else": {"$ref": f"{DEFS}Config"},
    }


def _partial(definition: Schema) -> Schema:
    """A definition with nothing required and no rule between keys (what a base may supply);
    its references are to partial definitions too. Rules about values stay."""
    kept = {key: value for key, value in definition.items() if key not in ("required", "oneOf")}
    rules = [rule for rule in definition.get("allOf", []) if "if" not in rule]
    if rules:
        kept["allOf"] = rules
    else:
        kept.pop("allOf", None)
    return _to_partial(copy.deepcopy(kept))


def _to_partial(node: Any) -> Any:
    """`node` with every `$ref` pointing at the partial definition."""
    if isinstance(node, list):
        return [_to_partial(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: value + PARTIAL if key == "$ref" else _to_partial(value) for key, value in node.items()
    }
