"""Compute image features of a frozen tower once, then reuse them from disk.

LP without image augmentation and zero-shot evaluation push the same images through the same
frozen tower every epoch; caching the (N, D) features turns an epoch into a memory-mapped read
plus a linear-head step (see docs/performance.md for the measured speed-up).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import store
from .keys import _jsonable, key_digest, preprocess_description

log = logging.getLogger(__name__)


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def _encode(backbone: nn.Module, normalizer: nn.Module, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    encode = getattr(backbone, "encode_image", backbone)
    return encode(normalizer(batch.to(device, non_blocking=True))).float()


def _autocast_state(device: torch.device) -> str | None:
    if torch.is_autocast_enabled(device.type):
        return str(torch.get_autocast_dtype(device.type)).replace("torch.", "")
    return None


def _extract(backbone: nn.Module, batches: Iterable[torch.Tensor], num_images: int, normalizer: nn.Module,
             device: torch.device, path: Path, sidecar: Path, full_key: Any) -> bool:
    """Run the tower over ``batches`` into a new cache entry, committed atomically (a failure
    leaves no entry behind); False when there were no images."""
    t0 = time.perf_counter()
    was_training = backbone.training
    backbone.eval()
    writer = tmp = None
    row = 0
    try:
        for batch in batches:
            feats = _encode(backbone, normalizer, batch, device).cpu().numpy()
            if writer is None:
                writer, tmp = store.open_writer(path, (num_images, feats.shape[1]))
            writer[row : row + len(feats)] = feats
            row += len(feats)
        if writer is None:  # no images: nothing to cache
            return False
        meta = {"key": full_key, "shape": list(writer.shape), "dtype": "float32",
                "seconds": round(time.perf_counter() - t0, 3)}
        store.commit(writer, tmp, path, sidecar, meta)
        writer = None
    except BaseException:
        if tmp is not None:
            del writer
            store.discard(tmp)
        raise
    finally:
        backbone.train(was_training)
    return True


#: host uint8 (B, 3, h, w) image batches of a set, in index order (called only on a cache miss)
ImageBatches = Callable[[], Iterable[torch.Tensor]]


def cached_features(
    backbone: nn.Module,
    batches: ImageBatches,
    num_images: int,
    normalizer: nn.Module,
    *,
    key: Mapping[str, Any],
    cache_dir: Path,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Image features (N, D) float32 of ``num_images`` images from a frozen ``backbone``, cached
    on disk. ``batches()`` yields their uint8 (B, 3, h, w) batches in index order; it is called
    only on a miss, so a hit reads no image.

    ``key`` (see :func:`feature_cache_key`) names what the features depend on; the normaliser's
    size/mean/std/interpolation, the number of images and the autocast dtype active at call time
    are added to it here. A hit returns a memory-mapped CPU tensor without running the tower; a
    miss runs ``backbone.encode_image(normalizer(uint8 batch))`` under ``torch.no_grad`` in index
    order, writes the matrix atomically and returns it memory-mapped.
    """
    device = torch.device(device) if device is not None else _module_device(backbone)
    cache_dir = Path(cache_dir)
    full_key = _jsonable(
        {
            **dict(key),
            "normalizer": preprocess_description(normalizer),
            "num_images": num_images,
            "autocast": _autocast_state(device),
        }
    )
    digest = key_digest(full_key)
    path, sidecar = store.entry_paths(cache_dir, digest)
    hit = store.read_entry(path, sidecar, full_key, rows=num_images)
    if hit is not None:
        log.info("feature cache hit: %s (%d x %d)", path, *hit.shape)
        return torch.from_numpy(hit)

    t0 = time.perf_counter()
    if not _extract(backbone, batches(), num_images, normalizer, device, path, sidecar, full_key):
        return torch.empty(0, 0)
    log.info("feature cache miss: wrote %s in %.1fs", path, time.perf_counter() - t0)
    arr = store.read_entry(path, sidecar, full_key, rows=num_images)
    assert arr is not None, f"feature cache entry {path} unreadable right after writing"
    return torch.from_numpy(arr)
