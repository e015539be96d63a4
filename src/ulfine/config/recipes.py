"""Recipes as data: named sets of dotted overrides kept as YAML under ``configs/recipes/``.

Why data: a tuned option or a published recipe is a fact about an experiment, not code; the
demo, the benchmarks and the reproduce scripts read the same file, and changing a recipe changes
no module. A recipe file maps names to ``{dotted.key: value}`` (optionally one level deeper, as
in ``microworld.yaml``'s ``strategy:`` and ``tuned:`` groups).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .loader import config_dir


def recipe_dir() -> Path:
    """Folder of the recipe files (``configs/recipes``, or $ULFINE_CONFIG_DIR/recipes)."""
    return config_dir() / "recipes"


def load_recipes(name: str) -> dict[str, Any]:
    """The whole recipe file ``name`` (``configs/recipes/<name>.yaml``)."""
    path = recipe_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe file {path} must map names to overrides")
    return data


def _as_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def recipe_overrides(name: str, *keys: str) -> tuple[str, ...]:
    """The ``key=value`` overrides at ``keys`` of recipe file ``name`` (empty when absent), e.g.
    ``recipe_overrides("microworld", "tuned", "fixmatch") == ("ssl.tau=0.95",)``."""
    node: Any = load_recipes(name)
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return ()
    if not isinstance(node, dict):
        raise ConfigError(f"recipe {name}:{'.'.join(keys)} must map dotted keys to values")
    return tuple(f"{k}={_as_text(v)}" for k, v in node.items())


__all__ = ["load_recipes", "recipe_dir", "recipe_overrides"]
