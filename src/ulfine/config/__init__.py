"""Typed configuration: the schema (defaults in one place) and its loader."""

from .loader import (
    absolute_data_root,
    build_config,
    config_dir,
    config_to_dict,
    deep_merge,
    folder_plugins,
    list_presets,
    load_config,
    load_saved_config,
    parse_overrides,
    preset_dir,
    read_saved_data,
    save_config,
    saved_config_data,
)
from .recipes import load_recipes, recipe_overrides
from .schema import (
    CacheConfig,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    Section,
    SSLConfig,
    TrainConfig,
    option_sections,
)

__all__ = [
    "load_recipes", "recipe_overrides",
    "CacheConfig", "Config", "DataConfig", "EvalConfig", "ModelConfig", "OptimConfig",
    "SSLConfig", "Section", "TrainConfig", "option_sections",
    "absolute_data_root", "build_config", "config_dir", "folder_plugins", "read_saved_data", "saved_config_data",
    "config_to_dict", "deep_merge", "list_presets", "load_config",
    "load_saved_config", "parse_overrides", "preset_dir", "save_config",
]
