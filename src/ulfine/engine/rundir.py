"""The run folder: where it is, whether a run may start or resume there, its saved config, and
what is left of it when a fresh run fails."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, config_to_dict, load_saved_config, save_config
from ..errors import ConfigError
from ..jsonable import flatten
from ..registry import METHODS
from ..safefiles import refuse_pickles, remove_temporaries
from .checkpoint import find_checkpoint
from .runtime import Runtime
from .state import step_budget

log = logging.getLogger("ulfine.engine")

#: keys that may differ between an interrupted run and its resumption
RESUMABLE_CHANGES = {"resume", "train.max_steps", "train.progress", "train.log_every",
                     "train.checkpoint_every", "train.checkpoint_every_steps", "train.log_with", "train.on_nonfinite",
                     "data.num_workers", "data.root", "data.augment_on", "output_dir"}
FINAL_METRICS = "final_metrics.json"


@dataclass(frozen=True)
class RunDir:
    """A resolved run folder; ``created`` when this invocation made it (absent or empty before),
    so a failure before its first checkpoint may remove it again; ``finished`` (the steps it took)
    when resuming a run that has nothing left to do."""

    path: Path
    created: bool
    finished: int | None = None


def default_run_dir(cfg: Config, now: float | None = None) -> Path:
    """runs/<preset or dataset>-<method>-<finetune>-<YYYYmmdd-HHMMSS>."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    name = cfg.preset or cfg.data.dataset
    return Path("runs") / f"{name}-{cfg.method}-{cfg.finetune}-{stamp}"


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


def prepare_run_dir(cfg: Config, rt: Runtime) -> tuple[Config, RunDir]:
    """Resolve output_dir (same on every rank), check resume compatibility (and that the folder
    holds no pickle), save config.yaml."""
    run_dir = Path(cfg.output_dir) if cfg.output_dir is not None else default_run_dir(cfg)
    run_dir = Path(rt.broadcast_object(str(run_dir)))
    cfg = cfg.model_copy(update={"output_dir": run_dir})
    saved = run_dir / "config.yaml"
    if cfg.resume:
        check_resumable(cfg, saved)
        refuse_pickles(run_dir)
    elif find_checkpoint(run_dir) is not None or (run_dir / FINAL_METRICS).exists():
        raise ConfigError(f"{run_dir} already holds a run; pass resume=true to continue it or "
                          "choose another output_dir")
    run = RunDir(run_dir, created=not run_dir.is_dir() or not any(run_dir.iterdir()),
                 finished=finished_steps(cfg, run_dir) if cfg.resume else None)
    if rt.is_main and run.finished is None:  # a finished run is left exactly as it is
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(run_dir)  # half-written files of a killed predecessor
        save_config(cfg, saved)
    rt.barrier()
    return cfg, run


def finished_steps(cfg: Config, run_dir: Path) -> int | None:
    """The steps of a finished run that resuming would not extend (None if there is work left).

    A run stopped by ``train.max_steps`` has ``final_metrics.json`` too; it is finished only if
    the resumed config asks for no more steps than it took.
    """
    path = run_dir / FINAL_METRICS
    if not path.is_file():
        return None
    try:
        steps = int(json.loads(path.read_text())["steps"])
    except (ValueError, KeyError, TypeError):
        return None  # damaged: finish it again
    return steps if steps >= step_budget(cfg.train, METHODS.get(cfg.method).trains).stop else None


def discard_unfinished(run: RunDir) -> bool:
    """After a fresh run failed: remove what it wrote unless a checkpoint makes it resumable."""
    if not run.created or not run.path.is_dir() or find_checkpoint(run.path) is not None:
        return False
    shutil.rmtree(run.path)
    log.info("removed the unfinished run folder %s (it failed before its first checkpoint)", run.path)
    return True


def check_batch(cfg: Config, world_size: int) -> int:
    """Per-rank micro-batch size; the global batch must split evenly over ranks x accumulation."""
    parts = world_size * cfg.optim.grad_accum
    if cfg.train.batch_size % parts:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} must be divisible by processes x "
            f"optim.grad_accum = {world_size} x {cfg.optim.grad_accum}"
        )
    return cfg.train.batch_size // parts


__all__ = ["FINAL_METRICS", "RESUMABLE_CHANGES", "RunDir", "check_batch", "check_resumable", "default_run_dir",
           "discard_unfinished",
           "finished_steps", "prepare_run_dir"]
