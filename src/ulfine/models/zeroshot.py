"""CLIP zero-shot classification from the pieces of this package."""

from __future__ import annotations

import torch

from .backbone import CLIPBackbone
from .heads import PrototypeHead


def zero_shot_logits(backbone: CLIPBackbone, prototypes: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(B,K) logits ``s * normalise(E_v(x)) @ normalise(C)^T`` with CLIP's own scale ``s``."""
    head = PrototypeHead(prototypes, backbone.logit_scale, learnable=False)
    return head(backbone.encode_image(images))
