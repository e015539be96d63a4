"""Section (c): one linear-probe epoch with cached features vs with the frozen tower every epoch."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import sync
from _train import autocast, autocast_dtype


def run_lp(arch: str, device: torch.device, *, num_images: int, batch: int = 256,
           epochs: int = 2, num_classes: int = 10) -> dict[str, Any]:
    """Epoch seconds of LP training on synthetic 32 px images, uncached vs cached features.

    Both epochs shuffle, normalise/resize where needed and take one SGD step of a linear head
    per batch; the uncached epoch runs the frozen image tower on every batch, the cached one
    reads rows of the memory-mapped feature matrix written by ``ulfine.features``.
    """
    from ulfine.config.schema import ModelConfig
    from ulfine.data import ImageSet, eval_batches
    from ulfine.features import cached_features, feature_cache_key
    from ulfine.models import DeviceNormalizer, LinearHead, apply_finetune, build_backbone

    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig(arch=arch, pretrained="none", text_cache_dir=None))
    apply_finetune(backbone, "lp")
    backbone.to(device).train()  # lp keeps the tower in eval mode under no_grad
    pp = backbone.preprocess
    size = pp.size if isinstance(pp.size, int) else pp.size[0]
    normalizer = DeviceNormalizer(size, pp.mean, pp.std, pp.interpolation).to(device)
    rng = np.random.default_rng(0)
    images = ImageSet(rng.integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8),
                      rng.integers(0, num_classes, num_images).astype(np.int64))
    labels = torch.from_numpy(images.labels)
    amp = autocast_dtype(device)

    def make_head():
        head = LinearHead(backbone.embed_dim, num_classes).to(device)
        return head, torch.optim.SGD(head.parameters(), lr=0.03, momentum=0.9)

    def head_step(head, opt, feats: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(device, amp):
            loss = F.cross_entropy(head(feats).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    heads = {"cached": make_head(), "uncached": make_head()}  # built once, as in a run

    def uncached_epoch(seed: int) -> None:
        head, opt = heads["uncached"]
        perm = np.random.default_rng(seed).permutation(num_images)
        for s in range(0, num_images, batch):
            idx = np.sort(perm[s:s + batch])
            x = torch.from_numpy(images.images[idx]).permute(0, 3, 1, 2).to(device, non_blocking=True)
            with autocast(device, amp):
                feats = backbone.encode_image(normalizer(x))
            head_step(head, opt, feats.float(), labels[idx].to(device, non_blocking=True))

    def cached_epoch(feats_all: torch.Tensor, seed: int) -> None:
        head, opt = heads["cached"]
        perm = np.random.default_rng(seed).permutation(num_images)
        for s in range(0, num_images, batch):
            idx = torch.from_numpy(np.sort(perm[s:s + batch]))
            head_step(head, opt, feats_all[idx].to(device, non_blocking=True),
                      labels[idx].to(device, non_blocking=True))

    def timed_epochs(fn, n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for e in range(n):
            fn(e)
        sync(device)
        return (time.perf_counter() - t0) / n

    with tempfile.TemporaryDirectory(prefix="ulfine-perf-cache-") as tmp:
        key = feature_cache_key(backbone, arch=arch, dataset="synthetic", role="labeled",
                                indices=np.arange(num_images))
        kwargs = {"key": key, "cache_dir": Path(tmp), "device": device}
        batches = lambda: (x for x, _, _ in eval_batches(images, batch))
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, amp):
            cached_features(backbone, batches, len(images), normalizer, **kwargs)
        sync(device)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with autocast(device, amp):
            feats = cached_features(backbone, batches, len(images), normalizer, **kwargs)  # hit: mmap
        open_s = time.perf_counter() - t0
        cached_epoch(feats, 99)  # warm-up
        uncached_epoch(99)
        cached_s = timed_epochs(lambda e, f=feats: cached_epoch(f, e), max(3, epochs))
        uncached_s = timed_epochs(uncached_epoch, epochs)
        del feats
    return {
        "ours": {"epoch_s": cached_s, "images_per_s": num_images / cached_s,
                 "cache_build_s": build_s, "cache_open_s": open_s},
        "naive": {"epoch_s": uncached_s, "images_per_s": num_images / uncached_s},
        "speedup": uncached_s / cached_s,
        "break_even_epochs": build_s / max(uncached_s - cached_s, 1e-9),
        "setup": {"arch": arch, "images": num_images, "batch_size": batch, "native_size": 32,
                  "model_size": size, "precision": str(amp).replace("torch.", "") if amp else "fp32",
                  "ours": "ulfine.features.cached_features (memory-mapped .npy) + linear head",
                  "naive": "frozen tower forward (no_grad) every batch + linear head"},
    }
