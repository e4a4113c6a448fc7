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

from trainer.config.metric_names import MONITOR_PATTERN, check_monitor, class_name, default_mode
from trainer.config.regexes import Regex


def whole(pattern: re.Pattern[str]) -> str:
    """A pattern that must match the whole value, for the JSON Schema (which searches)."""
    return f"^(?:{pattern.pattern})$"


class Section(BaseModel):
    """A config section with a fixed set of keys (strict types: `true` is not the integer 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)


NAME = "A name that `trainer list` shows, or an import path: `pkg.module:callable`."


class Component(BaseModel):
    """`{name: ..., <keyword arguments>}`: every key but the reserved ones goes to the callable."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(description=NAME)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments for the callable (the keys that are not reserved)."""
        return dict(self.model_extra or {})


class InitFrom(Section):
    """A local state dict to start from; `prefix` renames key prefixes (old: new)."""

    path: str = Field(description="The state dict file (torch.save of a state_dict).")
    strict: bool = Field(
        default=True, description="Every key must match; false skips what does not."
    )
    prefix: dict[str, str] = Field(
        default={}, description='Key prefixes renamed, old: new ("module.": "").'
    )


class ModelConfig(Component):
    """`model`: a built-in or torchvision model name, `timm/<name>` (the timm extra), or
    `pkg.module:callable`; every key but the runner's own is a keyword argument of the
    callable."""

    init_from: InitFrom | None = Field(
        default=None,
        description="Start from a local state dict: its path, or {path, strict, prefix}.",
    )

    @field_validator("init_from", mode="before", json_schema_input_type=str | InitFrom | None)
    @classmethod
    def _path_alone(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class DataConfig(Component):
    """`data`: a built-in dataset or `pkg.module:callable`; every key but the runner's own is a
    keyword argument of the callable."""

    batch_size: PositiveInt = Field(
        default=64, description="Batch size (per process under torchrun)."
    )
    val_batch_size: PositiveInt | None = Field(default=None, description="Default: batch_size.")
    num_workers: NonNegativeInt = Field(default=0, description="DataLoader worker processes.")
    shuffle: bool = Field(
        default=True, description="Shuffle the training data each epoch (seeded)."
    )
    drop_last: bool = Field(default=False, description="Drop the last incomplete training batch.")
    val_fraction: float | None = Field(
        default=None, gt=0, lt=1, description="Carve the validation set out of the training set."
    )
    persistent_workers: bool = Field(default=False, description="Keep the workers between epochs.")
    pin_memory: bool | None = Field(default=None, description="Default: on for CUDA.")
    train_transforms: list[dict[str, Any]] | None = Field(
        default=None, description="torchvision.transforms.v2 by name; default per dataset."
    )
    val_transforms: list[dict[str, Any]] | None = Field(
        default=None, description="torchvision.transforms.v2 by name; default per dataset."
    )


class LossConfig(Component):
    """`loss`: any torch.nn loss, or `pkg.module:callable`, with its keyword arguments."""

    name: str = Field(default="CrossEntropyLoss", description=NAME)


class OptimizerConfig(Component):
    """`optimizer`: any torch.optim optimizer, or `pkg.module:callable`, with its keyword
    arguments (lr, momentum, weight_decay, ...)."""

    name: str = Field(default="SGD", description=NAME)


class WarmupConfig(Section):
    """A LinearLR warmup from `start_factor` x lr, composed with the scheduler by SequentialLR."""

    steps: PositiveInt | None = Field(default=None, description="Warmup length in optimizer steps.")
    epochs: PositiveInt | None = Field(default=None, description="Warmup length in epochs.")
    start_factor: float = Field(default=0.1, gt=0, le=1, description="The first lr, x lr.")

    @model_validator(mode="after")
    def _one_length(self) -> WarmupConfig:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set one of warmup.steps or warmup.epochs")
        return self


class SchedulerConfig(Component):
    """`scheduler`: any torch.optim.lr_scheduler class, or `pkg.module:callable`, with its
    keyword arguments."""

    interval: Literal["epoch", "step"] = Field(
        default="epoch", description="Step the scheduler after each epoch, or each optimizer step."
    )
    monitor: str | None = Field(
        default=None,
        description="ReduceLROnPlateau only: the metric it watches (default val/loss).",
        json_schema_extra={"pattern": whole(MONITOR_PATTERN)},
    )
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

    name: str = Field(description="The group's name ('default' and '*.no_decay' are taken).")
    match: Regex = Field(description="Regex searched in parameter names; first rule wins.")
    lr: PositiveFloat | None = Field(default=None, description="The group's lr.")
    lr_mult: PositiveFloat | None = Field(
        default=None, description="Or: the optimizer's lr times this."
    )
    weight_decay: float | None = Field(default=None, ge=0, description="The group's decay.")
    wd_mult: float | None = Field(
        default=None, ge=0, description="Or: the optimizer's weight_decay times this."
    )

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


class LayerDecayConfig(Section):
    """`param_groups.layer_decay`: each group's lr times `rate ** (top layer - layer)`. `layers`
    captures a layer's index (`'^blocks\\.(\\d+)\\.'`): index i is layer i + 1; tensors before
    the first matched one are layer 0 (the embeddings), those after the last the top layer
    (the final norm, the head; with `head`, only the tensors it matches)."""

    rate: float = Field(gt=0, le=1, description="The lr factor from one layer to the one below.")
    layers: Regex = Field(
        description="Regex with one capture group, the layer's index: '^blocks\\.(\\d+)\\.'.",
        # a group, named or not (the loader counts exactly one)
        json_schema_extra={"pattern": r"\((?!\?)|\(\?P<"},
    )
    head: Regex | None = Field(
        default=None,
        description="Only these tensors on top; the rest after the last layer stays in it.",
    )

    @field_validator("layers")
    @classmethod
    def _one_index(cls, layers: str) -> str:
        groups = re.compile(layers).groups
        if groups != 1:
            raise ValueError(
                f"the regex has {groups} capture groups; it needs exactly one, capturing the "
                "layer's index (digits), e.g. '^blocks\\.(\\d+)\\.'"
            )
        return layers


class ParamGroupsConfig(Section):
    """`param_groups`: frozen parameters, no-decay splits, per-group rules and layer-wise lr
    decay."""

    freeze: list[Regex] = Field(
        default=[], description="Regexes on parameter names: requires_grad=False, never optimized."
    )
    freeze_norm_stats: bool = Field(
        default=True,
        description="Norm layers whose parameters are all frozen stay in eval mode while "
        "training (running statistics unchanged); false lets them update.",
    )
    no_decay: list[Literal["bias", "norm", "1d"]] = Field(
        default=[],
        description="Split each group into <group> and <group>.no_decay (weight_decay 0).",
    )
    rules: list[RuleConfig] = Field(default=[], description="Ordered rules; the first match wins.")
    layer_decay: LayerDecayConfig | None = Field(
        default=None,
        description="Layer-wise lr decay: each group split by layer, lr x rate ** (top - layer).",
    )

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[RuleConfig]) -> list[RuleConfig]:
        names = [r.name for r in rules]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(twice)}")
        return rules


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
MODE = "min | max; default: max for accuracy-like metrics (val/acc, ...), else min."


