"""``zeroshot``: CLIP's zero-shot classifier, z = s * normalise(f) . T^T with T the text prototypes.

Nothing trains (``trains = False``): the engine evaluates it directly, without an optimiser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .base import METHODS, Method, MethodContext, SSLBatch, StepOutput

if TYPE_CHECKING:
    from ..config import Config


@METHODS.register("zeroshot")
class ZeroShot(Method):
    """Prediction from the text prototypes times the backbone's logit scale."""

    name = "zeroshot"
    uses_unlabeled = False
    trains = False

    def __init__(self, cfg: "Config", backbone: nn.Module, ctx: MethodContext) -> None:
        super().__init__(cfg, backbone, ctx)
        from ..models.heads import PrototypeHead

        self.head = PrototypeHead(ctx.text_prototypes, ctx.logit_scale, learnable=False)

    def training_step(self, batch: SSLBatch) -> StepOutput:
        raise RuntimeError("zeroshot does not train")

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
