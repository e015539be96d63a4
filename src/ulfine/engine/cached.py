"""Feature mode: frozen-tower runs on precomputed features instead of images.

When :func:`ulfine.engine.assemble.uses_features` says so, the engine computes each set's (N, D)
features once (``ulfine.features.cached_features``: on disk, memory-mapped, keyed by weights,
split and preprocessing), gives the method a ``CachedFeatures`` stand-in backbone, and feeds it
:class:`~ulfine.batch.Batch` es whose ``x_l`` holds features.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import numpy as np
import torch

from ..batch import Batch
from ..data import ImageSet, eval_batches
from ..data.loaders import LABELED, IndexStream
from ..features import cached_features, feature_cache_key, weights_fingerprint
from .assemble import RunParts
from .runtime import Runtime

_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def _tower_fingerprint(backbone: torch.nn.Module) -> str:
    """The frozen image tower's weights fingerprint, hashed once per backbone (feature mode only
    runs with a frozen tower, so its weights cannot change while the backbone lives)."""
    fp = _FINGERPRINTS.get(backbone)
    if fp is None:
        fp = _FINGERPRINTS[backbone] = weights_fingerprint(getattr(backbone, "visual", backbone))
    return fp


def set_features(parts: RunParts, images: ImageSet, role: str, rt: Runtime,
                 indices: np.ndarray | None = None) -> torch.Tensor:
    """(N, D) float32 CPU features of ``images`` from the frozen tower (cached on disk).

    ``indices`` names the rows when ``images`` is a subset of a role that the split hash does not
    pin down (the seeded unlabeled diagnostic subset). The main process fills the cache first;
    the others then read it.
    """
    cfg = parts.cfg
    key = feature_cache_key(
        parts.backbone,
        weights=_tower_fingerprint(parts.backbone),
        arch=cfg.model.arch,
        dataset=cfg.data.dataset,
        role=role,
        indices=indices,
        split_hash=getattr(parts.data, "split_hash", None),
        extra={"content": images.fingerprint()},
    )

    def batches() -> Iterator[torch.Tensor]:
        return (x for x, _, _ in eval_batches(images, cfg.eval.batch_size, cfg.data.num_workers))

    with rt.accelerator.main_process_first(), rt.autocast():
        return cached_features(parts.backbone, batches, len(images), parts.normalizer,
                               key=key, cache_dir=cfg.cache.dir)


def feature_batches(
    features: torch.Tensor,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Infinite labeled batches of features; step s is a pure function of (seed, s).

    Uses the data layer's labeled index stream (``ulfine.data.loaders.IndexStream``), so a
    feature run trains on exactly the labeled samples, in the same order, as the image run with
    ``data.augment=false``; rank r keeps its contiguous slice of the global batch.
    """
    per_rank = batch_size // world_size
    stream = IndexStream(len(labels), seed, LABELED)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    step = start_step
    while True:
        idx = torch.from_numpy(stream.take(step * batch_size + rank * per_rank, per_rank))
        yield Batch(features[idx], labels_t[idx], step=step)
        step += 1


__all__ = ["feature_batches", "set_features"]
