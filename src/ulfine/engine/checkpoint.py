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


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path} cannot be read as safetensors ({exc}); the file is damaged") from None


def load_weights(method: nn.Module, path: Path) -> None:
    """Copy a weights file into ``method``; every tensor in the file must exist with its shape."""
    load_state(method, _read_tensors(path), path)


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
def complete_step(folder: Path) -> int | None:
    """The step of a complete checkpoint folder (manifest present, every file at its size)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not all(
                (folder / name).stat().st_size == size for name, size in files.items()):
            return None
        return int(manifest["step"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def find_checkpoint(run_dir: Path) -> FoundCheckpoint | None:
    """The complete checkpoint with the highest step among checkpoint/, .new/ and .old/."""
    best: FoundCheckpoint | None = None
    for name in (CHECKPOINT_DIR, NEW_DIR, OLD_DIR):
        step = complete_step(Path(run_dir) / name)
        if step is not None and (best is None or step > best.step):
            best = FoundCheckpoint(Path(run_dir) / name, step)
    return best


def load_checkpoint(run_dir: Path, method: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None, Path]:
    """Load weights into ``method``; return (training state, EMA tensors or None, folder read)."""
    found = find_checkpoint(run_dir)
    if found is None:
        raise DataError(f"resume=true but {run_dir} holds no complete checkpoint (the run stopped "
                        "before its first save); start it again without resume=true")
    load_weights(method, found.path / "weights.safetensors")
    try:
        state = load_tree(found.path, "state")
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise DataError(f"{found.path} cannot be read ({exc}); the checkpoint is damaged") from None
    ema_path = found.path / "ema.safetensors"
    ema = _read_tensors(ema_path) if ema_path.is_file() else None
    return state, ema, found.path


__all__ = ["CHECKPOINT_DIR", "FoundCheckpoint", "complete_step", "find_checkpoint", "load_checkpoint",
           "load_state", "load_weights", "save_checkpoint", "save_weights", "weight_state"]
