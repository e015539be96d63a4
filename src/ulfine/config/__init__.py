"""Typed configuration: the schema (defaults in one place) and its loader."""

from .loader import (
    build_config,
    config_dir,
    config_to_dict,
    deep_merge,
    list_presets,
    load_config,
    load_saved_config,
    parse_overrides,
    preset_dir,
    save_config,
)
from .schema import (
    CacheConfig,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    PEFTConfig,
    Section,
    SSLConfig,
    TrainConfig,
    option_sections,
)

__all__ = [
    "CacheConfig", "Config", "DataConfig", "EvalConfig", "ModelConfig", "OptimConfig",
    "PEFTConfig", "SSLConfig", "Section", "TrainConfig", "option_sections",
    "build_config", "config_dir", "config_to_dict", "deep_merge", "list_presets", "load_config",
    "load_saved_config", "parse_overrides", "preset_dir", "save_config",
]
