"""Evaluation passes: logits of a method on a set, the metrics of one evaluation, and reloading a
finished run (:func:`evaluate_run`).

Honest-evaluation policy: the test set is only ever *reported*, never used to choose anything.
Model selection, when asked (``eval.select_on=val``), uses the held-out validation split. The
unlabeled set's ground truth is read here for pseudo-label diagnostics only; it never reaches a
method or the training loop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .metrics import classification_metrics, pseudo_label_metrics

if TYPE_CHECKING:
    from ..config import Config
    from ..methods.base import Method
    from .build import RunParts
    from .runtime import Runtime

log = logging.getLogger("ulfine.engine")


@dataclass
class EvalSet:
    """A set to evaluate: images (an ImageSet) or precomputed (N, D) features, plus labels."""

    name: str
    labels: np.ndarray
    images: Any = None  # ulfine.data.ImageSet
    features: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)


def to_device_images(x: Any, device: torch.device, normalizer: torch.nn.Module) -> torch.Tensor:
    """Host uint8 batch (B,3,h,w) or (B,h,w,3) -> normalised float (B,3,S,S) on ``device``."""
    t = torch.as_tensor(x)
    if t.ndim == 4 and t.shape[1] != 3 and t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    return normalizer(t.to(device, non_blocking=True))


@torch.no_grad()
def predict_logits(method: "Method", parts: "RunParts", es: EvalSet, rt: "Runtime", batch_size: int,
                   num_workers: int = 0, branches: dict[str, torch.Tensor] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N,K) float32, labels (N,)) of ``es`` in index order, computed over all ranks.

    When ``branches`` is a dict, it is filled with each extra prediction branch's argmax (N,)
    (e.g. ULFine's ``linear``/``prototype`` logits next to the fused decision).
    """
    was_training = method.training
    method.eval()
    logits, labels, index = [], [], []
    branch_preds: dict[str, list[torch.Tensor]] = {}

    def run(inputs: torch.Tensor) -> torch.Tensor:
        with rt.autocast():
            if branches is None:
                return method.predict(inputs)
            out = method.predict_branches(inputs)
        for name, z_b in out.items():
            if name != "decision":
                branch_preds.setdefault(name, []).append(z_b.argmax(1).cpu())
        return out["decision"]

    try:
        if es.features is not None:
            n = len(es)
            shard = np.array_split(np.arange(n), rt.world_size)[rt.rank]
            for start in range(0, len(shard), batch_size):
                idx = torch.from_numpy(shard[start : start + batch_size])
                z = run(es.features[idx].to(rt.device))
                logits.append(z.float().cpu())
                labels.append(torch.as_tensor(es.labels[idx.numpy()]))
                index.append(idx)
        else:
            from ..data.loaders import eval_batches

            for x, y, idx in eval_batches(es.images, batch_size, num_workers=num_workers,
                                          rank=rt.rank, world_size=rt.world_size):
                images = to_device_images(x, rt.device, parts.normalizer)
                z = run(images)
                logits.append(z.float().cpu())
                labels.append(torch.as_tensor(y).long())
                index.append(torch.as_tensor(idx).long())
    finally:
        method.train(was_training)
    k = method.ctx.num_classes
    local = (
        torch.cat(logits) if logits else torch.empty(0, k),
        torch.cat(labels) if labels else torch.empty(0, dtype=torch.long),
        torch.cat(index) if index else torch.empty(0, dtype=torch.long),
        {name: torch.cat(preds) for name, preds in branch_preds.items()},
    )
    parts_all = rt.gather_objects(local)
    all_logits = torch.cat([p[0] for p in parts_all])
    all_labels = torch.cat([p[1] for p in parts_all])
    all_index = torch.cat([p[2] for p in parts_all])
    order = np.unique(all_index.numpy(), return_index=True)[1]  # sorted, duplicates dropped
    if branches is not None:
        for name in local[3]:
            branches[name] = torch.cat([p[3][name] for p in parts_all])[order]
    return all_logits[order], all_labels[order]


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


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _json_safe(value.detach().cpu().tolist())
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class EvalSets:
    """The sets one evaluation looks at."""

    test: EvalSet
    val: EvalSet | None = None
    unlabeled: EvalSet | None = None  # the pseudo-label diagnostic subset (test view)


def build_eval_sets(parts: "RunParts", cfg: "Config", rt: "Runtime", use_features: bool) -> EvalSets:
    """Test, optional validation and the seeded unlabeled diagnostic subset of a run."""
    from .feature_mode import set_features

    data = parts.data

    def make(name: str, images: Any, indices: np.ndarray | None = None) -> EvalSet:
        labels = np.asarray(images.labels)
        if use_features:
            feats = set_features(parts, images, name, cfg, rt, indices=indices)
            return EvalSet(name, labels, features=feats)
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


