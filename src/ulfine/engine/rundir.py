"""The run folder: where it is, whether a run may start or resume there, its saved config, and
what is left of it when a fresh run fails.

Why so careful: run folders are where people keep results, and they are shared. A fresh run
therefore only ever writes into a folder it makes itself (exclusively, so two runs started at
once never share one), an empty folder, or an unfinished ulfine run; anything else is refused
before a byte is written. A failed run removes only the files a run writes.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import Config, config_to_dict, load_saved_config, save_config
from ..errors import ConfigError, UlfineError
from ..jsonable import flatten
from ..registry import METHODS
from ..safefiles import is_temporary, refuse_pickles, remove_temporaries
from .checkpoint import find_checkpoint
from .runtime import Runtime
from .state import step_budget

log = logging.getLogger("ulfine.engine")

#: keys that may differ between an interrupted run and its resumption
RESUMABLE_CHANGES = {"resume", "train.max_steps", "train.progress", "train.log_every",
                     "train.checkpoint_every", "train.checkpoint_every_steps", "train.log_with", "train.on_nonfinite",
                     "data.num_workers", "data.root", "data.augment_on", "output_dir"}
FINAL_METRICS = "final_metrics.json"
CONFIG_FILE = "config.yaml"
#: besides config.yaml, any of these makes a folder an ulfine run (train.log is opened right after
#: config.yaml is written, so even a run killed in its first second has two)
RUN_MARKERS = ("split.json", "train.log", "metrics.jsonl", FINAL_METRICS, "checkpoint", "checkpoint.new",
               "checkpoint.old")
#: every entry a run writes in its folder (with ``eval_<split>.json`` and temporary files): all a
#: failed run may remove
RUN_ENTRIES = frozenset({CONFIG_FILE, *RUN_MARKERS, "skipped_images.json", "weights.safetensors",
                         "ema.safetensors", "tb", "wandb", "mlruns", "report"})
#: top-level keys of every config.yaml ulfine has written (it writes the whole resolved config)
SAVED_KEYS = frozenset({"method", "finetune", "peft", "head", "seed", "output_dir", "resume", "data", "model",
                        "train", "optim", "ssl", "eval"})
_NAME_ATTEMPTS = 100


@dataclass(frozen=True)
class RunDir:
    """A resolved run folder; ``created`` when this invocation may call everything in it its own
    (the folder was absent or empty), ``made`` when it made the folder itself, so a failure
    before its first checkpoint may remove what it wrote (and the folder, if made); ``finished``
    (the steps it took) when resuming a run that has nothing left to do."""

    path: Path
    created: bool
    finished: int | None = None
    made: bool = False


def default_run_dir(cfg: Config, now: float | None = None, suffix: str | None = None) -> Path:
    """runs/<preset or dataset>-<method>-<finetune>-s<seed>-<YYYYmmdd-HHMMSS>-<4 hex digits>.

    The seed and the random suffix tell apart runs started in the same second (a seed sweep
    launched with ``&``); :func:`make_default_run_dir` makes sure the name is new anyway.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    name = cfg.preset or cfg.data.dataset
    suffix = suffix if suffix is not None else secrets.token_hex(2)
    return Path("runs") / f"{name}-{cfg.method}-{cfg.finetune}-s{cfg.seed}-{stamp}-{suffix}"


def make_default_run_dir(cfg: Config) -> Path:
    """Make a new run folder under the default name, exclusively: a name another run (or
    anything else) holds already is never shared, another suffix is drawn instead."""
    for _ in range(_NAME_ATTEMPTS):
        path = default_run_dir(cfg)
        _make_parents(path)
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"no free run folder name like {default_run_dir(cfg)} after {_NAME_ATTEMPTS} tries; "
                      "pass output_dir=...")


