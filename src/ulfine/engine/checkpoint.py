"""Weights (safetensors) and resumable training state that survive a kill at any instant.

``weights.safetensors`` holds what a run changed: the trainable parameters and every buffer of
the method (e.g. PAF memories), by name relative to the method; the frozen backbone is rebuilt
from the config. ``checkpoint/`` adds what resuming needs: ``state.json`` + ``state.safetensors``
(optimiser, scheduler, grad-scaler and RNG states, the step counter -- the data stream is a pure
function of (seed, step), so the step is the sampler state -- and the evaluation history; no
pickle, see :mod:`ulfine.statefiles`), the EMA weights, and ``manifest.json`` (step, file sizes),
written last: a folder without it is incomplete.

Saving writes and fsyncs ``checkpoint.new/``, then renames ``checkpoint/`` to ``checkpoint.old/``,
``checkpoint.new/`` to ``checkpoint/``, and deletes ``checkpoint.old/``. At every instant one
complete checkpoint exists among the three names, and :func:`find_checkpoint` takes the complete
one with the highest step (a kill between the two renames leaves ``checkpoint.new/``, complete).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import DataError, ResourceError
from ..safefiles import atomic_write_text, fsync_dir
from ..statefiles import atomic_save_tensors, load_tree, save_tree
from ..validation import damaged, need_int, need_mapping, need_number

log = logging.getLogger("ulfine.engine")

CHECKPOINT_DIR = "checkpoint"
NEW_DIR = CHECKPOINT_DIR + ".new"
OLD_DIR = CHECKPOINT_DIR + ".old"
MANIFEST = "manifest.json"
FORMAT = 2  # 1 was a pickled state.pt


@dataclass(frozen=True)
class FoundCheckpoint:
    """A complete checkpoint folder and the step it holds."""

    path: Path
    step: int


def weight_state(method: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters plus all buffers of ``method``, on CPU, contiguous."""
    state = {n: p for n, p in method.named_parameters() if p.requires_grad}
    state.update(dict(method.named_buffers()))
    return {n: t.detach().cpu().contiguous().clone() for n, t in state.items()}


