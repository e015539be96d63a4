"""Classifier heads on joint-space features; separate modules so methods can combine them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """``W f + b``; zero-initialised by default so training starts from uniform logits."""

    def __init__(self, dim: int, num_classes: int, zero_init: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)
        if zero_init:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


def cosine_logits(features: torch.Tensor, prototypes: torch.Tensor,
                  logit_scale: float | torch.Tensor) -> torch.Tensor:
    """``s * normalise(f) @ normalise(C)^T`` in float32, even under autocast: bf16 cosine logits at
    CLIP's scale (~100) are rounded to steps of 0.125-0.5, which blurs softmax confidences and the
    pseudo-label threshold."""
    with torch.autocast(features.device.type, enabled=False):
        f = F.normalize(features.float(), dim=-1)
        c = F.normalize(prototypes.float(), dim=-1)
        scale = logit_scale.float() if isinstance(logit_scale, torch.Tensor) else logit_scale
        return scale * f @ c.t()


class PrototypeHead(nn.Module):
    """Cosine classifier ``s * normalise(f) @ normalise(C)^T`` at a fixed scale (LIFT/LoFT: 25;
    ULFine's branch and the baselines' ``head=prototype``: CLIP's logit scale [R]).

    ``prototypes`` (K,D), e.g. text prototypes, become a Parameter when ``learnable`` and a
    buffer otherwise; ``logit_scale`` is the temperature ``s`` (CLIP's exp(logit_scale)), fixed,
    or a Parameter starting there when ``learnable_scale`` (FineSSL's ``ViT_Head`` keeps its
    scale learnable and unclamped: :class:`LearnableScaleCosineHead`).
    """

    def __init__(self, prototypes: torch.Tensor, logit_scale: float, learnable: bool = True,
                 learnable_scale: bool = False) -> None:
        super().__init__()
        init = prototypes.detach().clone().float()
        if learnable:
            self.prototypes = nn.Parameter(init)
        else:
            self.register_buffer("prototypes", init)
        self.logit_scale: float | nn.Parameter = (
            nn.Parameter(torch.tensor(float(logit_scale))) if learnable_scale else float(logit_scale))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.prototypes, self.logit_scale)


class LearnableScaleCosineHead(nn.Module):
    """Cosine classifier with a learnable temperature: ``s * normalise(f) @ normalise(W)^T``.

    Both ``weight`` (K, D) and the logit scale ``s`` are parameters; ``s`` is stored as itself
    (not as its log) and never clamped, as FineSSL's ``ViT_Head`` keeps it
    (Gank0078/FineSSL@76b6f48, model.py: ``logit_scale = nn.Parameter(ones([]) * (1 / 0.07))``,
    forward ``logit_scale * (x @ weight.t())`` on L2-normalised rows) [B]. Computed in float32
    even under autocast, like :func:`cosine_logits`.
    """

    def __init__(self, weight: torch.Tensor, scale_init: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.logit_scale = nn.Parameter(torch.tensor(float(scale_init)))

    @classmethod
    def random(cls, num_classes: int, dim: int, scale_init: float,
               generator: torch.Generator | None = None) -> "LearnableScaleCosineHead":
        """Rows drawn uniformly from [-1, 1]^D, then scaled to unit norm: FineSSL's random
        initialisation (its default ``rand_init``: ``uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)``)."""
        rows = torch.empty(num_classes, dim).uniform_(-1.0, 1.0, generator=generator)
        return cls(F.normalize(rows, dim=-1), scale_init)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            f = F.normalize(features.float(), dim=-1)
            w = F.normalize(self.weight.float(), dim=-1)
            return self.logit_scale.float() * (f @ w.t())
