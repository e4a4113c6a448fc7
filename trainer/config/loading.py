"""Loading a config: read and merge the files (`compose`), apply the overrides, validate, and
describe every problem by config key (and the file that set it) at once; and the resolved
config as YAML.

Components are checked by the layers above: where the schema refuses a config, the
ConfigError holds its sections that pass on their own, so the caller can check their
component names too and report both together.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from trainer.config import trust
from trainer.config.compose import Composed, compose_files, name_origins
from trainer.config.monitors import monitor_problems
from trainer.config.overrides import Origins, apply_overrides
from trainer.config.schema import (
    COMPONENT_SECTIONS,
    Component,
    ComponentSections,
    Config,
    OptimizerEntry,
)
from trainer.config.yaml_files import dump_yaml
from trainer.errors import UserError, did_you_mean, echo


class ConfigError(UserError):
    """A config the schema refuses, with the raw mapping it was given (see `components`)."""

    def __init__(self, problems: list[str], raw: dict[str, Any]) -> None:
        super().__init__(problems)
        self.raw = raw

    @property
    def components(self) -> ComponentSections:
        """The sections naming components that pass the schema on their own: checking their
        names does not depend on the rest, so one run can list both kinds of problem."""
        return _valid_component_sections(self.raw)


def read_configs(
    paths: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()
) -> Composed:
    """The raw mapping of config files merged left to right (each with its bases), `name`
    defaulting to the last file's stem, the overrides applied; with each key's origin. The
    directories of the command-line files, and of the bases inside the project, are the
    user's own (trust.use_config_files)."""
    files = [paths] if isinstance(paths, str | Path) else list(paths)
    if not files:
        raise UserError("CONFIG: at least one config file is needed")
    composed = compose_files(files)
    apply_overrides(composed.raw, list(overrides), composed.origins)
    if "name" not in composed.raw:  # none in the last file (or `~name` deleted it)
        last = Path(files[-1])
        composed.raw["name"] = last.stem
        composed.origins[("name",)] = f"default: the stem of {last}"
    command_line = [Path(file) for file in files]
    trust.use_config_files(command_line, [p for p in composed.files if p not in command_line])
    return composed


def load_config(paths: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()) -> Config:
    """Read, merge, override and validate config files; every problem is reported at once."""
    composed = read_configs(paths, overrides)
    return validate_config(composed.raw, composed.origins)


def validate_config(raw: dict[str, Any], origins: Origins | None = None) -> Config:
    """The schema's verdict on a raw mapping, as a Config or a ConfigError listing all problems
    (a problem with a value names the file and line that set it, given `origins`)."""
    try:
        return _validate(raw)
    except ConfigError as err:
        raise ConfigError(name_origins(err.problems, origins or {}), raw) from None


def _validate(raw: dict[str, Any]) -> Config:
    not_finite = dict(_non_finite(raw, ()))
    problems = [
        f"{'.'.join(map(str, loc))}: {value} is not a finite number; NaN and infinity are "
        "not allowed in a config"
        for loc, value in not_finite.items()
    ]
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        described = [_describe(e, raw) for e in err.errors() if tuple(e["loc"]) not in not_finite]
        raise ConfigError(problems + described, raw) from None
    if problems:
        raise ConfigError(problems, raw)
    problems = monitor_problems(config) + clipping_problems(config)
    if problems:
        raise ConfigError(problems, raw)
    return config


def clipping_problems(config: Config) -> list[str]:
    """One clipping per optimizer, as Lightning Fabric allows: clip_grad_norm with
    clip_grad_value is refused, set in trainer, per optimizer, or one in each."""
    problems = []
    for spec in config.optimizer_specs():
        if spec.clip_grad_norm is None or spec.clip_grad_value is None:
            continue
        entry = config.optimizers[spec.name] if config.optimizers else None
        value, norm = (
            f"{spec.key}{key}" if getattr(entry, key, None) is not None else f"trainer.{key}"
            for key in ("clip_grad_value", "clip_grad_norm")
        )
        problems.append(
            f"{value}: {spec.clip_grad_value} cannot be set with {norm}: {spec.clip_grad_norm} "
            "(one clipping per optimizer: by norm or by value, not both)"
        )
    return list(dict.fromkeys(problems))


