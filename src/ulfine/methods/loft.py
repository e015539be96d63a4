"""``loft``: LoFT, long-tailed SSL by parameter-efficient fine-tuning (Huang, Chen, Su; arXiv
2509.09926) [B], read from its public code (github.com/games-liker/LoFT, a LIFT fork).

Every unlabeled sample falls in one of three confidence regimes of the weak view's softmax
q = softmax(z(a(u))) (no gradient), by its maximum c = max q:

- **hard** (c >= ``ssl.tau``): cross-entropy of the strong view against argmax q (FixMatch's L_u);
- **soft** (``loft.tau_ood`` < c < ``ssl.tau``): cross-entropy of the strong view against the whole
  distribution q, weighted by ``loft.lambda_soft``;
- **out-of-distribution** (c <= ``loft.tau_ood``): no loss at all.

The labeled loss is logit-adjusted, CE(z + tau_la * log pi, y) with pi the labeled prior; the
unlabeled terms and the pseudo-labels use the raw logits z, which are also the prediction. The
classifier is the shared ``head``; its cosine scale is LoFT's own (``loft.head_scale``).
docs/method.md section 2.1 says which line of the code each choice follows and where we chose.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..config import Section
from ..errors import ConfigError
from ..models.heads import PrototypeHead
from .base import METHODS, MethodContext, MethodOptions
from .fixmatch import FixMatch
from .losses import cross_entropy, logit_adjusted, masked_consistency


class LoFTOptions(Section):
    """loft: the logit adjustment of L_s, the soft term and the out-of-distribution floor [B].

    The hard threshold and the hard term's weight are the shared ``ssl.tau`` and ``ssl.lambda_u``:
    LoFT's published script (``train_ssl.sh``) runs at threshold 0.6, weight 3 and mu 7, which
    ``configs/recipes/published.yaml`` holds (``scripts/reproduce/main_results.py`` applies it).
    """

    tau_la: float = Field(1.0, ge=0.0, description="scale of log(pi) in the labeled loss")
    tau_ood: float = Field(0.3, ge=0.0, lt=1.0,
                           description="confidence at or below which an unlabeled sample is ignored")
    lambda_soft: float = Field(1.0, ge=0.0, description="weight of the soft-label term")
    head_scale: float | None = Field(
        25.0, gt=0.0, description="cosine scale of head=prototype (null: the backbone's logit scale)")


@torch.no_grad()
def confidence_regimes(
    logits_weak: torch.Tensor, tau: float, tau_ood: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, soft mask, out-of-distribution mask) of the weak view, in float32, without gradient.

    soft = tau_ood < max q < tau (between the two thresholds); ood = max q <= tau_ood. The hard
    mask (max q >= tau) is FixMatch's; the three masks partition the batch.
    """
    q = torch.softmax(logits_weak.detach().float(), dim=-1)
    confidence = q.max(dim=-1).values
    ood = confidence <= tau_ood
    soft = (confidence < tau) & ~ood
    return q, soft.float(), ood.float()


@METHODS.register("loft", options=LoFTOptions)
class LoFT(FixMatch):
    """FixMatch with a logit-adjusted L_s, a soft term for mid-confidence samples and an OOD floor."""

    opts: LoFTOptions

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        own = options.own
        if own.tau_ood >= options.ssl.tau:
            raise ConfigError(f"loft.tau_ood ({own.tau_ood}) must be below ssl.tau ({options.ssl.tau})")
        super().__init__(backbone, ctx, options)
        if options.head == "prototype" and own.head_scale is not None:
            self.head = PrototypeHead(ctx.text_prototypes, own.head_scale, learnable=True)

    def labeled_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L_s = CE(z + tau_la * log(pi), y): the loss form of logit adjustment."""
        adjusted = logit_adjusted(logits, self.ctx.labeled_prior, self.opts.tau_la)
        return cross_entropy(adjusted, target)

    def unlabeled_terms(
        self, logits_strong: torch.Tensor, logits_weak: torch.Tensor, label: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """lambda_u * L_hard + lambda_soft * L_soft; both are means over *all* unlabeled samples."""
        own = self.opts
        q, soft, ood = confidence_regimes(logits_weak, self.ssl.tau, own.tau_ood)
        loss_hard = masked_consistency(logits_strong, label, mask)
        loss_soft = masked_consistency(logits_strong, q, soft)
        loss = self.ssl.lambda_u * loss_hard + own.lambda_soft * loss_soft
        logs = {"loss_u": loss_hard.detach(), "loss_u_soft": loss_soft.detach(),
                "soft_rate": soft.mean(), "ood_rate": ood.mean()}
        return loss, logs


__all__ = ["LoFT", "LoFTOptions", "confidence_regimes"]
