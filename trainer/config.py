"""The config: YAML loading (safe only), dotted overrides, the pydantic schema, readable errors.

Nothing here imports torch: `trainer config` validates the structure of a config without it.
Names of components and their keyword arguments are checked by `trainer.components.registry`.
"""

from __future__ import annotations

import codecs
import math
import re
import sys
import types
import typing
from dataclasses import dataclass
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

from trainer.components import trust
from trainer.errors import UserError, did_you_mean, echo

if sys.version_info >= (3, 11):
    from re import _compiler as sre_compile
    from re import _constants as sre_constants
    from re import _parser as sre_parse

    _POSSESSIVE, _ATOMIC = (sre_constants.POSSESSIVE_REPEAT,), sre_constants.ATOMIC_GROUP
else:  # Python 3.10: the same parser under its old names, without possessive repeats
    import sre_compile
    import sre_constants
    import sre_parse

    _POSSESSIVE, _ATOMIC = (), None

# ---------------------------------------------------------------- schema


class Section(BaseModel):
    """A config section with a fixed set of keys (strict types: `true` is not the integer 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Component(BaseModel):
    """`{name: ..., <keyword arguments>}`: every key but the reserved ones goes to the callable."""

    model_config = ConfigDict(extra="allow", strict=True)

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
MONITOR_PATTERN = re.compile(r"(train|val)/[A-Za-z0-9_.-]+")


def default_mode(monitor: str) -> Literal["min", "max"]:
    """Higher is better for accuracy and what counts modes or scores, lower for the rest."""
    higher = ("acc", "accuracy", "f1", "score", "covered", "auroc", "precision", "recall")
    return "max" if monitor.rpartition("/")[2].lower().endswith(higher) else "min"


def _check_monitor(monitor: str) -> str:
    # Any epoch metric can be monitored (a custom step's `val/<key>` too); whether this run
    # logs it is known after its first epoch, where an unlogged monitor is exit 2.
    if not MONITOR_PATTERN.fullmatch(monitor):
        raise ValueError(
            f"{monitor!r} is not an epoch metric name: expected train/<name> or val/<name>, "
            f"e.g. {', '.join(EPOCH_METRICS)}"
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
    parsed = sre_parse.parse(pattern)
    if _repeats_a_varying_part(parsed):
        raise ValueError(
            "the regex repeats a part that itself varies in length (like '(a+)+', '(a?b)*' "
            "or '(a|ab)+'), which can take exponential time on a long name; give the repeated "
            r"part one length, e.g. '[a-z0-9_.]+' for '([a-z0-9_]+\.?)+'"
        )
    degree = _degree(parsed, parsed.state)
    if degree > MAX_REGEX_DEGREE:
        raise ValueError(
            f"the regex has {degree} repeats in a row that can match the same characters "
            "(like '.*.*.*.*'), so matching it can take a name's length to the power "
            f"{degree} steps; at most {MAX_REGEX_DEGREE}: write one '.*' where several follow "
            "each other, or part them by a character they cannot match (like '\\.')"
        )
    return pattern


# Repeats in a row that can share characters: a name of length n can take ~n**degree steps
# to match (200 characters: 0.07 s at 3, 2.6 s at 4, minutes at 5).
MAX_REGEX_DEGREE = 3
_ALPHABET = [chr(code) for code in range(128)]  # what parameter names are made of


def _degree(items: Any, state: Any) -> int:
    """The most repeats of varying length in a row that can match the same characters
    (`.*a.*b` 2, `[0-9]+,[0-9]+` 1: a character only one side matches ends a run)."""
    best = run = 0
    run_chars: set[str] = set()
    for op, arg in _inlined(items):
        if op in (sre_constants.BRANCH, sre_constants.GROUPREF_EXISTS):
            run += max((_degree(part, state) for part in _parts(op, arg)), default=0)
            run_chars = set(_ALPHABET)
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            best = max(best, _degree(arg[1], state))
        elif op == sre_constants.AT:
            continue
        else:
            low, high, body = arg if op in _REPEATS else (1, 1, [(op, arg)])
            chars = _chars(body, state)
            if low >= 1 and not chars & run_chars:  # a required character ends the run
                run, run_chars = 0, set()
            if low != high:
                run, run_chars = run + 1, run_chars | chars
        best = max(best, run)
    return best


def _inlined(items: Any) -> list[Any]:
    """Parsed regex items with groups replaced by their contents (they match alike)."""
    found = []
    for op, arg in items:
        if op in (sre_constants.SUBPATTERN, _ATOMIC):
            found += _inlined(_parts(op, arg)[0])
        else:
            found.append((op, arg))
    return found


def _chars(body: Any, state: Any) -> set[str]:
    """The characters a parsed part can match (all of them for a part of several kinds)."""
    singles = (
        sre_constants.LITERAL,
        sre_constants.NOT_LITERAL,
        sre_constants.ANY,
        sre_constants.IN,
    )
    found: set[str] = set()
    for item in _inlined(body):
        if item[0] not in singles:
            return set(_ALPHABET)
        for flags in (0, re.IGNORECASE):  # both: a group's own (?i) is not in `state`
            matcher = sre_compile.compile(sre_parse.SubPattern(state, [item]), flags)
            found.update(char for char in _ALPHABET if matcher.fullmatch(char))
    return found


_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, *_POSSESSIVE)


def _repeats_a_varying_part(items: Any) -> bool:
    """Whether a parsed regex repeats (*, +, {m,n}) a part that can match in several lengths:
    nested repetition (star height > 1) and repeated alternatives, the backtracking blow-ups."""
    for op, arg in items:
        if op in _REPEATS and arg[1] > 1 and _varies(arg[2]):
            return True
        if any(_repeats_a_varying_part(part) for part in _parts(op, arg)):
            return True
    return False


def _varies(items: Any) -> bool:
    """Whether a parsed regex holds a repeat of several lengths or an alternative."""
    for op, arg in items:
        if op in _REPEATS and arg[0] != arg[1]:
            return True
        if op in (sre_constants.BRANCH, sre_constants.GROUPREF_EXISTS):
            return True
        if any(_varies(part) for part in _parts(op, arg)):
            return True
    return False


def _parts(op: Any, arg: Any) -> list[Any]:
    """The sub-patterns inside one parsed regex item."""
    if op in _REPEATS:
        return [arg[2]]
    if op == sre_constants.SUBPATTERN:
        return [arg[-1]]
    if op == sre_constants.BRANCH:
        return list(arg[1])
    if op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
        return [arg[1]]
    if op == sre_constants.GROUPREF_EXISTS:
        return [part for part in arg[1:] if part is not None]
    if op == _ATOMIC:
        return [arg]
    return []


class RuleConfig(BaseModel):
    """One param-group rule; keys beyond these are options of the optimizer."""

    model_config = ConfigDict(extra="allow", strict=True)

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
    # Norm layers whose parameters are all frozen stay in eval mode while training (their
    # running statistics unchanged); false lets them update.
    freeze_norm_stats: bool = True
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
    max_consecutive_skips: PositiveInt = 100  # skip_nonfinite: more in a row is divergence
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


class StepConfig(Component):
    """The training step (or `val_step`): `supervised`, `gan`, or a `pkg.module:callable`."""

    name: str = "supervised"


class OptimizerEntry(Section):
    """One of several optimizers (`optimizers.<name>`), over the tensors `params` selects."""

    params: Regex
    optimizer: OptimizerConfig
    param_groups: ParamGroupsConfig = ParamGroupsConfig()
    scheduler: SchedulerConfig | None = None
    clip_grad_norm: PositiveFloat | None = None  # overrides trainer.clip_grad_norm
    clip_grad_value: PositiveFloat | None = None  # overrides trainer.clip_grad_value

    @field_validator("param_groups")
    @classmethod
    def _freeze_is_global(cls, value: ParamGroupsConfig) -> ParamGroupsConfig:
        if value.freeze:
            raise ValueError("freeze is global: set it in the top-level param_groups.freeze")
        if "freeze_norm_stats" in value.model_fields_set:
            raise ValueError(
                "freeze_norm_stats is global: set it in the top-level param_groups"
            )
        return value


OPTIMIZER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer as the builders see it, in either config form; `key` prefixes messages."""

    name: str
    params: str | None  # None: every trainable tensor (the one-optimizer form)
    optimizer: OptimizerConfig
    param_groups: ParamGroupsConfig
    scheduler: SchedulerConfig | None
    clip_grad_norm: float | None
    clip_grad_value: float | None
    key: str  # "" for the one-optimizer form, else "optimizers.<name>."


