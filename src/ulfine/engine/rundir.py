"""The run folder: where it is, whether a run may start or resume there, its saved config."""

from __future__ import annotations

from pathlib import Path

from ..config import Config, config_to_dict, load_saved_config, save_config
from ..errors import ConfigError
from ..jsonable import flatten
from .reporting import default_run_dir
from .runtime import Runtime

#: keys that may differ between an interrupted run and its resumption
RESUMABLE_CHANGES = {"resume", "train.max_steps", "train.progress", "train.log_every",
                     "train.checkpoint_every", "train.log_with", "data.num_workers", "data.root", "output_dir"}


def check_resumable(cfg: Config, saved: Path) -> None:
    """A resumed run must have the config it started with, except :data:`RESUMABLE_CHANGES`."""
    if not saved.is_file():
        raise ConfigError(f"resume=true but {saved.parent} holds no run (config.yaml missing)")
    old = flatten(config_to_dict(load_saved_config(saved)))
    new = flatten(config_to_dict(cfg))
    diff = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if diff:
        raise ConfigError(f"resume=true with a different config than {saved}: {', '.join(diff)}")


def prepare_run_dir(cfg: Config, rt: Runtime) -> tuple[Config, Path]:
    """Resolve output_dir (same on every rank), check resume compatibility, save config.yaml."""
    run_dir = Path(cfg.output_dir) if cfg.output_dir is not None else default_run_dir(cfg)
    run_dir = Path(rt.broadcast_object(str(run_dir)))
    cfg = cfg.model_copy(update={"output_dir": run_dir})
    saved = run_dir / "config.yaml"
    if cfg.resume:
        check_resumable(cfg, saved)
    elif (run_dir / "checkpoint").exists() or (run_dir / "final_metrics.json").exists():
        raise ConfigError(f"{run_dir} already holds a run; pass resume=true to continue it or "
                          "choose another output_dir")
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, saved)
    rt.barrier()
    return cfg, run_dir


def check_batch(cfg: Config, world_size: int) -> int:
    """Per-rank micro-batch size; the global batch must split evenly over ranks x accumulation."""
    parts = world_size * cfg.optim.grad_accum
    if cfg.train.batch_size % parts:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} must be divisible by processes x "
            f"optim.grad_accum = {world_size} x {cfg.optim.grad_accum}"
        )
    return cfg.train.batch_size // parts


__all__ = ["RESUMABLE_CHANGES", "check_batch", "check_resumable", "prepare_run_dir"]
