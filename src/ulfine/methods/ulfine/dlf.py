"""Dual Logit Fusion (DLF): docs/method.md section 4.2 as pure functions.

[P] logits of the textual prototypes and of a linear-probing classifier are fused to counter the
pseudo-label bias and the classifier bias. [R] the form: the linear branch is logit-adjusted by
the class prior and the prototype branch added with weight ``w_dlf``.
"""

from __future__ import annotations

import torch

from ..losses import logit_adjusted


def class_prior(labeled_counts: torch.Tensor, pseudo_counts: torch.Tensor | None = None) -> torch.Tensor:
    """pi: the labeled class prior, or (option ``labeled+pseudo``) labeled plus confident pseudo-labels [R].

    Counts are clamped to at least 1 per class so that log(pi) stays finite for a class without
    any labeled image (only possible in hand-made splits).
    """
    counts = labeled_counts.float()
    if pseudo_counts is not None:
        counts = counts + pseudo_counts.float().to(counts.device)
    counts = counts.clamp_min(1.0)
    return counts / counts.sum()


def fused_logits(
    linear: torch.Tensor,
    prototype: torch.Tensor,
    prior: torch.Tensor,
    tau_la: float = 1.0,
    w_dlf: float = 1.0,
    fusion: str = "sum",
) -> torch.Tensor:
    """z^f = (z^l - tau_la * log pi) + w_dlf * z^t [R]: the logits of pseudo-labels and predictions.

    ``fusion="mean"`` halves that sum: the same decision, but a softmax no sharper than one
    branch's, so the confidence threshold means what it means for a single classifier [R].

    Computed in float32 whatever the autocast dtype: bf16 logits at CLIP's scale (~100) would
    round the fused scores to steps of 0.5 and blur the pseudo-label confidences.
    """
    fused = logit_adjusted(linear, prior, -tau_la) + w_dlf * prototype.float()
    return fused / 2 if fusion == "mean" else fused


__all__ = ["class_prior", "fused_logits"]
