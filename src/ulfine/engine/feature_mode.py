"""Frozen-tower runs on precomputed features instead of images.

When the image tower cannot change and no augmentation is asked for -- ``method=zeroshot``, or
``finetune=lp`` with ``data.augment=false`` for a method that does not use unlabeled views -- every
epoch would push the same pixels through the same tower. Then the engine computes each set's
(N, D) features once (``ulfine.features.cached_features``: on disk, memory-mapped, keyed by
weights, split and preprocessing) and feeds the 2-D features to the method
(``Method.features`` passes 2-D input through). ``cache.features=false`` turns this off.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from ..config import Config
    from ..methods.base import Method
    from .build import RunParts
    from .runtime import Runtime


def uses_features(cfg: "Config", method_cls: type["Method"]) -> bool:
    """True when this run trains/evaluates on cached features of a frozen tower."""
    if not cfg.cache.features:
        return False
    if not method_cls.trains:
        return True
    return cfg.finetune == "lp" and not cfg.data.augment and not method_cls.uses_unlabeled


_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def _tower_fingerprint(backbone: torch.nn.Module) -> str:
    """The frozen image tower's weights fingerprint, hashed once per backbone (feature mode only
    runs with a frozen tower, so its weights cannot change while the backbone lives)."""
    from ..features import weights_fingerprint

    fp = _FINGERPRINTS.get(backbone)
    if fp is None:
        fp = _FINGERPRINTS[backbone] = weights_fingerprint(getattr(backbone, "visual", backbone))
    return fp


def set_features(parts: "RunParts", images: Any, role: str, cfg: "Config", rt: "Runtime",
                 indices: np.ndarray | None = None) -> torch.Tensor:
    """(N, D) float32 CPU features of ``images`` from the frozen tower (cached on disk).

    ``indices`` names the rows when ``images`` is a subset of a role that the split hash does not
    pin down (the seeded unlabeled diagnostic subset). The main process fills the cache first;
    the others then read it.
    """
    from ..features import cached_features, feature_cache_key

    key = feature_cache_key(
        parts.backbone,
        weights=_tower_fingerprint(parts.backbone),
        arch=cfg.model.arch,
        dataset=cfg.data.dataset,
        role=role,
        indices=indices,
        split_hash=getattr(parts.data, "split_hash", None),
    )
    with rt.accelerator.main_process_first(), rt.autocast():
        feats = cached_features(
            parts.backbone,
            images,
            parts.normalizer,
            key=key,
            cache_dir=cfg.cache.dir,
            batch_size=cfg.eval.batch_size,
        )
    return feats


def feature_batches(
    features: torch.Tensor,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Infinite labeled (features, labels) batches; step s is a pure function of (seed, s).

    Uses the data layer's labeled index stream (``ulfine.data.loaders.IndexStream``), so a
    feature run trains on exactly the labeled samples, in the same order, as the image run with
    ``data.augment=false``; rank r keeps its contiguous slice of the global batch.
    """
    from ..data.loaders import LABELED, IndexStream

    per_rank = batch_size // world_size
    stream = IndexStream(len(labels), seed, LABELED)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    step = start_step
    while True:
        idx = torch.from_numpy(stream.take(step * batch_size + rank * per_rank, per_rank))
        yield features[idx], labels_t[idx]
        step += 1


__all__ = ["feature_batches", "set_features", "uses_features"]
