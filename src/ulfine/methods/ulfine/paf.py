"""Prototype Adaptive Fitting (PAF): the equations of docs/method.md section 4.1 as pure functions.

Each function does one equation on plain tensors so that tests can pin it on hand-made values;
:class:`ulfine.methods.ulfine.method.ULFine` wires them together and owns the state (buffers).
Markers: [P] published, [R] this project's reconstruction (see docs/method.md).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ...models.heads import cosine_logits

NO_PSEUDO_LABEL = -1  # memory entry of an unlabeled sample without a confident pseudo-label


def class_feature_sums(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of L2-normalised features and per-class counts, in float32.

    Separate from the EMA so that several processes can all-reduce them before the update and
    keep identical visual prototypes.
    """
    f = F.normalize(features.detach().float(), dim=-1)
    sums = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=num_classes).to(f.dtype)
    return sums, counts


def ema_visual_prototypes(
    visual: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, beta: float
) -> torch.Tensor:
    """c_k^v <- normalise(beta * c_k^v + (1 - beta) * sums_k / counts_k) for classes with counts_k > 0."""
    present = counts > 0
    out = visual.detach().clone().float()
    means = sums[present] / counts[present, None]
    out[present] = F.normalize(beta * out[present] + (1.0 - beta) * means, dim=-1)
    return out.to(visual.dtype)


def update_pseudo_label_memory(
    memory_label: torch.Tensor,
    memory_conf: torch.Tensor,
    idx: torch.Tensor,
    label: torch.Tensor,
    confidence: torch.Tensor,
    mask: torch.Tensor,
) -> None:
    """Record each visited unlabeled sample's latest pseudo-label in the memory, in place [R].

    Semantics (the latest visit wins): a confident sample stores (label, confidence), replacing
    whatever it held (a changed pseudo-label moves the sample's weight to the new class); an
    unconfident sample is cleared to (NO_PSEUDO_LABEL, 0), because P_u counts the samples whose
    *current* pseudo-label is confident. Samples not in the batch keep their entry. If an index
    appears twice in one batch, the last occurrence wins.
    """
    mask = mask.bool()
    memory_label[idx] = torch.where(mask, label.to(memory_label.dtype), NO_PSEUDO_LABEL)
    memory_conf[idx] = torch.where(mask, confidence.to(memory_conf.dtype), 0.0)


def pseudo_label_distribution(
    memory_label: torch.Tensor,
    memory_conf: torch.Tensor,
    num_classes: int,
    stat: Literal["confidence_sum", "count"] = "confidence_sum",
) -> torch.Tensor:
    """P_u: the confidence-aware pseudo-label distribution over the whole unlabeled set [P; form R].

    ``confidence_sum``: P_u^k = sum of the stored confidences of samples whose memory label is k;
    ``count``: the number of such samples. Returns (K,) float, unnormalised.
    """
    held = memory_label != NO_PSEUDO_LABEL
    labels = memory_label[held].long()
    if stat == "count":
        weights = torch.ones_like(memory_conf[held], dtype=torch.float32)
    elif stat == "confidence_sum":
        weights = memory_conf[held].float()
    else:  # pragma: no cover - the config schema restricts the choices
        raise ValueError(f"unknown P_u statistic {stat!r}")
    return torch.zeros(num_classes, device=memory_conf.device).index_add_(0, labels, weights)


def fitting_momentum(pu: torch.Tensor, mu_paf: float) -> torch.Tensor:
    """alpha_k = mu_paf * P_u^k / max_i P_u^i [P]; all zero while nothing is confident [R]."""
    top = (pu.max() if pu.numel() else pu.new_zeros(())).float()
    # a select instead of `if top <= 0`: no host-device synchronisation per optimiser step
    return torch.where(top > 0, mu_paf * pu.float() / top.clamp_min(torch.finfo(torch.float32).tiny),
                       torch.zeros((), device=pu.device))


def momentum_fit(
    text: torch.Tensor, visual: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """c_k^t <- normalise((1 - alpha_k) c_k^t + alpha_k c_k^v) [P: update; R: re-normalisation].

    ``text`` rows are normalised first, so a prototype that gradient steps lengthened does not
    outweigh its visual target. Returns a new (K, D) tensor.
    """
    a = alpha.to(text.dtype)[:, None]
    moved = (1.0 - a) * F.normalize(text.detach(), dim=-1) + a * visual.to(text.dtype)
    return F.normalize(moved, dim=-1)


def without_modality_gap(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """normalise(c_k^v - mean_j c_j^v + mean_j t_j) [R, option ``paf_gap``].

    Why: CLIP's image features sit in a narrow cone away from its text features (the modality
    gap, Liang et al. 2022): every visual prototype is much closer to every image than any text
    prototype is. Fitting some prototypes toward C_v moves them into that cone, so those classes
    (the ones with the most confident pseudo-labels, the head) win on every image. Shifting C_v
    by the difference of the two modalities' class-mean directions keeps what distinguishes the
    classes visually and drops what all images share. Means are over classes (balanced).
    """
    shift = text.float().mean(0) - visual.float().mean(0)
    return F.normalize(visual.float() + shift, dim=-1).to(visual.dtype)


def orthogonality_loss(prototypes: torch.Tensor) -> torch.Tensor:
    """L_orth = mean over ordered pairs j != k of (c^_j . c^_k)^2 on normalised prototypes [P: exists; R: form].

    Differentiable (gradients flow through the normalisation); 0 for a single class.
    """
    c = F.normalize(prototypes.float(), dim=-1)
    k = c.shape[0]
    if k < 2:
        return c.sum() * 0.0
    gram = c @ c.t()
    off = gram - torch.diag_embed(torch.diagonal(gram))
    return off.pow(2).sum() / (k * (k - 1))


#: z^t(x) = s * f^(x) . C^_t^T, the CLIP-style cosine logits [R: s = the model's logit scale];
#: the same function PrototypeHead runs (float32 under autocast)
prototype_logits = cosine_logits


def angles_degrees(prototypes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) between each prototype and its text anchor: how far PAF moved it."""
    cos = (F.normalize(prototypes.float(), dim=-1) * F.normalize(anchors.float(), dim=-1)).sum(-1)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


__all__ = [
    "NO_PSEUDO_LABEL",
    "angles_degrees",
    "class_feature_sums",
    "ema_visual_prototypes",
    "fitting_momentum",
    "momentum_fit",
    "orthogonality_loss",
    "prototype_logits",
    "pseudo_label_distribution",
    "update_pseudo_label_memory",
    "without_modality_gap",
]