class MetricConfig(Component):
    """A validation metric: a torchmetrics class (or import path), logged as `val/<key>`."""

    key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

    @property
    def logged_as(self) -> str:
        """`val/<key>`, the key defaulting to the class name."""
        return f"val/{self.key or class_name(self.name)}"


def class_name(name: str) -> str:
    """`MulticlassAccuracy` of `MulticlassAccuracy` or `pkg.module:MulticlassAccuracy`."""
    return name.rpartition(":")[2].rpartition(".")[2]


def _metric_modes(raw: dict[str, Any]) -> dict[str, Any]:
    """Monitors of a configured metric without a mode get the direction its class name says
    (`val/top5` of MulticlassAccuracy: max), not the key's."""
    metrics = raw.get("metrics")
    if not isinstance(metrics, list):
        return raw
    names = {
        f"val/{m.get('key') or class_name(m['name'])}": class_name(m["name"])
        for m in metrics
        if isinstance(m, dict) and isinstance(m.get("name"), str)
    }
    raw = dict(raw)
    trainer = raw.get("trainer")
    if isinstance(trainer, dict) and isinstance(trainer.get("early_stopping"), dict):
        raw["trainer"] = dict(trainer, early_stopping=_with_mode(trainer["early_stopping"], names))
    if isinstance(raw.get("checkpoint"), dict):
        raw["checkpoint"] = _with_mode(raw["checkpoint"], names)
    return raw


