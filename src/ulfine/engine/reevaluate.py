"""Re-evaluate a finished run: rebuild it from ``config.yaml`` through the one assembly, load its
weights, recompute its metrics (``ulfine eval RUN_DIR``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import (
    Config,
    build_config,
    config_to_dict,
    deep_merge,
    folder_plugins,
    load_saved_config,
    parse_overrides,
    read_saved_data,
)
from ..errors import ConfigError, DataError
from ..methods import Method
from ..registry import consent_to_plugins
from ..safefiles import atomic_write_text, refuse_pickles
from .assemble import RunParts, assemble_run
from .checkpoint import load_weights
from .evaluation import EvalSets, build_eval_sets, evaluate_sets
from .runtime import Runtime, make_runtime, resource_advice

log = logging.getLogger("ulfine.engine")

#: keys ``ulfine eval`` may change: where and how to compute, never what was trained
EVAL_OVERRIDABLE = ("train.device", "train.precision", "data.root", "data.num_workers",
                    "eval.batch_size", "cache.")


def load_run_weights(method: Method, run_dir: Path) -> str:
    """Load the evaluation weights of a finished run (EMA when it was trained with one)."""
    ema = run_dir / "ema.safetensors"
    path = ema if ema.is_file() else run_dir / "weights.safetensors"
    if not path.is_file():
        raise DataError(f"no weights in {run_dir} (expected weights.safetensors); did the run finish?")
    load_weights(method, path)
    return path.name


def trust_folder_plugins(folder: Path) -> None:
    """Import the plugins a run folder (``config.yaml``) or model folder (``config.json``) names:
    the user passed ``--trust-plugins`` for it. Later loads of the folder then find them imported.

    Why a step of its own: ``ulfine export`` and a resumed ``ulfine train`` read the folder's
    config deep inside; consenting first keeps one rule (nothing unconsented is imported) without
    threading the flag through every layer.
    """
    folder = Path(folder)
    if (folder / "config.yaml").is_file():
        source = folder / "config.yaml"
        value = read_saved_data(source).get("plugins")
    elif (folder / "config.json").is_file():
        source = folder / "config.json"
        try:
            spec = json.loads(source.read_text(encoding="utf-8"))
            value = spec["run_config"].get("plugins")
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # a damaged model folder is reported, with its field, when it is loaded
    else:
        return
    consent_to_plugins(folder_plugins(value, folder, str(source)), str(source), trusted=True)


def saved_run_config(run_dir: Path, overrides: list[str] | None = None, trust_plugins: bool = False) -> Config:
    """``RUN_DIR/config.yaml`` with ``overrides`` of where and how to run (:data:`EVAL_OVERRIDABLE`);
    its plugins are imported only when already loaded or with ``trust_plugins``."""
    bad = [o for o in overrides or [] if not o.split("=", 1)[0].strip().startswith(EVAL_OVERRIDABLE)]
    if bad:
        raise ConfigError(f"ulfine eval can only override {', '.join(EVAL_OVERRIDABLE)} "
                          f"(got {', '.join(bad)}); what was trained stays as saved")
    cfg = load_saved_config(run_dir / "config.yaml", trust_plugins=trust_plugins)
    if not overrides:
        return cfg
    return build_config(deep_merge(config_to_dict(cfg), parse_overrides(overrides)))


def load_run(run_dir: Path, overrides: list[str] | None = None,
             trust_plugins: bool = False) -> tuple[RunParts, Runtime, str]:
    """A finished run rebuilt by the assembly that trained it, with its evaluation weights loaded:
    (parts, runtime, name of the weights file). A run folder holding a pickle is refused first
    (:func:`ulfine.safefiles.refuse_pickles`), and the plugins its config names are imported only
    with ``trust_plugins`` (``--trust-plugins``): nothing in a run folder runs without consent."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir} is not a run folder (no config.yaml; `ulfine train` writes one)")
    refuse_pickles(run_dir)
    cfg = saved_run_config(run_dir, overrides, trust_plugins)
    rt = make_runtime(cfg.train.device, cfg.train.precision)
    log.info(rt.describe())
    parts = assemble_run(cfg, rt, run_dir)
    return parts, rt, load_run_weights(parts.method, run_dir)


def evaluate_run(run_dir: Path, split: str = "test", overrides: list[str] | None = None,
                 trust_plugins: bool = False) -> dict[str, Any]:
    """Recompute a finished run's metrics on ``split`` (test or val); also written to
    ``RUN_DIR/eval_<split>.json``.

    The split is re-drawn from the saved config and checked against ``split.json``; ``overrides``
    (``key=value``) may change only where and how the evaluation runs, e.g. ``train.device=cpu``
    to re-evaluate a GPU run on a laptop, ``data.root=...`` when the data moved. The plugins the
    run's config names are imported only with ``trust_plugins``.
    """
    run_dir = Path(run_dir)
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    parts, rt, weights = load_run(run_dir, overrides, trust_plugins)
    with resource_advice(parts.cfg):  # out of memory: name eval.batch_size and friends
        sets = build_eval_sets(parts, rt)
        if split == "val":
            if sets.val is None:
                raise ConfigError("this run has no validation split (data.val_per_class was 0)")
            sets = EvalSets(sets.val, None, sets.unlabeled)
        metrics = evaluate_sets(parts, sets, rt)
    metrics.update({"split": split, "weights": weights, "run_dir": str(run_dir)})
    if rt.is_main:
        atomic_write_text(run_dir / f"eval_{split}.json", json.dumps(metrics, indent=2))
    return metrics


__all__ = ["EVAL_OVERRIDABLE", "evaluate_run", "load_run", "load_run_weights", "saved_run_config",
           "trust_folder_plugins"]
