"""Load a preset YAML, apply dotted ``key=value`` overrides, validate, and save resolved configs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from ..registry import consent_to_plugins, plugin_names
from ..safefiles import atomic_write_text
from .schema import Config, format_validation_error

BASE_KEY = "base"  # a preset may name another preset it extends


def config_dir() -> Path:
    """Folder holding ``presets/``: $ULFINE_CONFIG_DIR, else the repository's ``configs/``."""
    env = os.environ.get("ULFINE_CONFIG_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "configs" / "presets").is_dir():
            return parent / "configs"
    return Path.cwd() / "configs"


def preset_dir() -> Path:
    """Folder of the named presets."""
    return config_dir() / "presets"


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description (the YAML's leading ``# `` comment)."""
    out: dict[str, str] = {}
    for path in sorted(preset_dir().glob("*.yaml")):
        first = path.read_text().splitlines()[:1]
        desc = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        out[path.stem] = desc
    return out


def _preset_path(preset: str) -> Path:
    path = Path(preset)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        return path
    path = preset_dir() / f"{preset}.yaml"
    if not path.is_file():
        names = list(list_presets())
        hint = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ConfigError(
            f"unknown preset {preset!r} (looked in {preset_dir()}); `ulfine presets` lists them: {hint}"
        )
    return path


def _read_preset(preset: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if preset in seen:
        raise ConfigError(f"preset {preset!r} extends itself through {' -> '.join(seen)}")
    path = _preset_path(preset)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"preset {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a mapping of keys to values")
    base = data.pop(BASE_KEY, None)
    if base is not None:
        data = deep_merge(_read_preset(str(base), seen + (preset,)), data)
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, the rest replaces)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["data.root=/x", "ssl.tau=0.9"]`` into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. ssl.tau=0.95)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except (yaml.YAMLError, ValueError):  # e.g. 2001-13-01 is a YAML date with no such month
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
            node = child
        node[parts[-1]] = value
    return nested


def build_config(data: dict[str, Any]) -> Config:
    """Validate a plain dict into a Config, with one-line errors that name the key."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def apply_budget(config: Config, fraction: float) -> Config:
    """``config`` with its training budget (epochs x steps per epoch) cut to ``fraction`` of it.

    Why: the field's scratch budget (250k steps) is for a GPU week, not a smoke run. Epochs are
    cut first (at least 1), then the steps of each epoch, so a short run still ends in an
    evaluation and a scheduled epoch boundary; the schedule spans the shortened budget. The
    returned config is the one that runs (its ``train.epochs``/``steps_per_epoch`` are the
    shortened values), so resuming or re-evaluating it never shortens it twice.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--budget must be in (0, 1], got {fraction}")
    epochs, steps = config.train.epochs, config.train.steps_per_epoch
    if fraction == 1.0 or epochs == 0:
        return config
    target = max(1, round(epochs * steps * fraction))
    new_epochs = max(1, round(epochs * fraction))
    new_steps = max(1, round(target / new_epochs))
    train = config.train.model_copy(update={"epochs": new_epochs, "steps_per_epoch": new_steps})
    return config.model_copy(update={"train": train})


def load_config(preset: str | None = None, overrides: list[str] | None = None,
                budget: float | None = None) -> Config:
    """Load ``preset`` (a name under configs/presets or a YAML path), apply overrides, validate;
    ``budget`` (a fraction) shortens the training budget (:func:`apply_budget`)."""
    data: dict[str, Any] = {}
    if preset is not None:
        data = _read_preset(preset)
        data.setdefault("preset", Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset)
    data = deep_merge(data, parse_overrides(list(overrides or [])))
    config = absolute_data_root(build_config(data))
    return apply_budget(config, budget) if budget is not None else config


def absolute_data_root(cfg: Config) -> Config:
    """``cfg`` with ``data.root`` made absolute (against the current folder).

    Why: the run folder records it, and ``ulfine eval``, ``export``, ``predict`` and resume may run
    from another folder; a relative root would then point elsewhere. (Plugin files are made
    absolute by the schema itself.)
    """
    root = Path(cfg.data.root).expanduser()
    if root.is_absolute():
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": Path(os.path.abspath(root))})})


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain, YAML/JSON-serialisable view of a config."""
    return cfg.model_dump(mode="json")


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config (every key, defaults included) so a run can be re-made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def folder_plugins(value: Any, folder: Path, where: str) -> list[str]:
    """The plugins a saved config names, a relative ``.py`` path taken relative to the run or
    model ``folder`` when the file is there (a plugin shipped inside the folder), else to the
    current folder (configs written before plugin paths were recorded absolute)."""
    out = []
    for name in plugin_names(value, where):
        path = Path(name).expanduser()
        if name.endswith(".py") and not path.is_absolute() and (folder / path).is_file():
            name = str(folder / path)
        out.append(name)
    return out


def read_saved_data(path: Path) -> dict[str, Any]:
    """The mapping of a saved ``config.yaml``, or a one-line ConfigError saying it is damaged."""
    if not path.is_file():
        raise ConfigError(f"no saved config at {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable config ({type(exc).__name__}); the file is damaged") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a readable config (not a mapping of keys to values)")
    return data


def saved_config_data(data: dict[str, Any], folder: Path, source: str, trust_plugins: bool) -> dict[str, Any]:
    """A saved config's mapping with its plugins resolved and imported only with consent
    (:func:`ulfine.registry.consent_to_plugins`), ready for :func:`build_config`."""
    plugins = folder_plugins(data.get("plugins"), folder, source)
    consent_to_plugins(plugins, source, trust_plugins)
    return {**data, "plugins": plugins}


def load_saved_config(path: Path, trust_plugins: bool = False) -> Config:
    """Read a config saved by :func:`save_config` (e.g. ``RUN_DIR/config.yaml``).

    The plugins it names are imported only when already loaded (the user named them) or with
    ``trust_plugins=True`` (``--trust-plugins``): a run folder may come from someone else.
    """
    data = read_saved_data(path)
    return build_config(saved_config_data(data, path.parent, str(path), trust_plugins))
