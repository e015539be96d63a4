"""Evaluation passes: logits of a method on a set and the metrics of one evaluation
(re-evaluating a finished run is :mod:`ulfine.engine.reevaluate`).

Honest-evaluation policy: the test set is only ever *reported*, never used to choose anything.
Model selection, when asked (``eval.select_on=val``), uses the held-out validation split. The
unlabeled set's ground truth is read here for pseudo-label diagnostics only; it never reaches a
method or the training loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data import ImageSet, eval_batches
from ..errors import ConfigError
from ..jsonable import jsonable
from ..methods import Method
from .assemble import RunParts
from .cached import set_features
from .metrics import classification_metrics, pseudo_label_metrics
from .runtime import Runtime

log = logging.getLogger("ulfine.engine")


@dataclass
class EvalSet:
    """A set to evaluate: images (an ImageSet) or precomputed (N, D) features, plus labels."""

    name: str
    labels: np.ndarray
    images: ImageSet | None = None
    features: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)


def _set_batches(es: EvalSet, parts: RunParts, rt: Runtime, batch_size: int, num_workers: int,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(model input on the device, labels, indices) over this rank's contiguous shard of ``es``:
    cached features as they are, images normalised on the device by the backbone's normaliser."""
    if es.features is not None:
        shard = np.array_split(np.arange(len(es)), rt.world_size)[rt.rank]
        for start in range(0, len(shard), batch_size):
            idx = torch.from_numpy(shard[start : start + batch_size])
            yield es.features[idx].to(rt.device), torch.as_tensor(es.labels[idx.numpy()]), idx
        return
    for x, y, idx in eval_batches(es.images, batch_size, num_workers=num_workers, rank=rt.rank,
                                  world_size=rt.world_size):
        yield parts.normalizer(x.to(rt.device, non_blocking=True)), y.long(), idx.long()


def _gather_in_order(rt: Runtime, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's tensors concatenated and put in index order (duplicates of padding dropped)."""
    parts_all = rt.gather_objects(local)
    merged = {k: torch.cat([p[k] for p in parts_all]) for k in local}
    order = np.unique(merged["index"].numpy(), return_index=True)[1]
    return {k: v[order] for k, v in merged.items()}


@torch.no_grad()
def predict_logits(method: Method, parts: RunParts, es: EvalSet, rt: Runtime, batch_size: int,
                   num_workers: int = 0, branches: dict[str, torch.Tensor] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N,K) float32, labels (N,)) of ``es`` in index order, computed over all ranks.

    When ``branches`` is a dict, it is filled with each extra prediction branch's argmax (N,)
    (e.g. ULFine's ``linear``/``prototype`` logits next to the fused decision).
    """
    was_training = method.training
    method.eval()
    out: dict[str, list[torch.Tensor]] = {"logits": [], "labels": [], "index": []}
    try:
        for inputs, labels, idx in _set_batches(es, parts, rt, batch_size, num_workers):
            with rt.autocast():
                z = method.predict_branches(inputs) if branches is not None else {"decision": method.predict(inputs)}
            for name, z_b in z.items():
                if name != "decision":
                    out.setdefault(f"branch:{name}", []).append(z_b.argmax(1).cpu())
            out["logits"].append(z["decision"].float().cpu())
            out["labels"].append(labels)
            out["index"].append(idx)
    finally:
        method.train(was_training)
    empty = {"logits": torch.empty(0, method.ctx.num_classes), "labels": torch.empty(0, dtype=torch.long),
             "index": torch.empty(0, dtype=torch.long)}
    local = {k: torch.cat(v) if v else empty[k] for k, v in out.items()}
    merged = _gather_in_order(rt, local)
    if branches is not None:
        branches.update({k.split(":", 1)[1]: v for k, v in merged.items() if k.startswith("branch:")})
    return merged["logits"], merged["labels"]


def pseudo_label_subset(labels: np.ndarray, max_images: int | None, seed: int) -> np.ndarray | None:
    """Indices of unlabeled images scored for diagnostics: those with known labels, at most
    ``max_images`` of them (a seeded subset); None when no label is known."""
    known = np.flatnonzero(np.asarray(labels) >= 0)
    if len(known) == 0:
        return None
    if max_images is not None and len(known) > max_images:
        rng = np.random.default_rng([seed, 20250507])
        known = np.sort(rng.choice(known, size=max_images, replace=False))
    return known


@dataclass
class EvalSets:
    """The sets one evaluation looks at."""

    test: EvalSet
    val: EvalSet | None = None
    unlabeled: EvalSet | None = None  # the pseudo-label diagnostic subset (test view)


def build_eval_sets(parts: RunParts, rt: Runtime) -> EvalSets:
    """Test, optional validation and the seeded unlabeled diagnostic subset of a run (their
    cached features in feature mode)."""
    cfg, data = parts.cfg, parts.data

    def make(name: str, images: ImageSet, indices: np.ndarray | None = None) -> EvalSet:
        labels = np.asarray(images.labels)
        if parts.feature_mode:
            return EvalSet(name, labels, features=set_features(parts, images, name, rt, indices=indices))
        return EvalSet(name, labels, images=images)

    test = make("test", data.test)
    val = make("val", data.val) if data.val is not None and len(data.val) else None
    if cfg.eval.select_on == "val" and val is None:
        raise ConfigError("eval.select_on=val needs a validation split; set data.val_per_class > 0")
    unl = None
    if data.unlabeled is not None and len(data.unlabeled):
        sub = pseudo_label_subset(data.unlabeled.labels, cfg.eval.pseudo_label_max, cfg.seed)
        if sub is not None:
            # the subset depends on seed and pseudo_label_max, not only on the split: key its rows
            unl = make("unlabeled_diagnostics", data.unlabeled.subset(sub), indices=sub)
    return EvalSets(test, val, unl)


def evaluate_sets(parts: RunParts, sets: EvalSets, rt: Runtime) -> dict[str, Any]:
    """One evaluation of ``parts.method``: test metrics (top level), val metrics, pseudo-labels
    (the unlabeled ground truth is read here, for diagnostics only), method diagnostics."""
    cfg, method, counts = parts.cfg, parts.method, list(parts.data.labeled_counts)
    bs, nw = cfg.eval.batch_size, cfg.data.num_workers
    branches: dict[str, torch.Tensor] = {}
    z, y = predict_logits(method, parts, sets.test, rt, bs, nw, branches=branches)
    out: dict[str, Any] = classification_metrics(z, y, counts, cfg.eval)
    if branches:  # each extra branch's test accuracy, next to the decision's overall_acc
        out["branch_acc"] = {name: float((pred == y).float().mean()) for name, pred in branches.items()}
    if sets.val is not None:
        zv, yv = predict_logits(method, parts, sets.val, rt, bs, nw)
        out["val"] = classification_metrics(zv, yv, counts, cfg.eval)
    out["pseudo_labels"] = None
    if sets.unlabeled is not None:
        zu, yu = predict_logits(method, parts, sets.unlabeled, rt, bs, nw)
        out["pseudo_labels"] = pseudo_label_metrics(zu, yu, cfg.ssl.tau)
    out["method_diagnostics"] = method.diagnostics()
    return jsonable(out)


__all__ = [
    "EvalSet", "EvalSets", "build_eval_sets", "evaluate_sets", "predict_logits", "pseudo_label_subset",
]
