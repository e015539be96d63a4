"""Evaluation metrics as pure functions of (logits or predictions, ground truth, labeled counts).

Kept free of models and devices so that each number can be checked by hand in a test. Values that
are undefined (a class without test images, a class nobody predicted) are ``None`` in the output,
never NaN, so that every metrics file is valid JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..config import EvalConfig

GROUPS = ("head", "medium", "tail")
#: the confusion matrix is recorded for at most this many classes (K x K numbers per evaluation)
CONFUSION_MAX_CLASSES = 30


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def class_groups(labeled_counts: Sequence[int], cfg: EvalConfig) -> tuple[list[str], dict[str, Any]]:
    """Assign every class to head / medium / tail; returns (group per class, the rule as a dict).

    ``fraction`` rule (default): classes ranked by labeled count (descending, ties by class index);
    the first round(head_fraction * K) are head, the last round(tail_fraction * K) tail, the rest
    medium. ``count`` rule: head if N_k > head_min_count, tail if N_k < tail_max_count, else medium.
    """
    counts = np.asarray(labeled_counts, dtype=np.int64)
    k = len(counts)
    groups = ["medium"] * k
    if cfg.group_rule == "fraction":
        order = sorted(range(k), key=lambda c: (-counts[c], c))
        n_head = int(round(cfg.head_fraction * k))
        n_tail = min(int(round(cfg.tail_fraction * k)), k - n_head)
        for c in order[:n_head]:
            groups[c] = "head"
        for c in order[k - n_tail :]:
            groups[c] = "tail"
        rule: dict[str, Any] = {
            "rule": "fraction",
            "text": f"classes ranked by labeled count; first {cfg.head_fraction:.0%} head, last "
            f"{cfg.tail_fraction:.0%} tail, rest medium",
            "head_fraction": cfg.head_fraction,
            "tail_fraction": cfg.tail_fraction,
        }
    else:
        for c in range(k):
            if counts[c] > cfg.head_min_count:
                groups[c] = "head"
            elif counts[c] < cfg.tail_max_count:
                groups[c] = "tail"
        rule = {
            "rule": "count",
            "text": f"head if N_k > {cfg.head_min_count}, tail if N_k < {cfg.tail_max_count}, "
            "else medium",
            "head_min_count": cfg.head_min_count,
            "tail_max_count": cfg.tail_max_count,
        }
    rule["classes"] = {g: [c for c in range(k) if groups[c] == g] for g in GROUPS}
    return groups, rule


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> dict[str, list[Any]]:
    """Per equal-width confidence bin (lo, hi]: image count, accuracy and mean confidence (None
    for an empty bin); confidence 0 goes to the first bin. The reliability diagram and the ECE."""
    conf = confidence.double().flatten()
    hit = correct.double().flatten()
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    out: dict[str, list[Any]] = {"count": [], "accuracy": [], "confidence": []}
    for b in range(bins):
        sel = idx == b
        m = int(sel.sum())
        out["count"].append(m)
        out["accuracy"].append(float(hit[sel].mean()) if m else None)
        out["confidence"].append(float(conf[sel].mean()) if m else None)
    return out


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins (lo, hi]: sum_b |B_b|/N * |acc_b - conf_b|."""
    n = confidence.numel()
    if n == 0:
        return 0.0
    r = reliability_bins(confidence, correct, bins)
    return float(sum(m / n * abs(a - c) for m, a, c in zip(r["count"], r["accuracy"], r["confidence"]) if m))


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, k: int) -> list[list[int]]:
    """(K, K) counts, rows the true class, columns the predicted class."""
    flat = torch.bincount(target.long() * k + pred.long(), minlength=k * k)
    return flat.view(k, k).tolist()


def geometric_mean_recall(per_class: Sequence[float | None]) -> float | None:
    """(prod_c r_c)^(1/K) over the classes with test images: the figure ABC, DASO and CDMAD tabulate
    beside accuracy; 0 as soon as one class is never recognised."""
    defined = [r for r in per_class if r is not None]
    if not defined:
        return None
    if min(defined) <= 0.0:
        return 0.0
    return float(np.exp(np.mean(np.log(defined))))


def classification_metrics(
    logits: torch.Tensor,
    target: torch.Tensor,
    labeled_counts: Sequence[int],
    cfg: EvalConfig,
) -> dict[str, Any]:
    """overall_acc, balanced_acc, per_class_acc, group_acc, group_rule and ECE of one test pass.

    balanced_acc is the mean of per-class accuracies over classes with test images; a group's
    accuracy is the mean per-class accuracy of its classes (equal to the group's sample accuracy
    on a balanced test set).
    """
    logits = logits.float().cpu()
    target = target.long().cpu()
    k = len(labeled_counts)
    probs = torch.softmax(logits, dim=-1)
    conf, pred = probs.max(dim=-1)
    correct = pred == target
    per_class: list[float | None] = []
    for c in range(k):
        sel = target == c
        per_class.append(_ratio(float(correct[sel].sum()), float(sel.sum())))
    defined = [a for a in per_class if a is not None]
    groups, rule = class_groups(labeled_counts, cfg)
    group_acc: dict[str, float | None] = {}
    for g in GROUPS:
        accs = [per_class[c] for c in range(k) if groups[c] == g and per_class[c] is not None]
        group_acc[g] = float(np.mean(accs)) if accs else None
    return {
        "num_images": int(target.numel()),
        "overall_acc": _ratio(float(correct.sum()), float(target.numel())),
        "balanced_acc": float(np.mean(defined)) if defined else None,
        "geometric_mean_recall": geometric_mean_recall(per_class),
        "group_acc": group_acc,
        "group_rule": rule,
        "per_class_acc": per_class,
        "ece": expected_calibration_error(conf, correct, cfg.ece_bins),
        "ece_bins": cfg.ece_bins,
        "reliability": reliability_bins(conf, correct, cfg.ece_bins),
        "confusion_matrix": confusion_matrix(pred, target, k) if k <= CONFUSION_MAX_CLASSES else None,
        "prediction_counts": torch.bincount(pred, minlength=k).tolist(),
    }


