"""``fixmatch_la``: FixMatch with the logit-adjusted loss of Menon et al. (ICLR 2021) [B].

Which form: the *loss* form (Menon et al., eq. 10), not the post-hoc one. Every cross-entropy,
labeled and unlabeled (strong view), is taken on z + tau_la * log(pi), with pi the labeled class
prior. The network's raw logits z are then the balanced scores, so test predictions *and*
pseudo-labels come from z itself (= the adjusted training logits minus tau_la * log(pi)); no
second, post-hoc correction is applied (that would subtract the prior twice).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..config import Section
from .base import METHODS
from .fixmatch import FixMatch
from .losses import cross_entropy, logit_adjusted, masked_consistency


class FixMatchLAOptions(Section):
    """fixmatch_la: the scale of the log-prior in every training cross-entropy."""

    tau_la: float = Field(1.0, ge=0.0)


@METHODS.register("fixmatch_la", options=FixMatchLAOptions)
class FixMatchLA(FixMatch):
    """FixMatch whose CE terms see z + tau_la * log(pi)."""

    def adjusted(self, logits: torch.Tensor) -> torch.Tensor:
        """z + tau_la * log(pi): the logits inside the training losses."""
        return logit_adjusted(logits, self.ctx.labeled_prior, self.options.own.tau_la)

    def labeled_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(self.adjusted(logits), target)

    def unlabeled_loss(
        self, logits_strong: torch.Tensor, label: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        return masked_consistency(self.adjusted(logits_strong), label, mask)
