"""``zeroshot``: CLIP's zero-shot classifier, z = s * normalise(f) . T^T with T the text prototypes.

Nothing trains (``trains = False``): the engine takes its evaluate-only path, without an optimiser.
"""

from __future__ import annotations

import torch
from torch import nn

from ..batch import Batch
from ..models.heads import PrototypeHead
from .base import METHODS, Method, MethodContext, MethodOptions, StepOutput


@METHODS.register("zeroshot")
class ZeroShot(Method):
    """Prediction from the text prototypes times the backbone's logit scale."""

    uses_unlabeled = False
    trains = False

    @classmethod
    def text_need(cls, head: str) -> str | None:
        return ("zero-shot classifies with text prototypes; train a linear head instead "
                "(method=supervised|fixmatch|acr head=linear)")

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(backbone, ctx, options)
        self.head = PrototypeHead(ctx.text_prototypes, ctx.logit_scale, learnable=False)

    def training_step(self, batch: Batch) -> StepOutput:
        raise RuntimeError("zeroshot does not train")

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
