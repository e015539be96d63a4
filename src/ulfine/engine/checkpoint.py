"""Weights (safetensors) and resumable training state.

``weights.safetensors`` holds what a run changed: the trainable parameters and every buffer of
the method (e.g. PAF memories), by name relative to the method; the frozen backbone is rebuilt
from the config. ``checkpoint/`` adds what resuming needs: optimiser, scheduler, grad-scaler and
RNG states, the step counter (the data stream is a pure function of (seed, step), so the step is
the sampler state), the evaluation history and the EMA weights. It is written to a temporary
folder and renamed, so an interrupted save never leaves a half checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import DataError

CHECKPOINT_DIR = "checkpoint"


def weight_state(method: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters plus all buffers of ``method``, on CPU, contiguous."""
    state = {n: p for n, p in method.named_parameters() if p.requires_grad}
    state.update(dict(method.named_buffers()))
    return {n: t.detach().cpu().contiguous().clone() for n, t in state.items()}


def save_weights(method: nn.Module, path: Path, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write :func:`weight_state` (optionally overridden by ``extra``, e.g. EMA values)."""
    state = weight_state(method)
    if extra:
        state.update({n: t.detach().cpu().contiguous() for n, t in extra.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def load_weights(method: nn.Module, path: Path) -> None:
    """Copy a weights file into ``method``; every tensor in the file must exist with its shape."""
    load_state(method, load_file(str(path)), path)


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


def save_checkpoint(run_dir: Path, method: nn.Module, state: dict[str, Any],
                    ema: dict[str, torch.Tensor] | None = None) -> Path:
    """Atomically write ``run_dir/checkpoint`` (weights, EMA, and ``state.pt``)."""
    final = run_dir / CHECKPOINT_DIR
    tmp = run_dir / (CHECKPOINT_DIR + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_weights(method, tmp / "weights.safetensors")
    if ema is not None:
        save_file({n: t.contiguous() for n, t in ema.items()}, str(tmp / "ema.safetensors"))
    torch.save(state, tmp / "state.pt")
    old = run_dir / (CHECKPOINT_DIR + ".old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def load_checkpoint(run_dir: Path, method: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Load weights into ``method``; return (training state, EMA tensors or None)."""
    ckpt = run_dir / CHECKPOINT_DIR
    if not (ckpt / "state.pt").is_file():
        raise DataError(f"resume=true but {ckpt} has no checkpoint; start without resume")
    load_weights(method, ckpt / "weights.safetensors")
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    ema_path = ckpt / "ema.safetensors"
    ema = load_file(str(ema_path)) if ema_path.is_file() else None
    return state, ema


__all__ = ["CHECKPOINT_DIR", "load_checkpoint", "load_state", "load_weights", "save_checkpoint", "save_weights",
           "weight_state"]
