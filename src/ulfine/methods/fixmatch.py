"""``fixmatch`` [B] (docs/method.md section 3).

L = CE(z(x), y) + lambda_u * mean_i(mask_i * CE(z(A(u_i)), y^_i)), with q = softmax(z(a(u)))
computed without gradient, y^ = argmax q and mask = [max q >= tau] (tau = 0.7 for CLIP [B]).
Subclasses change only the labeled loss, the unlabeled loss (or, through ``unlabeled_terms``,
the whole weighted unlabeled part) or the prediction logits.
"""

from __future__ import annotations

import torch

from ..batch import Batch
from .base import METHODS, PseudoLabels, StepOutput
from .losses import cross_entropy, masked_consistency, pseudo_label
from .supervised import Supervised


@METHODS.register("fixmatch")
class FixMatch(Supervised):
    """FixMatch on the configured classifier (``head``)."""

    uses_unlabeled = True

    def labeled_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L_s: plain cross-entropy."""
        return cross_entropy(logits, target)

    def unlabeled_loss(
        self, logits_strong: torch.Tensor, label: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """L_u: masked cross-entropy against the hard pseudo-labels."""
        return masked_consistency(logits_strong, label, mask)

    def unlabeled_terms(
        self, logits_strong: torch.Tensor, logits_weak: torch.Tensor, label: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted unlabeled part of the loss and its logs: lambda_u * L_u.

        Why a hook: a method whose unlabeled loss needs more than the hard pseudo-labels (LoFT's
        soft term reads the weak-view distribution) changes this and keeps the rest of the step.
        """
        loss_u = self.unlabeled_loss(logits_strong, label, mask)
        return self.ssl.lambda_u * loss_u, {"loss_u": loss_u.detach()}

    def training_step(self, batch: Batch) -> StepOutput:
        if batch.u_w is None:
            raise RuntimeError(f"{self.name} needs unlabeled batches")
        f_l, f_w, f_s = self.ssl_features(batch)
        z_l = self.logits(f_l)
        with torch.no_grad():
            z_w = self.prediction_logits(self.logits(f_w))
        label, confidence, mask = pseudo_label(z_w, self.ssl.tau)
        loss_s = self.labeled_loss(z_l, batch.y_l)
        weighted_u, logs_u = self.unlabeled_terms(self.logits(f_s), z_w, label, mask)
        loss = loss_s + weighted_u
        acc = (self.prediction_logits(z_l.detach()).argmax(-1) == batch.y_l).float().mean()
        pseudo = PseudoLabels.of_batch(batch, label, confidence, mask.bool())
        logs = {"loss_s": loss_s.detach(), **logs_u, "acc_l": acc}
        return StepOutput(loss, logs, pseudo)
