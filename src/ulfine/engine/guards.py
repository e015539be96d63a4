"""Numerical guards of the loop: is a step's loss finite on every process, undoing a skipped
step's buffer changes, and never checkpointing weights that overflowed."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import NumericalError
from .checkpoint import CHECKPOINT_DIR
from .runtime import Runtime


def all_finite(rt: Runtime, losses: list[torch.Tensor]) -> bool:
    """Whether every micro-batch loss of every rank is finite (one scalar sync per step)."""
    ok = torch.isfinite(torch.stack([loss.detach().float().reshape(()) for loss in losses])).all()
    return rt.all_true(ok)


def snapshot_buffers(method: nn.Module) -> dict[str, torch.Tensor]:
    """The method's buffers (e.g. PAF memories, updated in the forward), to undo a skipped step."""
    return {n: b.detach().clone() for n, b in method.named_buffers()}


@torch.no_grad()
def restore_buffers(method: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    """Put back the buffers of :func:`snapshot_buffers`."""
    for name, b in method.named_buffers():
        b.copy_(buffers[name])


def nonfinite_stop(where: str, last_checkpoint: int | None, run_dir: Path) -> NumericalError:
    """The error of ``train.on_nonfinite=stop``: what is kept and how to go on."""
    kept = (f"the last checkpoint (step {last_checkpoint}) in {run_dir / CHECKPOINT_DIR} is "
            "kept: continue it with resume=true train.on_nonfinite=skip"
            if last_checkpoint is not None else "no checkpoint was written yet")
    return NumericalError(f"{where}; stopped (train.on_nonfinite=stop): {kept}, or start again with a "
                          "lower optim.lr or with optim.clip_grad_norm")


def check_weights_finite(method: nn.Module, rt: Runtime, step: int, last_checkpoint: int | None) -> None:
    """A finite loss can still come with overflowing gradients: never checkpoint what followed."""
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in method.parameters() if p.requires_grad])
    if not rt.all_true(finite.all()):
        kept = "none was saved" if last_checkpoint is None else f"the checkpoint of step {last_checkpoint} is kept"
        raise NumericalError(f"the trained weights are not finite at step {step} (a finite loss with "
                             f"overflowing gradients); no checkpoint written, {kept}: lower optim.lr or set "
                             "optim.clip_grad_norm and start again")


__all__ = ["all_finite", "check_weights_finite", "nonfinite_stop", "restore_buffers", "snapshot_buffers"]
