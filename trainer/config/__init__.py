"""The config: YAML loading (safe only), dotted overrides, the pydantic schema, readable errors.

Nothing here imports torch, nor anything of the layers above (components, engine, ...):
`trainer config` validates the structure of a config without them. The modules:
`yaml_files` (the hardened YAML loader and dumper, file text), `overrides`, `regexes` (regex
safety), `metric_names` and `monitors` (what a config monitors), `sections` and `schema`
(the pydantic models, `Config`), `loading` (load, validate, describe problems by key), and
`trust` (which import paths a config may name).
"""

from trainer.config.loading import (
    ConfigError,
    config_to_yaml,
    load_config,
    read_config_file,
    validate_config,
)
from trainer.config.metric_names import EPOCH_METRICS, class_name, default_mode
from trainer.config.monitors import monitor_problems, monitors
from trainer.config.overrides import apply_overrides
from trainer.config.regexes import MAX_REGEX_DEGREE, Regex
from trainer.config.schema import COMPONENT_SECTIONS, ComponentSections, Config, OptimizerSpec
from trainer.config.sections import (
    CheckpointConfig,
    Component,
    DataConfig,
    EarlyStoppingConfig,
    InitFrom,
    LoggingConfig,
    LossConfig,
    MetricConfig,
    ModelConfig,
    OptimizerConfig,
    OptimizerEntry,
    ParamGroupsConfig,
    RuleConfig,
    SchedulerConfig,
    Section,
    StepConfig,
    TrainerConfig,
    WarmupConfig,
)
from trainer.config.yaml_files import MAX_DEPTH, MAX_VALUES, parse_yaml, yaml_file_text

__all__ = [
    "COMPONENT_SECTIONS",
    "EPOCH_METRICS",
    "MAX_DEPTH",
    "MAX_REGEX_DEGREE",
    "MAX_VALUES",
    "CheckpointConfig",
    "Component",
    "ComponentSections",
    "Config",
    "ConfigError",
    "DataConfig",
    "EarlyStoppingConfig",
    "InitFrom",
    "LoggingConfig",
    "LossConfig",
    "MetricConfig",
    "ModelConfig",
    "OptimizerConfig",
    "OptimizerEntry",
    "OptimizerSpec",
    "ParamGroupsConfig",
    "Regex",
    "RuleConfig",
    "SchedulerConfig",
    "Section",
    "StepConfig",
    "TrainerConfig",
    "WarmupConfig",
    "apply_overrides",
    "class_name",
    "config_to_yaml",
    "default_mode",
    "load_config",
    "monitor_problems",
    "monitors",
    "parse_yaml",
    "read_config_file",
    "validate_config",
    "yaml_file_text",
]
