"""CLIP zero-shot classification from the pieces of this package."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backbone import CLIPBackbone


def zero_shot_logits(backbone: CLIPBackbone, prototypes: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(B,K) logits ``s * normalise(E_v(x)) @ normalise(C)^T`` with CLIP's own scale ``s``."""
    f = F.normalize(backbone.encode_image(images).float(), dim=-1)
    return backbone.logit_scale * f @ F.normalize(prototypes.float(), dim=-1).t()
