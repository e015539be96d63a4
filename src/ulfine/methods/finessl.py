"""``finessl``: FineSSL's two fixes on top of FixMatch (Gan & Wei, ICML 2024) [B].

Our reading of the recipe (FineSSL's code could not be run here; the method's two options):

- **Balanced margin softmax** (against the aggregated, head-class bias): every cross-entropy of
  the classifier is taken on z + margin_scale * log(pi), pi the labeled class prior, so head
  classes must win by a margin; predictions and pseudo-labels come from the raw z.
- **Decoupled label smoothing** (against over-confident pseudo-labels): the pseudo-label target
  of the strong view is smoothed, (1 - eps) * onehot(y^) + eps / K with eps =
  ``finessl.label_smoothing``, while the labeled loss keeps hard labels; the smoothing is
  decoupled from pseudo-label *selection*, which still uses the unsmoothed confidence >= tau.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..config import Section
from .base import METHODS
from .fixmatch import FixMatch
from .losses import cross_entropy, logit_adjusted, masked_consistency, smoothed_targets


class FineSSLOptions(Section):
    """finessl: balanced margin softmax plus decoupled label smoothing [B]."""

    margin_scale: float = Field(1.0, ge=0.0, description="scale of the log-prior margin")
    label_smoothing: float = Field(0.5, ge=0.0, lt=1.0, description="smoothing of pseudo-labels")


@METHODS.register("finessl", options=FineSSLOptions)
class FineSSL(FixMatch):
    """FixMatch + balanced margin softmax + decoupled label smoothing of pseudo-labels."""

    def margined(self, logits: torch.Tensor) -> torch.Tensor:
        """z + margin_scale * log(pi): the logits inside the training losses."""
        return logit_adjusted(logits, self.ctx.labeled_prior, self.options.own.margin_scale)

    def labeled_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(self.margined(logits), target)

    def unlabeled_loss(
        self, logits_strong: torch.Tensor, label: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        smoothing = self.options.own.label_smoothing
        target = smoothed_targets(label, self.ctx.num_classes, smoothing)
        return masked_consistency(self.margined(logits_strong), target, mask)
