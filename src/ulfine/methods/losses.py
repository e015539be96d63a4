"""Loss pieces shared by the methods, as pure functions on logits (testable by hand).

Every function works in float32 whatever the autocast dtype of the logits, so that mixed
precision changes the forward pass, not the arithmetic of the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_prior(prior: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """log(pi) as float32 on ``like``'s device; empty classes are clamped so log stays finite."""
    prior = prior.to(like.device, torch.float32).clamp_min(1e-12)
    return torch.log(prior / prior.sum())


def logit_adjusted(logits: torch.Tensor, prior: torch.Tensor, scale: float) -> torch.Tensor:
    """z + scale * log(pi) in float32: the one logit adjustment of Menon et al. (ICLR 2021).

    A positive ``scale`` is the loss form (FixMatch-LA's tau, FineSSL's balanced margin); a
    negative one the post-hoc correction (ULFine's DLF subtracts tau_la * log(pi)).
    """
    return logits.float() + scale * log_prior(prior, logits)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean hard-label cross-entropy in float32."""
    return F.cross_entropy(logits.float(), target)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy against a probability vector: -sum_k t_k log softmax(z)_k."""
    return -(target.float() * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


@torch.no_grad()
def pseudo_label(logits_weak: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch pseudo-labels [B]: q = softmax(z(a(u))); (argmax q, max q, mask = max q >= tau).

    Runs without gradient: no gradient ever flows through a pseudo-label.
    """
    probs = torch.softmax(logits_weak.detach().float(), dim=-1)
    confidence, label = probs.max(dim=-1)
    return label, confidence, (confidence >= tau).float()


def masked_consistency(
    logits_strong: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """L_u = mean_i(mask_i * CE(z(A(u_i)), target_i)); the mean is over *all* unlabeled samples.

    ``target`` is either hard labels (N,) or probability vectors (N, K).
    """
    if target.ndim == 1:
        per_sample = F.cross_entropy(logits_strong.float(), target, reduction="none")
    else:
        per_sample = soft_cross_entropy(logits_strong, target)
    return (per_sample * mask.float()).mean()


def smoothed_targets(label: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Label smoothing of hard labels: (1 - eps) * onehot(y) + eps / K."""
    onehot = F.one_hot(label, num_classes).float()
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def off_target_smoothed_targets(label: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Label smoothing that spreads ``smoothing`` over the *other* classes only:
    (1 - eps) on y, eps / (K - 1) on each k != y (FineSSL's pseudo-label targets of its auxiliary
    head, Gank0078/FineSSL@76b6f48 trainer.py), unlike :func:`smoothed_targets`' eps / K everywhere."""
    onehot = F.one_hot(label, num_classes).float()
    return onehot * (1.0 - smoothing) + (1.0 - onehot) * (smoothing / max(num_classes - 1, 1))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the samples where ``mask`` holds; 0 when none does (no device
    synchronisation: the count is clamped, not tested)."""
    m = mask.float()
    return (values.float() * m).sum() / m.sum().clamp_min(1.0)


def moved_distribution(estimate: torch.Tensor, counts: torch.Tensor, total: torch.Tensor,
                       momentum: float) -> torch.Tensor:
    """m * estimate + (1 - m) * counts / total: a class-distribution estimate moved towards the
    frequencies of ``counts`` (``total`` their sum, broadcastable); unchanged where ``total`` is 0
    (no device synchronisation: a ``where``, not a test). ACR's and CPE's unlabeled estimates."""
    moved = momentum * estimate + (1.0 - momentum) * counts / total.clamp_min(1.0)
    return torch.where(total > 0, moved, estimate)


__all__ = [
    "cross_entropy",
    "log_prior",
    "logit_adjusted",
    "masked_consistency",
    "masked_mean",
    "moved_distribution",
    "off_target_smoothed_targets",
    "pseudo_label",
    "smoothed_targets",
    "soft_cross_entropy",
]