class EarlyStoppingConfig(Section):
    """`trainer.early_stopping`: stop when the monitor has not improved for `patience` epochs."""

    monitor: str = Field(
        default="val/loss",
        description="An epoch metric: train/<name>, val/<name> or val/ema/<name>.",
        json_schema_extra={"pattern": whole(MONITOR_PATTERN)},
    )
    patience: PositiveInt = Field(
        default=3, description="Epochs without improvement before stopping."
    )
    mode: Literal["min", "max"] | None = Field(default=None, description=MODE)
    min_delta: float = Field(default=0.0, ge=0, description="The least change that improves.")

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

    power: PositiveFloat = Field(default=2 / 3, description="The warmup's power.")
    gamma: PositiveFloat = Field(default=1.0, description="The warmup's gamma (updates).")


class EmaConfig(Section):
    """`trainer.ema`: an exponential moving average of the weights and buffers (torch's
    AveragedModel), updated every `every_steps` training steps."""

    decay: float = Field(default=0.9999, gt=0, lt=1, description="The EMA's decay.")
    every_steps: PositiveInt = Field(
        default=1, description="Update the average after every N training steps."
    )
    warmup: EmaWarmupConfig | None = Field(
        default=None,
        description="Decay warmup as timm's ModelEmaV3: {power: 2/3, gamma: 1.0}; null: none.",
    )