def confidence_histogram(
    confidence: torch.Tensor, correct: torch.Tensor, tau: float, bins: int = 10
) -> dict[str, list]:
    """Counts of correct and of wrong confident predictions in ``bins`` equal bins over [tau, 1].

    Why: the over-confidence of false pseudo-labels is a shape (where the wrong ones sit), not
    only a mean. Bin b holds [e_b, e_b+1), the last one also 1.0; the caller passes only the
    confident predictions (confidence >= tau, compared in the logits' precision), and each is
    binned by its index, so the counts always add up to the confident count.
    """
    conf = confidence.double().flatten()
    width = (1.0 - tau) / bins
    # tau = 1 leaves no width: every confident prediction is then exactly 1.0, the last bin
    scaled = (conf - tau) / width if width > 0 else torch.full_like(conf, bins - 1)
    idx = scaled.floor().long().clamp(0, bins - 1)  # clamp: a float32 confidence equal to tau
    hit = correct.flatten().bool()
    return {
        "edges": [tau + b * width for b in range(bins)] + [1.0],
        "correct": torch.bincount(idx[hit], minlength=bins).tolist(),
        "wrong": torch.bincount(idx[~hit], minlength=bins).tolist(),
    }


def _mean(values: torch.Tensor) -> float | None:
    return float(values.double().mean()) if values.numel() else None


def pseudo_label_metrics(logits: torch.Tensor, target: torch.Tensor, tau: float, bins: int = 10) -> dict[str, Any]:
    """Quality of the confident (max softmax >= tau) predictions on unlabeled images.

    DIAGNOSTICS ONLY: uses the unlabeled ground truth, which training never sees. Per class k:
    precision = correct confident k-predictions / confident k-predictions; recall = correct
    confident k-predictions / images of class k; mask_rate = confident images of class k / images
    of class k. Overall: mask_rate, precision (accuracy of confident pseudo-labels), recall
    (confident and correct / all), the accuracy of all predictions, and the over-confidence of
    the wrong ones: ``false_confident`` (count of confident wrong predictions), the mean
    confidence of the confident wrong (``false_confidence_mean``) and right
    (``true_confidence_mean``) ones, and their :func:`confidence_histogram`.
    """
    logits = logits.float().cpu()
    target = target.long().cpu()
    k = logits.shape[1]
    conf, pred = torch.softmax(logits, dim=-1).max(dim=-1)
    mask = conf >= tau
    correct = pred == target
    good = mask & correct
    precision, recall, mask_rate = [], [], []
    for c in range(k):
        is_c = target == c
        chosen = mask & (pred == c)
        precision.append(_ratio(float((good & (pred == c)).sum()), float(chosen.sum())))
        recall.append(_ratio(float((good & is_c).sum()), float(is_c.sum())))
        mask_rate.append(_ratio(float((mask & is_c).sum()), float(is_c.sum())))
    n = target.numel()
    return {
        "num_images": int(n),
        "tau": tau,
        "mask_rate": _ratio(float(mask.sum()), n),
        "precision": _ratio(float(good.sum()), float(mask.sum())),
        "recall": _ratio(float(good.sum()), n),
        "accuracy": _ratio(float(correct.sum()), n),
        "per_class": {"precision": precision, "recall": recall, "mask_rate": mask_rate},
        "confident_counts": torch.bincount(pred[mask], minlength=k).tolist(),
        "false_confident": int((mask & ~correct).sum()),
        "false_confidence_mean": _mean(conf[mask & ~correct]),
        "true_confidence_mean": _mean(conf[good]),
        "confidence_histogram": confidence_histogram(conf[mask], correct[mask], tau, bins),
    }


def mean_of_last(history: list[dict[str, Any]], k: int) -> dict[str, Any] | None:
    """Mean of overall_acc, balanced_acc and group_acc over the last ``k`` evaluations."""
    last = history[-k:]
    if not last:
        return None

    def avg(values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "k": len(last),
        "steps": [h.get("step") for h in last],
        "overall_acc": avg([h["overall_acc"] for h in last]),
        "balanced_acc": avg([h["balanced_acc"] for h in last]),
        "group_acc": {g: avg([h["group_acc"][g] for h in last]) for g in GROUPS},
    }


__all__ = [
    "GROUPS",
    "CONFUSION_MAX_CLASSES",
    "class_groups",
    "classification_metrics",
    "confidence_histogram",
    "confusion_matrix",
    "expected_calibration_error",
    "geometric_mean_recall",
    "mean_of_last",
    "pseudo_label_metrics",
    "reliability_bins",
]