def is_ulfine_run(folder: Path) -> bool:
    """Whether ``folder`` holds an ulfine run: the config.yaml ulfine writes (every key resolved,
    :data:`SAVED_KEYS` among them) plus one of :data:`RUN_MARKERS`, or naming this very folder as
    its output_dir (a run killed right after writing it).

    Why not just a config.yaml: people keep their own config.yaml (and train.log) in experiment
    folders, and a fresh run would overwrite them; a hand-written config never lists every key.
    """
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        return False
    try:
        data = yaml.safe_load((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    if not isinstance(data, dict) or not SAVED_KEYS <= data.keys():
        return False
    return any((folder / m).exists() for m in RUN_MARKERS) or _names_folder(data["output_dir"], folder)


def _names_folder(output_dir: object, folder: Path) -> bool:
    """Whether a saved ``output_dir`` is ``folder`` (as the run resolved it then)."""
    try:
        return isinstance(output_dir, str) and Path(output_dir).resolve() == folder.resolve()
    except (OSError, RuntimeError):
        return False


def check_output_dir(path: Path) -> None:
    """Refuse, in one line, an output_dir that cannot be a run folder: a file, a dangling
    symlink, the file system root or the home folder (whatever the run did there would mix with
    everything else in it)."""
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"output_dir={path} is a symbolic link to {os.readlink(path)}, which does not "
                          "exist; choose a folder")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output_dir={path} is a file, not a folder; choose a folder (new or empty)")
    resolved = path.resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        what = "the file system root" if resolved == Path(resolved.anchor) else "your home folder"
        raise ConfigError(f"output_dir={path} is {what}; a run needs a folder of its own, e.g. "
                          f"output_dir={path / 'runs' / 'my_run'}")


def _make_parents(path: Path) -> None:
    """The folders above ``path`` (a path through a file is a one-line ConfigError)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output_dir={path} cannot be created ({exc.strerror or exc})") from None


def _claim(path: Path) -> tuple[bool, bool]:
    """Take ``path`` for a fresh run: (made, created). A new folder is made exclusively; an
    empty one is taken by creating its config.yaml exclusively; an unfinished ulfine run (no
    checkpoint) is started again; anything else is refused naming what is there."""
    made = False
    if not path.exists():
        _make_parents(path)
        try:
            os.mkdir(path)
            made = True
        except FileExistsError:
            raise ConfigError(f"output_dir={path} was created by another process just now; two runs cannot "
                              "share a folder: choose another output_dir") from None
    entries = sorted(e.name for e in path.iterdir())
    if entries and is_ulfine_run(path):
        return False, False  # killed before its first checkpoint: its files are ulfine's
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise ConfigError(f"output_dir={path} is not empty and holds no ulfine run ({shown}); a fresh run "
                          "writes only into a new or empty folder: choose another output_dir")
    try:  # an empty folder: config.yaml created exclusively marks it taken
        os.close(os.open(path / CONFIG_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)))
    except FileExistsError:
        raise ConfigError(f"output_dir={path} was taken by another run just now; two runs cannot share a "
                          "folder: choose another output_dir") from None
    return made, True


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
    """Resolve output_dir on the main process and tell the others (same folder on every rank):
    take a folder for a fresh run (:func:`_claim`) or check that a resumed one matches and holds
    no pickle; save config.yaml. A refusal is raised on every rank."""
    if rt.is_main:
        try:
            run = _prepare_on_main(cfg)
        except UlfineError as exc:
            rt.broadcast_object(exc)
            raise
        rt.broadcast_object(run)
    else:
        run = rt.broadcast_object(None)
        if isinstance(run, BaseException):
            raise run
    rt.barrier()
    return cfg.model_copy(update={"output_dir": run.path}), run


def _prepare_on_main(cfg: Config) -> RunDir:
    """:func:`prepare_run_dir`'s decisions and writes, made once (by the main process)."""
    if cfg.output_dir is None and cfg.resume:
        raise ConfigError("resume=true needs output_dir=<the run folder to continue>")
    if cfg.output_dir is None:
        run_dir, made, created = make_default_run_dir(cfg), True, True
    else:
        run_dir, made, created = Path(cfg.output_dir), False, False
        check_output_dir(run_dir)
    cfg = cfg.model_copy(update={"output_dir": run_dir})
    saved = run_dir / CONFIG_FILE
    if cfg.resume:
        check_resumable(cfg, saved)
        refuse_pickles(run_dir)
    elif find_checkpoint(run_dir) is not None or (run_dir / FINAL_METRICS).exists():
        raise ConfigError(f"{run_dir} already holds a run; pass resume=true to continue it or "
                          "choose another output_dir")
    elif not made:
        made, created = _claim(run_dir)
    run = RunDir(run_dir, created=created, made=made,
                 finished=finished_steps(cfg, run_dir) if cfg.resume else None)
    if run.finished is None:  # a finished run is left exactly as it is
        if is_ulfine_run(run_dir):
            removed = remove_temporaries(run_dir)  # half-written files of a killed predecessor
            if removed:
                log.info("removed %d temporary file(s) a killed run left in %s", removed, run_dir)
        save_config(cfg, saved)
    return run


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
    """After a fresh run failed: remove what it wrote unless a checkpoint makes it resumable.

    Only entries a run writes (:data:`RUN_ENTRIES`, ``eval_*.json``, temporary files) are removed,
    never anything else that appeared in the folder meanwhile; the folder itself goes only if
    this run made it and nothing else is left in it.
    """
    if not run.created or not run.path.is_dir() or find_checkpoint(run.path) is not None:
        return False
    kept = []
    for entry in sorted(run.path.iterdir()):
        if _written_by_a_run(entry.name):
            _remove(entry)
        else:
            kept.append(entry.name)
    if run.made and not kept:
        run.path.rmdir()
        log.info("removed the unfinished run folder %s (it failed before its first checkpoint)", run.path)
    else:
        log.info("removed the files of the unfinished run in %s (it failed before its first checkpoint)%s",
                 run.path, f"; kept {', '.join(kept)}" if kept else "")
    return True


def _written_by_a_run(name: str) -> bool:
    """Whether a run folder entry named ``name`` is one a run writes."""
    return (name in RUN_ENTRIES or is_temporary(Path(name))
            or (name.startswith("eval_") and name.endswith(".json")))


def _remove(entry: Path) -> None:
    """Remove a file, a symlink (not what it points to) or a folder."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink(missing_ok=True)


def check_batch(cfg: Config, world_size: int) -> int:
    """Per-rank micro-batch size; the global batch must split evenly over ranks x accumulation."""
    parts = world_size * cfg.optim.grad_accum
    if cfg.train.batch_size % parts:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} must be divisible by processes x "
            f"optim.grad_accum = {world_size} x {cfg.optim.grad_accum}"
        )
    return cfg.train.batch_size // parts


__all__ = ["CONFIG_FILE", "FINAL_METRICS", "RESUMABLE_CHANGES", "RUN_ENTRIES", "RUN_MARKERS", "SAVED_KEYS", "RunDir",
           "check_batch", "check_output_dir", "check_resumable", "default_run_dir", "discard_unfinished",
           "finished_steps", "is_ulfine_run", "make_default_run_dir", "prepare_run_dir"]
