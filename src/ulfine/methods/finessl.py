"""``finessl``: FineSSL's two fixes on top of FixMatch (Gan & Wei, ICML 2024) [B].

Our reading of the recipe (FineSSL's code could not be run here; the schema's two knobs):

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

from .base import METHODS
from .fixmatch import FixMatch
from .losses import cross_entropy, log_prior, masked_consistency, smoothed_targets


@METHODS.register("finessl")
class FineSSL(FixMatch):
    """FixMatch + balanced margin softmax + decoupled label smoothing of pseudo-labels."""

    name = "finessl"

    def margined(self, logits: torch.Tensor) -> torch.Tensor:
        """z + margin_scale * log(pi): the logits inside the training losses."""
        scale = self.cfg.finessl.margin_scale
        return logits.float() + scale * log_prior(self.ctx.labeled_prior, logits)

    def labeled_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(self.margined(logits), target)

    def unlabeled_loss(
        self, logits_strong: torch.Tensor, label: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        target = smoothed_targets(label, self.ctx.num_classes, self.cfg.finessl.label_smoothing)
        return masked_consistency(self.margined(logits_strong), target, mask)
