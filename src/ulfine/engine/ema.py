"""Exponential moving average of the trainable weights (``train.ema``), used for evaluation.

Only trainable parameters are shadowed, so an EMA costs one copy of what trains (a few MB for
LP/LFT), not a copy of the frozen backbone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class TrainableEMA:
    """shadow <- decay * shadow + (1 - decay) * weight, after every optimiser step."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily swap the EMA weights into the module (e.g. for evaluation)."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n, t in state.items():
            self.shadow[n].copy_(t)


__all__ = ["TrainableEMA"]
