"""``fixmatch_la``: FixMatch with the logit-adjusted loss of Menon et al. (ICLR 2021) [B].

The form LTSSL papers tabulate is DASO's code (ytaek-oh/daso@3541a6c, ``lib/algorithm/fixmatch.py``
with ``ALGORITHM.LOGIT_ADJUST.APPLY``): only the *labeled* cross-entropy is taken on
z + tau_la * log(pi), pi the labeled class prior; the pseudo-labels, the strong-view loss and the
test predictions use the raw logits z. ``fixmatch_la.adjust=both`` also adjusts the strong-view
loss [R] (our earlier reading; neither DASO nor USB has it). No post-hoc correction is applied to
the predictions (DASO logs a post-hoc figure beside the raw one; ulfine reports the raw one).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..config import Section
from .base import METHODS
from .fixmatch import FixMatch
from .losses import cross_entropy, logit_adjusted, masked_consistency


class FixMatchLAOptions(Section):
    """fixmatch_la: the scale of the log-prior and which training cross-entropies see it."""

    tau_la: float = Field(1.0, ge=0.0, description="scale of log(pi) (DASO: ALGORITHM.LOGIT_ADJUST.TAU)")
    adjust: Literal["labeled", "both"] = Field(
        "labeled", description="labeled: DASO's FixMatch+LA [B]; both: the strong-view loss too [R]")


@METHODS.register("fixmatch_la", options=FixMatchLAOptions)
class FixMatchLA(FixMatch):
    """FixMatch whose labeled CE (and, with ``adjust=both``, strong-view CE) sees z + tau_la * log(pi)."""

    opts: FixMatchLAOptions

    def adjusted(self, logits: torch.Tensor) -> torch.Tensor:
        """z + tau_la * log(pi): the logits inside the adjusted training losses."""
        return logit_adjusted(logits, self.ctx.labeled_prior, self.opts.tau_la)

    def labeled_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(self.adjusted(logits), target)

    def unlabeled_loss(
        self, logits_strong: torch.Tensor, label: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        logits = self.adjusted(logits_strong) if self.opts.adjust == "both" else logits_strong
        return masked_consistency(logits, label, mask)
