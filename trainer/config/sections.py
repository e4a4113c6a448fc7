"""The sections of a config, one pydantic model each: the components (`{name: ..., <keyword
arguments>}`), the param-group rules, the trainer, checkpoint, early-stopping and logging
settings. `trainer.config.schema` puts them together as `Config`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trainer.config.metric_names import check_monitor, class_name, default_mode
from trainer.config.regexes import Regex


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
        classmethod(lambda cls, v: v if v is None else check_monitor(v))
    )

    @model_validator(mode="after")
    def _fits(self) -> SchedulerConfig:
        if self.monitor is not None and self.name != "ReduceLROnPlateau":
            raise ValueError("monitor is for ReduceLROnPlateau only")
        if self.warmup and self.warmup.steps and self.interval == "epoch":
            raise ValueError("warmup.steps needs interval: step (or use warmup.epochs)")
        return self


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
        multiplier = str(info.field_name)  # a field validator's field: never None
        absolute = {"lr_mult": "lr", "wd_mult": "weight_decay"}[multiplier]
        if value is not None and info.data.get(absolute) is not None:
            raise ValueError(f"set {absolute} or {multiplier}, not both")
        return value

    @property
    def options(self) -> dict[str, Any]:
        """Optimizer keywords the rule sets besides lr and weight_decay."""
        return dict(self.model_extra or {})


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

    _monitor = field_validator("monitor")(classmethod(lambda cls, v: check_monitor(v)))

    @model_validator(mode="after")
    def _mode(self) -> EarlyStoppingConfig:
        self.mode = self.mode or default_mode(self.monitor)
        return self

    @property
    def direction(self) -> Literal["min", "max"]:
        """`mode` as validated: from the monitor's name where the config leaves it out."""
        return self.mode or default_mode(self.monitor)


class EmaWarmupConfig(Section):
    """The EMA's decay warmup, as timm's ModelEmaV3 (use_warmup): at the EMA's t-th update
    after its first (which copies), decay_t = min(decay, 1 - (1 + t/gamma)^-power)."""

    power: PositiveFloat = 2 / 3
    gamma: PositiveFloat = 1.0


class EmaConfig(Section):
    """`trainer.ema`: an exponential moving average of the weights and buffers (torch's
    AveragedModel), updated every `every_steps` training steps."""

    decay: float = Field(default=0.9999, gt=0, lt=1)
    every_steps: PositiveInt = 1
    warmup: EmaWarmupConfig | None = None


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
    # ddp: every process holds the whole model; fsdp: parameters, gradients and optimizer
    # state sharded over the processes (FSDP2), settings in the `fsdp` section.
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # Modules (regexes on module names) whose activations are recomputed in backward.
    activation_checkpointing: list[Regex] = []
    ema: EmaConfig | None = None  # averaged weights, validated as val/ema/<metric>

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not DEVICE_PATTERN.fullmatch(device):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return device

    @property
    def sharded(self) -> bool:
        """strategy: fsdp — parameters, grads and optimizer state sharded over the processes."""
        return self.strategy == "fsdp"


class FsdpConfig(Section):
    """`fsdp`: how trainer.strategy: fsdp shards the model (torch's FSDP2, `fully_shard`)."""

    # Regexes on module names: each matching module is a unit (sharded, gathered for its
    # forward and backward on its own), innermost first; then the root. None: the root alone.
    units: list[Regex] = []
    reshard_after_forward: bool = True  # free the gathered parameters after each forward
    param_dtype: Literal["fp32", "bf16", "fp16"] | None = None  # compute dtype of parameters
    reduce_dtype: Literal["fp32", "bf16", "fp16"] | None = None  # dtype of gradient reduction
    cpu_offload: bool = False  # shards (and the optimizer step) in CPU memory; GPU only


class CheckpointConfig(Section):
    every_epochs: PositiveInt | None = 1
    every_steps: PositiveInt | None = None
    keep_last: NonNegativeInt | None = 3
    monitor: str = "val/loss"
    mode: Literal["min", "max"] | None = None  # default: max for val/acc, else min

    _monitor = field_validator("monitor")(classmethod(lambda cls, v: check_monitor(v)))

    @model_validator(mode="after")
    def _mode(self) -> CheckpointConfig:
        self.mode = self.mode or default_mode(self.monitor)
        return self

    @property
    def direction(self) -> Literal["min", "max"]:
        """`mode` as validated: from the monitor's name where the config leaves it out."""
        return self.mode or default_mode(self.monitor)


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
            raise ValueError("freeze_norm_stats is global: set it in the top-level param_groups")
        return value


class MetricConfig(Component):
    """A validation metric: a torchmetrics class (or import path), logged as `val/<key>`."""

    key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

    @property
    def logged_as(self) -> str:
        """`val/<key>`, the key defaulting to the class name."""
        return f"val/{self.key or class_name(self.name)}"


class LoggingConfig(Section):
    """Viewers written beside metrics.jsonl (which stays the source of truth)."""

    tensorboard: bool = False
