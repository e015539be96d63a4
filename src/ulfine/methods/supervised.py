"""``supervised``: labeled cross-entropy only; also the classifier shared by the SSL baselines.

The classifier is chosen by the top-level ``head`` key: ``prototype`` (a cosine head initialised
from the text prototypes, as LIFT's; scaled by the backbone's CLIP logit scale, 100 for OpenAI
weights, which is our choice [R]: FineSSL learns a scale from 1/0.07, LIFT and LoFT fix 25, and a
confidence threshold selects different samples at each scale; docs/method.md section 2) or
``linear`` (a zero-initialised linear layer on the image features).

``supervised.loss=la`` trains with the logit-adjusted loss, CE(z + tau_la * log(pi), y) with pi the
labeled prior, as LIFT and LIFT+ run their supervised baseline [B] (LIFT's ``LA_Loss``; the same
loss LoFT, a LIFT fork, uses as its labeled loss, checked against LoFT's code in
tests/golden/test_loft.py); predictions stay the raw z (the balanced scores).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..batch import Batch
from ..config import Section
from ..errors import ConfigError
from ..models.heads import LinearHead, PrototypeHead
from .base import METHODS, Method, MethodContext, MethodOptions, StepOutput
from .losses import cross_entropy, logit_adjusted


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


def xavier_init(head: LinearHead) -> LinearHead:
    """``head`` re-initialised in place as the scratch papers' classifiers (ABC, ACR, CDMAD, CPE,
    DASO, SimPro): Xavier-normal weights, zero bias."""
    nn.init.xavier_normal_(head.fc.weight)
    nn.init.zeros_(head.fc.bias)
    return head


def xavier_head(kind: str, ctx: MethodContext) -> nn.Module:
    """The baselines' classifier (:func:`build_head`); a linear one Xavier-initialised
    (:func:`xavier_init`), not from zero."""
    head = build_head(kind, ctx)
    return xavier_init(head) if isinstance(head, LinearHead) else head


class SupervisedOptions(Section):
    """supervised: plain or logit-adjusted cross-entropy (LIFT's supervised baseline)."""

    loss: Literal["ce", "la"] = Field("ce", description="ce: plain; la: CE(z + tau_la log pi, y) as LIFT [B]")
    tau_la: float = Field(1.0, ge=0.0, description="scale of log(pi) when loss=la (LIFT: 1)")


@METHODS.register("supervised", options=SupervisedOptions)
class Supervised(Method):
    """L = CE(z(x), y) (or its logit-adjusted form) on the labeled batch; unlabeled data is never loaded."""

    uses_unlabeled = False
    prototype_initialises = "the classifier"

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(backbone, ctx, options)
        self.head = build_head(options.head, ctx)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Raw classifier logits z(x) (what the losses see before any adjustment)."""
        return self.head(features)

    def prediction_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits behind test predictions and pseudo-labels (subclasses may adjust them)."""
        return logits

    def supervised_loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CE(z, y), or CE(z + tau_la * log(pi), y) with ``supervised.loss=la``."""
        if isinstance(self.opts, SupervisedOptions) and self.opts.loss == "la":
            return cross_entropy(logit_adjusted(z, self.ctx.labeled_prior, self.opts.tau_la), y)
        return cross_entropy(z, y)

    def training_step(self, batch: Batch) -> StepOutput:
        z = self.logits(self.features(batch.x_l))
        loss = self.supervised_loss(z, batch.y_l)
        acc = (z.detach().argmax(-1) == batch.y_l).float().mean()
        return StepOutput(loss, {"loss_s": loss.detach(), "acc_l": acc})

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.prediction_logits(self.logits(self.features(images)))
