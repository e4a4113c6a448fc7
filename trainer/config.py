"""The config: YAML loading (safe only), dotted overrides, the pydantic schema, readable errors.

Nothing here imports torch: `trainer config` validates the structure of a config without it.
Names of components and their keyword arguments are checked by `trainer.registry`.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trainer.errors import UserError, did_you_mean

# ---------------------------------------------------------------- schema


class Section(BaseModel):
    """A config section with a fixed set of keys."""

    model_config = ConfigDict(extra="forbid")


class Component(BaseModel):
    """`{name: ..., <keyword arguments>}`: every key but the reserved ones goes to the callable."""

    model_config = ConfigDict(extra="allow")

    name: str

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments for the callable (the keys that are not reserved)."""
        return dict(self.model_extra or {})


class InitFrom(Section):
    """A local state dict to start from; `prefix` renames key prefixes (old: new)."""

    path: str
    strict: bool = True
    prefix: dict[str, str] = {}


class ModelConfig(Component):
    init_from: InitFrom | None = None

    @field_validator("init_from", mode="before")
    @classmethod
    def _path_alone(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class DataConfig(Component):
    batch_size: PositiveInt = 64
    val_batch_size: PositiveInt | None = None
    num_workers: NonNegativeInt = 0
    shuffle: bool = True
    drop_last: bool = False
    val_fraction: float | None = Field(default=None, gt=0, lt=1)
    persistent_workers: bool = False
    pin_memory: bool | None = None
    train_transforms: list[dict[str, Any]] | None = None
    val_transforms: list[dict[str, Any]] | None = None


class LossConfig(Component):
    name: str = "CrossEntropyLoss"


class OptimizerConfig(Component):
    name: str = "SGD"


EPOCH_METRICS = ("train/loss", "val/loss", "val/acc")


def default_mode(monitor: str) -> Literal["min", "max"]:
    """Higher is better for accuracy, lower for losses."""
    return "max" if monitor.endswith("acc") else "min"


def _check_monitor(monitor: str) -> str:
    if monitor not in EPOCH_METRICS:
        raise ValueError(
            f"{monitor!r} is not a logged metric (metrics: {', '.join(EPOCH_METRICS)})"
        )
    return monitor


class WarmupConfig(Section):
    """A LinearLR warmup from `start_factor` x lr, composed with the scheduler by SequentialLR."""

    steps: PositiveInt | None = None
    epochs: PositiveInt | None = None
    start_factor: float = Field(default=0.1, gt=0, le=1)

    @model_validator(mode="after")
    def _one_length(self) -> WarmupConfig:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set one of warmup.steps or warmup.epochs")
        return self


class SchedulerConfig(Component):
    interval: Literal["epoch", "step"] = "epoch"
    monitor: str | None = None
    warmup: WarmupConfig | None = None

    _monitor = field_validator("monitor")(
        classmethod(lambda cls, v: v if v is None else _check_monitor(v))
    )

    @model_validator(mode="after")
    def _fits(self) -> SchedulerConfig:
        if self.monitor is not None and self.name != "ReduceLROnPlateau":
            raise ValueError("monitor is for ReduceLROnPlateau only")
        if self.warmup and self.warmup.steps and self.interval == "epoch":
            raise ValueError("warmup.steps needs interval: step (or use warmup.epochs)")
        return self


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"invalid regex {pattern!r}: {err.msg} at position {err.pos}") from None
    return pattern


class RuleConfig(BaseModel):
    """One param-group rule; keys beyond these are options of the optimizer."""

    model_config = ConfigDict(extra="allow")

    name: str
    match: Regex
    lr: PositiveFloat | None = None
    lr_mult: PositiveFloat | None = None
    weight_decay: float | None = Field(default=None, ge=0)
    wd_mult: float | None = Field(default=None, ge=0)

    @field_validator("name")
    @classmethod
    def _own_name(cls, name: str) -> str:
        if name == "default" or name.endswith(".no_decay"):
            raise ValueError("'default' and '<name>.no_decay' name the runner's own groups")
        return name

    @field_validator("lr_mult", "wd_mult")
    @classmethod
    def _not_both(cls, value: float | None, info: ValidationInfo) -> float | None:
        absolute = {"lr_mult": "lr", "wd_mult": "weight_decay"}[info.field_name]
        if value is not None and info.data.get(absolute) is not None:
            raise ValueError(f"set {absolute} or {info.field_name}, not both")
        return value

    @property
    def options(self) -> dict[str, Any]:
        """Optimizer keywords the rule sets besides lr and weight_decay."""
        return dict(self.model_extra or {})


Regex = Annotated[str, AfterValidator(_check_regex)]


