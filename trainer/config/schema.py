"""The schema: `Config`, the whole of a config (its sections in `trainer.config.sections`), the
one- and several-optimizer forms, and the views the builders and the component check read.

Nothing here imports torch: `trainer config` validates the structure of a config without it.
Names of components and their keyword arguments are checked by `trainer.components.checks`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator, model_validator

from trainer.config.metric_names import EPOCH_METRICS, class_name, default_mode
from trainer.config.sections import (
    CheckpointConfig,
    Component,
    DataConfig,
    FsdpConfig,
    LoggingConfig,
    LossConfig,
    MetricConfig,
    ModelConfig,
    OptimizerConfig,
    OptimizerEntry,
    ParamGroupsConfig,
    SchedulerConfig,
    Section,
    StepConfig,
    TrainerConfig,
    whole,
)

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


COMPONENT_SECTIONS = ("model", "data", "loss", "optimizer", "scheduler")


@dataclass(frozen=True)
class ComponentSections:
    """What the component check reads: the sections that name a component, by kind (one of
    COMPONENT_SECTIONS) and config key (`optimizers.gen.scheduler`), and the optimizer options
    of param-group rules by config key. A Config's, or those of a config the schema refused
    that pass it on their own (`ConfigError.components`)."""

    by_kind: dict[str, dict[str, Component]]
    rule_options: dict[str, dict[str, Any]]


def _metric_modes(raw: dict[str, Any]) -> dict[str, Any]:
    """Monitors of a configured metric without a mode get the direction its class name says
    (`val/top5` and `val/ema/top5` of MulticlassAccuracy: max), not the key's."""
    metrics = raw.get("metrics")
    if not isinstance(metrics, list):
        return raw
    names = {  # the raw weights' and the EMA weights' (val/ema/<key>) names
        f"val/{ema}{m.get('key') or class_name(m['name'])}": class_name(m["name"])
        for m in metrics
        if isinstance(m, dict) and isinstance(m.get("name"), str)
        for ema in ("", "ema/")
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
    if section.get("mode") is not None or not isinstance(monitor, str) or monitor not in names:
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


class Config(Section):
    """A trainer config: the model, the data, and how to train it."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The run's name (default: the file's name); its directory runs/<name>.",
    )
    seed: int = Field(default=0, ge=0, lt=2**63, description="Seeds python, numpy, torch.")
    model: ModelConfig
    data: DataConfig
    loss: LossConfig = LossConfig()
    step: StepConfig = StepConfig()
    val_step: StepConfig | None = Field(
        default=None, description="Default: val/loss, val/acc and metrics; or a step of its own."
    )
    optimizer: OptimizerConfig = OptimizerConfig()
    param_groups: ParamGroupsConfig = ParamGroupsConfig()
    scheduler: SchedulerConfig | None = Field(default=None, description="null: a constant lr.")
    optimizers: dict[str, OptimizerEntry] | None = Field(
        default=None,
        description="Several optimizers by name, instead of optimizer, scheduler and "
        "param_groups.rules/no_decay.",
        json_schema_extra={
            "minProperties": 1,
            "propertyNames": {"pattern": whole(OPTIMIZER_NAME)},
        },
    )
    trainer: TrainerConfig = TrainerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: Annotated[list[MetricConfig], AfterValidator(_unique_metric_names)] = Field(
        default_factory=list, description="Validation metrics, logged as val/<key>."
    )
    logging: LoggingConfig = LoggingConfig()
    fsdp: FsdpConfig | None = None

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
            moved = [
                k
                for k in ("no_decay", "rules", "layer_decay")
                if isinstance(shared, dict) and shared.get(k)
            ]
            if moved:
                raise ValueError(
                    f"param_groups.{moved[0]}: with optimizers, set it per optimizer "
                    f"(optimizers.<name>.param_groups.{moved[0]}); only freeze is global"
                )
        return raw

    @model_validator(mode="after")
    def _fsdp_settings_need_fsdp(self) -> Config:
        if self.fsdp is not None and self.trainer.strategy != "fsdp":
            raise ValueError(
                "fsdp: these settings shard the model under trainer.strategy: fsdp; this "
                f"config's strategy is {self.trainer.strategy!r} (set trainer.strategy: fsdp, "
                "or leave fsdp out)"
            )
        return self

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
            for entry in data["optimizers"].values():  # global: the top-level param_groups'
                del entry["param_groups"]["freeze"], entry["param_groups"]["freeze_norm_stats"]
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

    def component_sections(self) -> ComponentSections:
        """The sections that name components, every optimizer's own (see ComponentSections)."""
        specs = self.optimizer_specs()
        own: dict[str, dict[str, Component]] = {"optimizer": {}, "scheduler": {}}
        for spec in specs:
            own["optimizer"][f"{spec.key}optimizer"] = spec.optimizer
            if spec.scheduler is not None:
                own["scheduler"][f"{spec.key}scheduler"] = spec.scheduler
        return ComponentSections(
            by_kind={
                "model": {"model": self.model},
                "data": {"data": self.data},
                "loss": {"loss": self.loss},
                **own,
            },
            rule_options={
                f"{spec.key}param_groups.rules.{index}": rule.options
                for spec in specs
                for index, rule in enumerate(spec.param_groups.rules)
            },
        )
