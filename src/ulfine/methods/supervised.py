"""``supervised``: labeled cross-entropy only; also the classifier shared by the SSL baselines.

The classifier is chosen by the top-level ``head`` key: ``prototype`` (a cosine head initialised
from the text prototypes and scaled by the backbone's CLIP logit scale, as in FineSSL/LIFT [B]) or
``linear`` (a zero-initialised linear layer on the image features).
"""

from __future__ import annotations

import torch
from torch import nn

from ..batch import Batch
from ..errors import ConfigError
from ..models.heads import LinearHead, PrototypeHead
from .base import METHODS, Method, MethodContext, MethodOptions, StepOutput
from .losses import cross_entropy


def build_head(kind: str, ctx: MethodContext) -> nn.Module:
    """The baselines' classifier: ``prototype`` (text-initialised cosine) or ``linear``."""
    if kind == "prototype":
        if ctx.text_prototypes is None:
            raise ConfigError("head=prototype needs text prototypes and this backbone has no text "
                              "tower; use head=linear")
        return PrototypeHead(ctx.text_prototypes, ctx.logit_scale, learnable=True)
    if kind == "linear":
        return LinearHead(ctx.feature_dim, ctx.num_classes)
    raise ValueError(f"unknown head {kind!r}")


@METHODS.register("supervised")
class Supervised(Method):
    """L = CE(z(x), y) on the labeled batch; unlabeled data is never loaded."""

    uses_unlabeled = False

    @classmethod
    def text_need(cls, head: str) -> str | None:
        if head == "prototype":
            return "head=prototype initialises the classifier from text prototypes; use head=linear"
        return None

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(backbone, ctx, options)
        self.head = build_head(options.head, ctx)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Raw classifier logits z(x) (what the losses see before any adjustment)."""
        return self.head(features)

    def prediction_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits behind test predictions and pseudo-labels (subclasses may adjust them)."""
        return logits

    def training_step(self, batch: Batch) -> StepOutput:
        z = self.logits(self.features(batch.x_l))
        loss = cross_entropy(z, batch.y_l)
        acc = (z.detach().argmax(-1) == batch.y_l).float().mean()
        return StepOutput(loss, {"loss_s": loss.detach(), "acc_l": acc})

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.prediction_logits(self.logits(self.features(images)))