def evaluate_sets(method: "Method", parts: "RunParts", sets: EvalSets, cfg: "Config", rt: "Runtime",
                  labeled_counts: list[int]) -> dict[str, Any]:
    """One evaluation: test metrics (top level), val metrics, pseudo-labels, diagnostics."""
    bs, nw = cfg.eval.batch_size, cfg.data.num_workers
    branches: dict[str, torch.Tensor] = {}
    z, y = predict_logits(method, parts, sets.test, rt, bs, nw, branches=branches)
    out: dict[str, Any] = classification_metrics(z, y, labeled_counts, cfg.eval)
    if branches:  # each extra branch's test accuracy, next to the decision's overall_acc
        out["branch_acc"] = {name: float((pred == y).float().mean()) for name, pred in branches.items()}
    if sets.val is not None:
        zv, yv = predict_logits(method, parts, sets.val, rt, bs, nw)
        out["val"] = classification_metrics(zv, yv, labeled_counts, cfg.eval)
    if sets.unlabeled is not None:
        zu, yu = predict_logits(method, parts, sets.unlabeled, rt, bs, nw)
        out["pseudo_labels"] = pseudo_label_metrics(zu, yu, cfg.ssl.tau)
    else:
        out["pseudo_labels"] = None
    out["method_diagnostics"] = _json_safe(method.diagnostics())
    return _json_safe(out)


def load_run_weights(method: "Method", run_dir: Path) -> str:
    """Load the evaluation weights of a finished run (EMA when it was trained with one)."""
    from .checkpoint import load_weights

    ema = run_dir / "ema.safetensors"
    path = ema if ema.is_file() else run_dir / "weights.safetensors"
    if not path.is_file():
        raise DataError(f"no weights in {run_dir} (expected weights.safetensors); did the run finish?")
    load_weights(method, path)
    return path.name


#: keys ``ulfine eval`` may change: where and how to compute, never what was trained
EVAL_OVERRIDABLE = ("train.device", "train.precision", "data.root", "data.num_workers",
                    "eval.batch_size", "cache.")


def evaluate_run(run_dir: Path, split: str = "test", overrides: list[str] | None = None) -> dict[str, Any]:
    """Rebuild a finished run from ``config.yaml`` + weights and recompute its metrics on ``split``.

    The split is re-drawn from the saved config and checked against ``split.json``; the result is
    also written to ``RUN_DIR/eval_<split>.json``. ``overrides`` (``key=value``) may change only
    where and how the evaluation runs (:data:`EVAL_OVERRIDABLE`, e.g. ``train.device=cpu`` to
    re-evaluate a GPU run on a laptop, ``data.root=...`` when the data moved).
    """
    from ..config import build_config, config_to_dict, deep_merge, load_saved_config, parse_overrides
    from ..data import build_ssl_data, check_split
    from ..data.splits import SPLIT_FILE
    from ..methods.base import METHODS
    from .build import build_parts
    from .feature_mode import uses_features
    from .runtime import make_runtime
    from .seeding import seed_everything

    run_dir = Path(run_dir)
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    cfg = load_saved_config(run_dir / "config.yaml")
    if overrides:
        bad = [o for o in overrides if not o.split("=", 1)[0].strip().startswith(EVAL_OVERRIDABLE)]
        if bad:
            raise ConfigError(f"ulfine eval can only override {', '.join(EVAL_OVERRIDABLE)} "
                              f"(got {', '.join(bad)}); what was trained stays as saved")
        cfg = build_config(deep_merge(config_to_dict(cfg), parse_overrides(overrides)))
    rt = make_runtime(cfg.train.device, cfg.train.precision)
    seed_everything(cfg.seed)
    data = build_ssl_data(cfg.data, cfg.seed)
    if (run_dir / SPLIT_FILE).is_file():
        check_split(data, run_dir)
    parts = build_parts(cfg, rt.device, data)
    weights = load_run_weights(parts.method, run_dir)
    sets = build_eval_sets(parts, cfg, rt, uses_features(cfg, METHODS.get(cfg.method)))
    if split == "val":
        if sets.val is None:
            raise ConfigError("this run has no validation split (data.val_per_class was 0)")
        sets = EvalSets(sets.val, None, sets.unlabeled)
    metrics = evaluate_sets(parts.method, parts, sets, cfg, rt, list(data.labeled_counts))
    metrics.update({"split": split, "weights": weights, "run_dir": str(run_dir)})
    if rt.is_main:
        (run_dir / f"eval_{split}.json").write_text(json.dumps(metrics, indent=2))
    return metrics


__all__ = [
    "EvalSet", "EvalSets", "build_eval_sets", "evaluate_run", "evaluate_sets", "load_run_weights",
    "predict_logits", "pseudo_label_subset", "to_device_images",
]