def _valid_component_sections(raw: dict[str, Any]) -> ComponentSections:
    """The sections of a raw mapping that name components and pass the schema on their own
    (with `optimizers`, each optimizer's own optimizer and scheduler)."""
    by_kind = {
        kind: {kind: section}
        for kind, section in _valid_sections(raw, Config, COMPONENT_SECTIONS).items()
    }
    several = raw.get("optimizers")
    if isinstance(several, dict):
        for kind in ("optimizer", "scheduler"):
            by_kind[kind] = {
                f"optimizers.{name}.{kind}": section
                for name, entry in several.items()
                if isinstance(entry, dict)
                for section in _valid_sections(entry, OptimizerEntry, (kind,)).values()
            }
    return ComponentSections(by_kind=by_kind, rule_options={})


def _valid_sections(
    raw: dict[str, Any], model: type[BaseModel], keys: tuple[str, ...]
) -> dict[str, Component]:
    """The component sections among `keys` of a raw mapping of `model` that pass the schema."""
    valid = {}
    for key in keys:
        field = model.model_fields.get(key)
        section = _model_in(field.annotation) if field else None
        if section is None or not issubclass(section, Component):
            continue
        if isinstance(raw.get(key), dict):
            try:
                valid[key] = section.model_validate(raw[key])
            except ValidationError:
                continue
    return valid


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML, sections in schema order; it loads back as it is."""
    return dump_yaml(config.to_dict())


def _non_finite(node: Any, loc: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], float]]:
    """(location, value) of every NaN or infinity in a raw config."""
    if isinstance(node, float) and not math.isfinite(node):
        return [(loc, node)]
    if isinstance(node, dict):
        return [found for key, value in node.items() for found in _non_finite(value, (*loc, key))]
    if isinstance(node, list):
        return [found for i, value in enumerate(node) for found in _non_finite(value, (*loc, i))]
    return []


def _describe(error: ErrorDetails, raw: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    path = ".".join(str(p) for p in loc) or "config"
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _keys_at(loc[:-1])
        hint = did_you_mean(str(loc[-1]), allowed)
        return f"{path}: unknown key{hint} (allowed: {', '.join(allowed)})"
    if kind == "missing":
        return f"{path}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if kind in ("model_type", "dict_type") and loc and _keys_at(loc):
        message = f"expected a mapping with keys {', '.join(_keys_at(loc))}"
    if not loc:  # a check of the whole config: its message names the keys, not the input
        return message
    got = f"got {echo(error['input'])}"
    if "rules" in loc[:-2]:  # name the rule as well as its index
        rule = _at(raw, loc[: loc.index("rules") + 2])
        if isinstance(rule, dict) and isinstance(rule.get("name"), str):
            got = f"rule {echo(rule['name'])}, {got}"
    return f"{path}: {message} ({got})"


def _at(raw: Any, loc: tuple[Any, ...]) -> Any:
    """The value at a location of a raw mapping, or None where there is none."""
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys the schema allows at a location, for 'unknown key' messages."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if _is_model(model) else None
        if field is None:
            return []
        model = _model_in(field.annotation)
    return list(model.model_fields) if _is_model(model) else []


def _is_model(tp: object) -> TypeGuard[type[BaseModel]]:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The BaseModel inside `X`, `X | None` or `list[X]`, if any."""
    if _is_model(annotation):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (
        typing.Union,
        list,
    ):
        for arg in typing.get_args(annotation):
            if _is_model(_model_in(arg)):
                return _model_in(arg)
    return None
