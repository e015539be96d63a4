"""``fixmatch_la_smooth``: FixMatch with a log-prior margin on both losses and smoothed
pseudo-labels [R].

Our earlier reading of FineSSL's paper; **not FineSSL** (``method=finessl`` is FineSSL as its
code does it, Gank0078/FineSSL@76b6f48). Kept, unchanged in behaviour, as the variant that the
earlier studies of this repository measured under the name ``finessl``:

- every cross-entropy of the classifier is taken on z + margin_scale * log(pi), pi the labeled
  class prior (the loss form of logit adjustment, a fixed margin); predictions and
  pseudo-labels come from the raw z;
- the strong-view target is smoothed, (1 - eps) * onehot(y^) + eps / K with
  eps = ``fixmatch_la_smooth.label_smoothing``; the labeled loss keeps hard labels and the
  pseudo-labels are still selected by the unsmoothed confidence >= ``ssl.tau``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..config import Section
from .base import METHODS
from .fixmatch import FixMatch
from .losses import cross_entropy, logit_adjusted, masked_consistency, smoothed_targets


class FixMatchLASmoothOptions(Section):
    """fixmatch_la_smooth: log-prior margin on both losses plus smoothed pseudo-labels [R]."""

    margin_scale: float = Field(1.0, ge=0.0, description="scale of the log-prior margin")
    label_smoothing: float = Field(0.5, ge=0.0, lt=1.0, description="smoothing of pseudo-labels")


@METHODS.register("fixmatch_la_smooth", options=FixMatchLASmoothOptions)
class FixMatchLASmooth(FixMatch):
    """FixMatch + log-prior margin on both losses + smoothed pseudo-labels (not FineSSL)."""

    opts: FixMatchLASmoothOptions

    def margined(self, logits: torch.Tensor) -> torch.Tensor:
        """z + margin_scale * log(pi): the logits inside the training losses."""
        return logit_adjusted(logits, self.ctx.labeled_prior, self.opts.margin_scale)

    def labeled_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(self.margined(logits), target)

    def unlabeled_loss(
        self, logits_strong: torch.Tensor, label: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        smoothing = self.opts.label_smoothing
        target = smoothed_targets(label, self.ctx.num_classes, smoothing)
        return masked_consistency(self.margined(logits_strong), target, mask)


__all__ = ["FixMatchLASmooth", "FixMatchLASmoothOptions"]