class ParamGroupsConfig(Section):
    freeze: list[Regex] = []
    no_decay: list[Literal["bias", "norm", "1d"]] = []
    rules: list[RuleConfig] = []

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[RuleConfig]) -> list[RuleConfig]:
        names = [r.name for r in rules]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(twice)}")
        return rules


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class EarlyStoppingConfig(Section):
    monitor: str = "val/loss"
    patience: PositiveInt = 3
    mode: Literal["min", "max"] | None = None  # default: max for val/acc, else min
    min_delta: float = Field(default=0.0, ge=0)

    _monitor = field_validator("monitor")(classmethod(lambda cls, v: _check_monitor(v)))

    @model_validator(mode="after")
    def _mode(self) -> EarlyStoppingConfig:
        self.mode = self.mode or default_mode(self.monitor)
        return self


class TrainerConfig(Section):
    epochs: PositiveInt = 10
    max_steps: PositiveInt | None = None
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    accumulate: PositiveInt = 1
    clip_grad_norm: PositiveFloat | None = None
    clip_grad_value: PositiveFloat | None = None
    compile: bool = False
    channels_last: bool = False
    early_stopping: EarlyStoppingConfig | None = None
    skip_nonfinite: bool = False
    log_every: PositiveInt = 50
    out_dir: str | None = None
    dist_timeout: PositiveInt = 600

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not DEVICE_PATTERN.fullmatch(device):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return device


class CheckpointConfig(Section):
    every_epochs: PositiveInt | None = 1
    every_steps: PositiveInt | None = None
    keep_last: NonNegativeInt | None = 3
    monitor: str = "val/loss"
    mode: Literal["min", "max"] | None = None  # default: max for val/acc, else min

    _monitor = field_validator("monitor")(classmethod(lambda cls, v: _check_monitor(v)))

    @model_validator(mode="after")
    def _mode(self) -> CheckpointConfig:
        self.mode = self.mode or default_mode(self.monitor)
        return self


class Config(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = Field(default=0, ge=0, lt=2**63)
    model: ModelConfig
    data: DataConfig
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    param_groups: ParamGroupsConfig = ParamGroupsConfig()
    scheduler: SchedulerConfig | None = None
    trainer: TrainerConfig = TrainerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()


# ---------------------------------------------------------------- YAML


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, *, source: str) -> Any:
    """Parse YAML with safe loading only; errors name the line and column."""
    try:
        return yaml.load(text, Loader=_SafeLoader)
    except yaml.constructor.ConstructorError as err:
        where = _mark(err.problem_mark)
        raise UserError(
            f"{source}{where}: {err.problem}; configs are read with yaml.safe_load, "
            "so python tags are not allowed"
        ) from None
    except yaml.YAMLError as err:
        where = _mark(getattr(err, "problem_mark", None))
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"{source}{where}: not valid YAML: {problem}") from None


def _mark(mark: Any) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a config file, with `name` defaulting to the file's stem."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise UserError(f"config {path}: {what}")
    raw = parse_yaml(path.read_text(encoding="utf-8"), source=str(path))
    if raw is None:
        raise UserError(f"config {path}: the file is empty; expected a mapping with model and data")
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise UserError(f"config {path}: expected a mapping of sections at the top, got a {kind}")
    raw.setdefault("name", path.stem)
    return raw


# ---------------------------------------------------------------- overrides


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted `KEY=VALUE` overrides (values parsed as YAML) into the raw config."""
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            problems.append(f"override {item!r}: expected KEY=VALUE with a dotted key")
            continue
        try:
            value = parse_yaml(text, source=f"override {item!r}")
            _set_path(raw, parts, value)
        except UserError as err:
            problems.extend(err.problems)
        except (KeyError, IndexError, TypeError) as err:
            problems.append(f"override {item!r}: {err.args[0]}")
    if problems:
        raise UserError(problems)
    return raw


def _set_path(node: Any, parts: list[str], value: Any) -> None:
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise IndexError(f"{here}: no item {part} in a list of {len(node)}")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and node.get(part) is None:
                node[part] = {}
        else:
            raise TypeError(f"{'.'.join(parts[:depth])} is a value, not a section")
        if last:
            node[index] = value
        else:
            node = node[index]


# ---------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, override and validate a config; every problem is reported at once."""
    raw = apply_overrides(read_config_file(path), list(overrides))
    return validate_config(raw)


def validate_config(raw: dict[str, Any]) -> Config:
    """The schema's verdict on a raw mapping, as a Config or a UserError listing all problems."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError([_describe(e) for e in err.errors()]) from None


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML, sections in schema order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, width=100)


def _describe(error: Any) -> str:
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
    return f"{path}: {message} (got {error['input']!r})"


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys the schema allows at a location, for 'unknown key' messages."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if _is_model(model) else None
        if field is None:
            return []
        model = _model_in(field.annotation)
    return list(model.model_fields) if _is_model(model) else []


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _model_in(annotation: Any) -> Any:
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