def _with_mode(section: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    monitor = section.get("monitor")
    if section.get("mode") is not None or monitor not in names:
        return section
    return dict(section, mode=default_mode(names[monitor]))


def _unique_metric_names(metrics: list[MetricConfig]) -> list[MetricConfig]:
    names = [m.logged_as for m in metrics]
    taken = [n for n in names if n in EPOCH_METRICS or names.count(n) > 1]
    if taken:
        raise ValueError(
            f"{', '.join(sorted(set(taken)))} logged twice (val/loss and val/acc are the "
            "runner's own); give each metric its own key"
        )
    return metrics


class LoggingConfig(Section):
    """Viewers written beside metrics.jsonl (which stays the source of truth)."""

    tensorboard: bool = False


class Config(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = Field(default=0, ge=0, lt=2**63)
    model: ModelConfig
    data: DataConfig
    loss: LossConfig = LossConfig()
    step: StepConfig = StepConfig()
    val_step: StepConfig | None = None
    optimizer: OptimizerConfig = OptimizerConfig()
    param_groups: ParamGroupsConfig = ParamGroupsConfig()
    scheduler: SchedulerConfig | None = None
    optimizers: dict[str, OptimizerEntry] | None = None
    trainer: TrainerConfig = TrainerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: Annotated[list[MetricConfig], AfterValidator(_unique_metric_names)] = []
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="before")
    @classmethod
    def _modes_of_metrics(cls, raw: Any) -> Any:
        return _metric_modes(raw) if isinstance(raw, dict) else raw

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("optimizers") is not None:
            both = [key for key in ("optimizer", "scheduler") if key in raw]
            if both:
                raise ValueError(
                    f"optimizers: given together with {' and '.join(both)}; use one form: "
                    "optimizer/param_groups/scheduler for one optimizer, or optimizers.<name> "
                    "with its own optimizer, param_groups and scheduler"
                )
            shared = raw.get("param_groups") or {}
            moved = [k for k in ("no_decay", "rules") if isinstance(shared, dict) and shared.get(k)]
            if moved:
                raise ValueError(
                    f"param_groups.{moved[0]}: with optimizers, set it per optimizer "
                    f"(optimizers.<name>.param_groups.{moved[0]}); only freeze is global"
                )
        return raw

    @field_validator("optimizers")
    @classmethod
    def _names(cls, value: dict[str, OptimizerEntry] | None) -> Any:
        if value is not None and not value:
            raise ValueError("name at least one optimizer, or leave optimizers out")
        bad = [name for name in value or {} if not OPTIMIZER_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"optimizer names are identifiers (letters, digits, _): {bad[0]!r}")
        return value

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, in the form it was given (loads back as is)."""
        data = self.model_dump(mode="json")
        if self.optimizers:
            del data["optimizer"], data["scheduler"]
        return data

    @property
    def several_optimizers(self) -> bool:
        return self.optimizers is not None

    def optimizer_specs(self) -> list[OptimizerSpec]:
        """Every optimizer, one form or the other, in config order."""
        settings = self.trainer
        if self.optimizers is None:
            return [
                OptimizerSpec(
                    name="optimizer",
                    params=None,
                    optimizer=self.optimizer,
                    param_groups=self.param_groups,
                    scheduler=self.scheduler,
                    clip_grad_norm=settings.clip_grad_norm,
                    clip_grad_value=settings.clip_grad_value,
                    key="",
                )
            ]
        return [
            OptimizerSpec(
                name=name,
                params=entry.params,
                optimizer=entry.optimizer,
                param_groups=entry.param_groups,
                scheduler=entry.scheduler,
                clip_grad_norm=entry.clip_grad_norm or settings.clip_grad_norm,
                clip_grad_value=entry.clip_grad_value or settings.clip_grad_value,
                key=f"optimizers.{name}.",
            )
            for name, entry in self.optimizers.items()
        ]


def monitors(config: Config) -> dict[str, tuple[str, str]]:
    """Every monitored metric by config key: (metric, mode), e.g. checkpoint.monitor."""
    found = {"checkpoint.monitor": (config.checkpoint.monitor, config.checkpoint.mode)}
    for spec in config.optimizer_specs():
        if spec.scheduler and spec.scheduler.name == "ReduceLROnPlateau":
            mode = spec.scheduler.kwargs.get("mode", "min")  # torch's own default
            found[f"{spec.key}scheduler.monitor"] = (spec.scheduler.monitor or "val/loss", mode)
    stopping = config.trainer.early_stopping
    if stopping:
        found["trainer.early_stopping.monitor"] = (stopping.monitor, stopping.mode)
    return found


def monitor_problems(config: Config) -> list[str]:
    """Monitors of `val/<key>` that nothing logs: not the runner, not a configured metric.

    A custom `val_step` logs metrics of its own, known after the first epoch only; a step
    other than `supervised` without one logs no `val/` metric (checked where steps are).
    """
    if config.val_step is not None or config.step.name != "supervised":
        return []
    logged = [*EPOCH_METRICS, *(m.logged_as for m in config.metrics)]
    return [
        f"{key}: {monitor!r} is not a logged metric{did_you_mean(monitor, logged)} "
        f"(validation metrics: {', '.join(logged[1:])})"
        for key, (monitor, _) in monitors(config).items()
        if monitor.startswith("val/") and monitor not in logged
    ]


# ---------------------------------------------------------------- YAML


# Far beyond any config; what a file needs to exhaust the stack or the memory is far beyond too.
MAX_DEPTH = 100
MAX_VALUES = 100_000


class _Refused(yaml.YAMLError):
    """A document that parses but that a config may not be: each problem with its place."""

    def __init__(self, problems: list[tuple[yaml.Mark, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`), caps nesting and
    alias expansion, and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise _Refused([(mark, f"nested more than {MAX_DEPTH} levels deep")])
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        duplicates = _duplicate_keys(node)
        if duplicates:
            raise _Refused(duplicates)
        return super().construct_document(node)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it beyond MAX_VALUES values or MAX_DEPTH levels,
    or loop."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            open_nodes.discard(id(node))
            children = _children(node)
            size[id(node)] = 1 + sum(size[id(child)] for child in children)
            depth[id(node)] = 1 + max((depth[id(child)] for child in children), default=0)
            if size[id(node)] > MAX_VALUES:
                message = (
                    f"too many values: the value here holds more than {MAX_VALUES:,} (aliases "
                    "counted as often as they are used), far more than any config"
                )
                raise _Refused([(node.start_mark, message)])
            if depth[id(node)] > MAX_DEPTH:
                message = f"aliases nest the value here more than {MAX_DEPTH} levels deep"
                raise _Refused([(node.start_mark, message)])
        elif id(node) in open_nodes:
            raise _Refused([(node.start_mark, "an alias refers to a value that contains it")])
        elif id(node) not in size:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def _duplicate_keys(root: yaml.Node) -> list[tuple[yaml.Mark, str]]:
    """Every key given twice in one mapping, by its dotted path and both lines."""
    found, seen = [], set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}{index}.") for index, item in enumerate(node.value))
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[tuple[str, str], yaml.Mark] = {}
        for key, value in node.value:
            name = f"{path}{key.value}" if isinstance(key, yaml.ScalarNode) else path
            stack.append((value, f"{name}."))
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            if (key.tag, key.value) in first:
                line = first[key.tag, key.value].line + 1
                found.append(
                    (
                        key.start_mark,
                        f"duplicate key {echo(name)} (first at line {line}): keys are unique "
                        "in YAML, and the second would silently replace the first",
                    )
                )
            first.setdefault((key.tag, key.value), key.start_mark)
    return sorted(found, key=lambda problem: problem[0].index)


class _SafeDumper(yaml.SafeDumper):
    """yaml.SafeDumper that quotes the strings _SafeLoader reads as floats (`'1e5'`)."""


for _yaml_class in (_SafeLoader, _SafeDumper):
    _yaml_class.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
        list("-+0123456789."),
    )


def parse_yaml(text: str, *, source: str) -> Any:
    """Parse YAML with safe loading only; errors name the line and column."""
    try:
        return yaml.load(text, Loader=_SafeLoader)
    except _Refused as err:
        problems = [f"{source}{_mark(mark)}: {problem}" for mark, problem in err.problems]
        raise UserError(problems) from None
    except yaml.constructor.ConstructorError as err:
        where = _mark(err.problem_mark)
        if "unhashable" in str(err.problem):
            raise UserError(
                f"{source}{where}: a mapping key is a list or a mapping; keys are plain "
                "values (a name, a number)"
            ) from None
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
        if path.is_dir():
            what = "is a directory"
        elif path.exists():  # a FIFO, a socket, a device: reading it could block or never end
            what = "not a regular file"
        else:
            what = "no such file"
        raise UserError(f"config {path}: {what}")
    raw = parse_yaml(yaml_file_text(path), source=str(path))
    if raw is None:
        raise UserError(f"config {path}: the file is empty; expected a mapping with model and data")
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise UserError(f"config {path}: expected a mapping of sections at the top, got a {kind}")
    raw.setdefault("name", path.stem)
    trust.use_config_directory(path.parent)
    return raw


_BYTE_ORDER_MARKS = (  # UTF-32's marks first: UTF-16's are their prefixes
    ("UTF-32", codecs.BOM_UTF32_LE),
    ("UTF-32", codecs.BOM_UTF32_BE),
    ("UTF-16", codecs.BOM_UTF16_LE),
    ("UTF-16", codecs.BOM_UTF16_BE),
)


def yaml_file_text(path: Path, *, label: str = "config") -> str:
    """A YAML file's text: UTF-8 (a byte-order mark allowed), anything else refused as
    `<label> <path>: ...`."""
    data = path.read_bytes()
    marked = next((name for name, mark in _BYTE_ORDER_MARKS if data.startswith(mark)), None)
    if marked:
        raise UserError(f"{label} {path}: {marked} text (a byte-order mark); save it as UTF-8")
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise UserError(
            f"{label} {path}: a NUL byte on line {line}: a binary file or UTF-16 text, "
            "not a YAML file in UTF-8"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(
            f"{label} {path}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None


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
    """Read, override and validate a config; every problem is reported at once.

    When the schema fails, the names of the components whose own sections are valid are
    checked too (that check does not depend on the rest), so one run lists both.
    """
    raw = apply_overrides(read_config_file(path), list(overrides))
    try:
        return validate_config(raw)
    except UserError as err:
        raise UserError(err.problems + _component_problems(raw)) from None


def _component_problems(raw: dict[str, Any]) -> list[str]:
    """Names and keyword arguments of the components in valid sections of a raw mapping."""
    from trainer.components import checks

    valid = _valid_sections(raw, Config.model_fields, checks.SECTION_KINDS)
    several = raw.get("optimizers")
    if isinstance(several, dict):  # each optimizer's own optimizer and scheduler
        own = ("optimizer", "scheduler")
        valid["optimizers"] = {
            name: types.SimpleNamespace(
                **{**dict.fromkeys(own), **_valid_sections(entry, OptimizerEntry.model_fields, own)}
            )
            for name, entry in several.items()
            if isinstance(entry, dict)
        }
        valid.update(optimizer=None, scheduler=None)  # the kinds are checked per optimizer
    sections = [key for key in checks.SECTION_KINDS if key in valid]
    return checks.check_components(types.SimpleNamespace(**valid), sections=sections)


def _valid_sections(raw: dict[str, Any], fields: dict[str, Any], keys: Any) -> dict[str, Any]:
    """The sections among `keys` of a raw mapping that pass the schema on their own."""
    valid = {}
    for key in keys:
        field = fields.get(key)
        model = _model_in(field.annotation) if field else None
        if model is not None and isinstance(raw.get(key), dict):
            try:
                valid[key] = model.model_validate(raw[key])
            except ValidationError:
                continue
    return valid


def validate_config(raw: dict[str, Any]) -> Config:
    """The schema's verdict on a raw mapping, as a Config or a UserError listing all problems."""
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
        raise UserError(problems + described) from None
    if problems:
        raise UserError(problems)
    problems = monitor_problems(config) + clipping_problems(config)
    if problems:
        raise UserError(problems)
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


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML, sections in schema order; it loads back as it is."""
    return yaml.dump(config.to_dict(), Dumper=_SafeDumper, sort_keys=False, width=100)


def _non_finite(node: Any, loc: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], float]]:
    """(location, value) of every NaN or infinity in a raw config."""
    if isinstance(node, float) and not math.isfinite(node):
        return [(loc, node)]
    if isinstance(node, dict):
        return [found for key, value in node.items() for found in _non_finite(value, (*loc, key))]
    if isinstance(node, list):
        return [found for i, value in enumerate(node) for found in _non_finite(value, (*loc, i))]
    return []


def _describe(error: Any, raw: dict[str, Any]) -> str:
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