def save_weights(method: nn.Module, path: Path, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write :func:`weight_state` (optionally overridden by ``extra``, e.g. EMA values) atomically."""
    state = weight_state(method)
    if extra:
        state.update({n: t.detach().cpu().contiguous() for n, t in extra.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(state, path)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or one line saying it is missing or damaged (cut short, not safetensors)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"{path} cannot be read as safetensors ({reason}); the file is damaged or cut short") from None


_read_tensors = read_tensors  # the former private name


def load_weights(method: nn.Module, path: Path, complete: bool = False) -> None:
    """Copy a weights file into ``method``; every tensor in the file must exist with its shape
    (and, with ``complete``, every tensor :func:`weight_state` saves must be in the file)."""
    state = read_tensors(path)
    if complete:
        lacking = sorted(set(weight_state_names(method)) - set(state))
        if lacking:
            raise DataError(f"{path} lacks {len(lacking)} tensor(s) of this model (e.g. {lacking[0]}); the file "
                            "is damaged or belongs to another run")
    load_state(method, state, path)


def weight_state_names(method: nn.Module) -> list[str]:
    """The names :func:`weight_state` saves: trainable parameters and every buffer."""
    names = [n for n, p in method.named_parameters() if p.requires_grad]
    return names + [n for n, _ in method.named_buffers()]


@torch.no_grad()
def load_state(method: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Copy named tensors (e.g. a model folder's) into ``method``'s parameters and buffers;
    ``path`` names their file in errors."""
    targets = dict(method.named_parameters())
    targets.update(dict(method.named_buffers()))
    missing = [n for n in state if n not in targets]
    if missing:
        raise DataError(f"{path} does not match this model (unknown tensors: {missing[:3]}...)")
    for name, tensor in state.items():
        if targets[name].shape != tensor.shape:
            raise DataError(f"{path}: {name} has shape {tuple(tensor.shape)}, "
                            f"model expects {tuple(targets[name].shape)}")
        if targets[name].is_floating_point() != tensor.is_floating_point() or tensor.dtype == torch.bool \
                and targets[name].dtype != torch.bool:
            raise DataError(f"{path}: {name} is {tensor.dtype}, model expects {targets[name].dtype}; "
                            "the file is damaged or belongs to another model")
        targets[name].copy_(tensor.to(targets[name].device, targets[name].dtype))


# ------------------------------------------------------------------------------------ saving
def _rename(src: Path, dst: Path) -> None:
    """One durable rename of the swap (a function of its own so tests can stop between two)."""
    os.replace(src, dst)
    fsync_dir(dst.parent)


def _write_folder(folder: Path, method: nn.Module, state: dict[str, Any],
                  ema: dict[str, torch.Tensor] | None) -> None:
    """Every file durably, then the manifest that marks the folder complete."""
    folder.mkdir(parents=True)
    save_weights(method, folder / "weights.safetensors")
    if ema is not None:
        atomic_save_tensors(ema, folder / "ema.safetensors")
    save_tree(state, folder, "state")
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    atomic_write_text(folder / MANIFEST, json.dumps({"format": FORMAT, "step": int(state["step"]),
                                                     "files": files}))
    fsync_dir(folder)


def _finish_interrupted_swap(run_dir: Path) -> None:
    """A kill between the two renames left no ``checkpoint/`` but a complete ``checkpoint.new/``."""
    final, new = run_dir / CHECKPOINT_DIR, run_dir / NEW_DIR
    if not final.exists() and complete_step(new) is not None:
        _rename(new, final)


def _swap_in(run_dir: Path) -> None:
    final, new, old = run_dir / CHECKPOINT_DIR, run_dir / NEW_DIR, run_dir / OLD_DIR
    if final.exists():
        if old.exists():
            shutil.rmtree(old)  # a leftover of a kill while deleting it; checkpoint/ is complete
        _rename(final, old)
    _rename(new, final)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(run_dir: Path, method: nn.Module, state: dict[str, Any],
                    ema: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint of ``state["step"]`` so that a kill at any instant, or a full disk,
    leaves a complete checkpoint (this one or the previous) for :func:`find_checkpoint`."""
    run_dir = Path(run_dir)
    _finish_interrupted_swap(run_dir)
    new = run_dir / NEW_DIR
    if new.exists():
        shutil.rmtree(new)
    try:
        _write_folder(new, method, state, ema)
    except OSError as exc:
        shutil.rmtree(new, ignore_errors=True)
        previous = find_checkpoint(run_dir)
        kept = (f"the previous checkpoint {previous.path.name}/ (step {previous.step}) is intact: free "
                "space and continue with resume=true" if previous else "there is no earlier checkpoint")
        raise ResourceError(f"could not write the checkpoint of step {state['step']} into {run_dir} "
                            f"({exc.strerror or exc}); {kept}") from None
    _swap_in(run_dir)
    return run_dir / CHECKPOINT_DIR


# ----------------------------------------------------------------------------------- loading
def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint (None when it is): no manifest (a save was
    interrupted before its end), an unreadable manifest, a file missing or of another size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{MANIFEST} is missing (a save was interrupted)"
    except (OSError, ValueError) as exc:
        return f"{MANIFEST} is unreadable ({type(exc).__name__})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        return f"{MANIFEST} is not of checkpoint format {FORMAT} (format {got!r})"
    files, step = manifest.get("files"), manifest.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"{MANIFEST} has no valid step (got {step!r})"
    if not isinstance(files, dict) or "state.json" not in files or "weights.safetensors" not in files:
        return f"{MANIFEST} does not list the checkpoint's files"
    for name, size in files.items():
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            return f"{MANIFEST} lists an odd file name {name!r}"
        try:
            found = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if found != size:
            return f"{name} has {found} bytes, the manifest says {size!r}"
    return None


def complete_step(folder: Path) -> int | None:
    """The step of a complete checkpoint folder (manifest present, every file at its size)."""
    if checkpoint_problem(folder) is not None:
        return None
    return int(json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["step"])


def damaged_checkpoints(run_dir: Path) -> list[str]:
    """``checkpoint/: state.json is missing``-style lines for each checkpoint folder present but
    incomplete, so "no checkpoint" is never said of a run whose checkpoint is damaged."""
    out = []
    for name in (CHECKPOINT_DIR, NEW_DIR, OLD_DIR):
        folder = Path(run_dir) / name
        problem = checkpoint_problem(folder) if folder.is_dir() else None
        if problem is not None:
            out.append(f"{name}/: {problem}")
    return out


def find_checkpoint(run_dir: Path) -> FoundCheckpoint | None:
    """The complete checkpoint with the highest step among checkpoint/, .new/ and .old/."""
    best: FoundCheckpoint | None = None
    for name in (CHECKPOINT_DIR, NEW_DIR, OLD_DIR):
        step = complete_step(Path(run_dir) / name)
        if step is not None and (best is None or step > best.step):
            best = FoundCheckpoint(Path(run_dir) / name, step)
    return best


def start_over_hint(run_dir: Path) -> str:
    """What to do with a run whose checkpoint cannot be used: the two ways out, never a loop."""
    return (f"delete {Path(run_dir) / CHECKPOINT_DIR}* (and final_metrics.json) to train again from the "
            "start in this folder, or train into another output_dir")


def load_checkpoint(run_dir: Path, method: nn.Module, max_step: int | None = None,
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None, Path]:
    """Load weights into ``method``; return (training state, EMA tensors or None, folder read).

    The state is checked before use (:func:`check_state`): its types and ranges, its step equal
    to the manifest's and at most ``max_step`` (the run's budget); a damaged checkpoint is named
    as damaged (never as missing), with what to do.
    """
    found = find_checkpoint(run_dir)
    if found is None:
        damaged = damaged_checkpoints(run_dir)
        if damaged:
            raise DataError(f"resume=true but the checkpoint of {run_dir} is damaged ({'; '.join(damaged)}); "
                            f"{start_over_hint(run_dir)}")
        raise DataError(f"resume=true but {run_dir} holds no complete checkpoint (the run stopped "
                        "before its first save); start it again without resume=true")
    try:
        state = load_tree(found.path, "state")
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{found.path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); the checkpoint "
                        f"is damaged: {start_over_hint(run_dir)}") from None
    check_state(state, found, max_step, run_dir)
    load_weights(method, found.path / "weights.safetensors", complete=True)
    ema_path = found.path / "ema.safetensors"
    ema = read_tensors(ema_path) if ema_path.is_file() else None
    return state, ema, found.path


def check_state(state: Any, found: FoundCheckpoint, max_step: int | None, run_dir: Path) -> None:
    """What every checkpoint must hold, checked before anything uses it: a mapping whose step is
    the manifest's and at most ``max_step``. Why: ``state.json`` is plain JSON that anyone can
    edit; read as trusted, a step of 10**12 "finishes" the run with exit 0."""
    source = found.path / "state.json"
    fix = start_over_hint(run_dir)
    state = need_mapping(state, source, "the state", fix)
    step = need_int(state, "step", source, fix)
    if step != found.step:
        raise damaged(source, "step", f"is {step} but {MANIFEST} says {found.step}", fix)
    if max_step is not None and step > max_step:
        raise damaged(source, "step", f"is {step}, more than the run's {max_step} steps "
                      "(train.epochs x train.steps_per_epoch)", fix)


def check_loop_state(state: dict[str, Any], source: Path, fix: str) -> None:
    """The training loop's part of a checkpoint (:class:`~ulfine.engine.state.TrainState`, the
    optimiser and scheduler states), field by field: a missing key or a value of another type
    is one line naming it, not a traceback in the optimiser or the report."""
    step = need_int(state, "step", source, fix)
    need_number(state, "train_seconds", source, fix)
    seen = need_mapping(state.get("images_seen", {}), source, "images_seen", fix)
    for key in seen:
        need_int(seen, key, source, fix, prefix="images_seen.")
    if "nonfinite_skipped" in state:
        need_int(state, "nonfinite_skipped", source, fix, high=step)
    history = state.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise damaged(source, "history", "must be a list of evaluations", fix)
    if state.get("best_val") is not None:
        need_mapping(state["best_val"], source, "best_val", fix)
    rng = need_mapping(state.get("rng"), source, "rng", fix)
    for key in ("python", "numpy", "torch"):
        if key not in rng:
            raise damaged(source, f"rng.{key}", "is missing", fix)
    optimizer = need_mapping(state.get("optimizer"), source, "optimizer", fix)
    need_mapping(optimizer.get("state"), source, "optimizer.state", fix, str_keys=False)  # keyed by index
    if not isinstance(optimizer.get("param_groups"), list):
        raise damaged(source, "optimizer.param_groups", "must be a list", fix)
    need_mapping(state.get("scheduler"), source, "scheduler", fix)


def check_optimizer_state(saved: dict[str, Any], optimizer: torch.optim.Optimizer, source: Path,
                          fix: str) -> None:
    """The saved optimiser state fits ``optimizer``: the same groups with the same number of
    parameters, and every per-parameter tensor (momentum, Adam moments) of its parameter's shape.

    Why: ``load_state_dict`` checks the group sizes only; a tensor of another shape is accepted
    and fails at the next step, deep inside the optimiser.
    """
    groups = saved["param_groups"]
    if len(groups) != len(optimizer.param_groups) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) and len(g["params"]) == len(mine["params"])
            for g, mine in zip(groups, optimizer.param_groups)):
        raise damaged(source, "optimizer.param_groups", "do not match this run's parameters", fix)
    params = {i: p for g, mine in zip(groups, optimizer.param_groups) for i, p in zip(g["params"], mine["params"])}
    for index, entry in saved["state"].items():
        param = params.get(index)
        if param is None or not isinstance(entry, dict):
            raise damaged(source, f"optimizer.state[{index!r}]", "belongs to no parameter of this run", fix)
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise damaged(source, f"optimizer.state[{index!r}].{key}", f"has shape {tuple(value.shape)}, "
                              f"its parameter {tuple(param.shape)}", fix)


__all__ = ["CHECKPOINT_DIR", "FoundCheckpoint", "check_loop_state", "check_optimizer_state", "check_state",
           "checkpoint_problem", "complete_step", "damaged_checkpoints", "find_checkpoint", "load_checkpoint",
           "load_state", "load_weights", "read_tensors", "save_checkpoint", "save_weights", "start_over_hint",
           "weight_state", "weight_state_names"]