class TrainerConfig(Section):
    """`trainer`: the loop's settings."""

    epochs: PositiveInt = Field(default=10, description="Passes over the training data.")
    max_steps: PositiveInt | None = Field(default=None, description="Stop after this many steps.")
    device: str = Field(
        default="auto",
        description="auto | cpu | cuda | cuda:N | mps",
        json_schema_extra={"pattern": whole(DEVICE_PATTERN)},
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="fp16: CUDA only, with a GradScaler."
    )
    accumulate: PositiveInt = Field(default=1, description="Batches per optimizer step.")
    clip_grad_norm: PositiveFloat | None = Field(
        default=None, description="Clip the gradients' total norm (not with clip_grad_value)."
    )
    clip_grad_value: PositiveFloat | None = Field(
        default=None, description="Clip each gradient value (not with clip_grad_norm)."
    )
    compile: bool = Field(default=False, description="torch.compile the model.")
    channels_last: bool = Field(default=False, description="Model and inputs in channels_last.")
    early_stopping: EarlyStoppingConfig | None = None
    skip_nonfinite: bool = Field(
        default=False,
        description="Skip steps with a NaN/inf loss or gradients instead of stopping.",
    )
    max_consecutive_skips: PositiveInt = Field(
        default=100,
        description="skip_nonfinite: more skipped steps in a row is divergence (exit 1).",
    )
    log_every: PositiveInt = Field(default=50, description="Step records every N steps.")
    out_dir: str | None = Field(default=None, description="Default: runs/<name>.")
    dist_timeout: PositiveInt = Field(
        default=600, description="Seconds a collective waits under torchrun before failing."
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="ddp: every process holds the whole model; fsdp: parameters, gradients "
        "and optimizer state sharded over the processes (FSDP2), settings in `fsdp`.",
    )
    activation_checkpointing: list[Regex] = Field(
        default=[], description="Module-name regexes: recompute their activations in backward."
    )
    ema: EmaConfig | None = Field(
        default=None,
        description="EMA weights: {decay, every_steps, warmup}; validated as val/ema/<metric>.",
    )

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

    units: list[Regex] = Field(
        default=[],
        description="Module-name regexes: each match is a unit (sharded, gathered for its "
        "forward and backward on its own), innermost first; then the root. []: the root alone.",
    )
    reshard_after_forward: bool = Field(
        default=True, description="Free the gathered parameters after each forward."
    )
    param_dtype: Literal["fp32", "bf16", "fp16"] | None = Field(
        default=None, description="Compute dtype of parameters."
    )
    reduce_dtype: Literal["fp32", "bf16", "fp16"] | None = Field(
        default=None, description="Dtype of gradient reduction."
    )
    cpu_offload: bool = Field(
        default=False, description="Shards (and the optimizer step) in CPU memory; GPU only."
    )


class CheckpointConfig(Section):
    """`checkpoint`: when to save, how many to keep, and what makes best.pt."""

    every_epochs: PositiveInt | None = Field(default=1, description="Save every N epochs.")
    every_steps: PositiveInt | None = Field(default=None, description="Save every N steps.")
    keep_last: NonNegativeInt | None = Field(default=3, description="Periodic checkpoints kept.")
    monitor: str = Field(
        default="val/loss",
        description="The metric best.pt is chosen by: train/<name>, val/<name> or "
        "val/ema/<name> (the EMA weights').",
        json_schema_extra={"pattern": whole(MONITOR_PATTERN)},
    )
    mode: Literal["min", "max"] | None = Field(default=None, description=MODE)

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

    name: str = Field(default="supervised", description=NAME)


class OptimizerEntry(Section):
    """One of several optimizers (`optimizers.<name>`), over the tensors `params` selects."""

    params: Regex = Field(description="Regex on parameter names: this optimizer's tensors.")
    optimizer: OptimizerConfig
    param_groups: ParamGroupsConfig = ParamGroupsConfig()
    scheduler: SchedulerConfig | None = None
    clip_grad_norm: PositiveFloat | None = Field(
        default=None, description="Overrides trainer.clip_grad_norm."
    )
    clip_grad_value: PositiveFloat | None = Field(
        default=None, description="Overrides trainer.clip_grad_value."
    )

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

    key: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Logged as val/<key>; default: the class name.",
    )

    @property
    def logged_as(self) -> str:
        """`val/<key>`, the key defaulting to the class name."""
        return f"val/{self.key or class_name(self.name)}"


class LoggingConfig(Section):
    """Viewers written beside metrics.jsonl (which stays the source of truth)."""

    tensorboard: bool = Field(default=False, description="Event files in runs/<name>/tb/.")
