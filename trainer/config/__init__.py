"""The config: YAML loading (safe only), dotted overrides, the pydantic schema, readable errors.

Nothing here imports anything of the layers above (components, engine, ...), nor torch at
import time (trust checks a resolved object against torch's classes only when asked):
`trainer config` validates the structure of a config without them. The modules:
`yaml_files` (the hardened YAML loader and dumper, file text), `compose` (bases, several
files, `~key` deletions, where each key came from), `overrides`, `regexes` (regex
safety), `metric_names` and `monitors` (what a config monitors), `sections` and `schema`
(the pydantic models, `Config`), `loading` (load, validate, describe problems by key), and
`trust` (which import paths a config may name).
"""

from trainer.config.compose import MAX_BASE_DEPTH, Composed, name_origins, origin_yaml
from trainer.config.loading import (
    ConfigError,
    config_to_yaml,
    load_config,
    read_configs,
    validate_config,
)
from trainer.config.metric_names import class_name, default_mode, ema_name
from trainer.config.monitors import monitors
from trainer.config.overrides import Origins, apply_overrides, flatten
from trainer.config.schema import ComponentSections, Config, OptimizerSpec
from trainer.config.sections import (
    CheckpointConfig,
    Component,
    DataConfig,
    EmaConfig,
    FsdpConfig,
    InitFrom,
    LossConfig,
    MetricConfig,
    ModelConfig,
    OptimizerConfig,
    ParamGroupsConfig,
    RuleConfig,
    SchedulerConfig,
    StepConfig,
)
from trainer.config.yaml_files import MAX_DEPTH, parse_yaml, yaml_file_text

__all__ = [
    "MAX_BASE_DEPTH",
    "MAX_DEPTH",
    "CheckpointConfig",
    "Component",
    "ComponentSections",
    "Composed",
    "Config",
    "ConfigError",
    "DataConfig",
    "EmaConfig",
    "FsdpConfig",
    "InitFrom",
    "LossConfig",
    "MetricConfig",
    "ModelConfig",
    "OptimizerConfig",
    "OptimizerSpec",
    "Origins",
    "ParamGroupsConfig",
    "RuleConfig",
    "SchedulerConfig",
    "StepConfig",
    "apply_overrides",
    "class_name",
    "config_to_yaml",
    "default_mode",
    "ema_name",
    "flatten",
    "load_config",
    "monitors",
    "name_origins",
    "origin_yaml",
    "parse_yaml",
    "read_configs",
    "validate_config",
    "yaml_file_text",
]
