"""Section (b): CIFAR-style weak+strong data pipeline throughput, ulfine vs the peers' pipeline.

ulfine: uint8 32 px images augmented at native size (ulfine.data.views via ssl_batches), moved to
the device as uint8, then resized + normalised there in one batched op (DeviceNormalizer).
Peers: every image upsampled with PIL to 224 px first, then random crop (28 px reflect padding),
flip, RandAugment(2, 10), ToTensor and Normalize per image on the host, then float32 to device.
Both produce the same thing: normalised float (B, 3, 224, 224) labeled, weak and strong views.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from _common import sync
from torch.utils.data import DataLoader, Dataset

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def synthetic_ssl_data(n: int, size: int = 32, num_classes: int = 10, seed: int = 0):
    """An SSLData of random uint8 images (no dataset on disk needed)."""
    from ulfine.data import ImageSet, SSLData

    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).astype(np.int64)
    lab = ImageSet(imgs, labels)
    unl = ImageSet(imgs.copy(), np.full(n, -1, dtype=np.int64))
    counts = np.bincount(labels, minlength=num_classes).tolist()
    return SSLData(name="synthetic", class_names=[f"c{i}" for i in range(num_classes)], labeled=lab,
                   unlabeled=unl, val=None, test=lab, labeled_counts=counts,
                   unlabeled_counts=None, native_size=size, split_hash="synthetic")


class PeerDataset(Dataset):
    """The peers' per-image PIL pipeline (FineSSL/USB style), labeled and unlabeled in one."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int, unlabeled: bool) -> None:
        from torchvision import transforms as T

        self.images, self.labels, self.unlabeled = images, labels, unlabeled
        norm = [T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]
        resize = T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC)
        crop = [T.RandomCrop(size, padding=size // 8, padding_mode="reflect"), T.RandomHorizontalFlip()]
        self.weak = T.Compose([resize, *crop, *norm])
        self.strong = T.Compose([resize, *crop, T.RandAugment(2, 10), *norm])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        if self.unlabeled:
            return self.weak(img), self.strong(img)
        return self.weak(img), int(self.labels[i])


def _rate(one, device: torch.device, batches: int) -> dict[str, float]:
    """Images/s of ``batches`` calls of ``one()`` (which returns its image count), after one
    untimed warm-up call (workers start, first batch)."""
    one()
    sync(device)
    t0 = time.perf_counter()
    n = sum(one() for _ in range(batches))
    sync(device)
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": dt, "images_per_s": n / dt}


def _ours(data, device: torch.device, size: int, batch: int, mu: int, workers: int,
          batches: int) -> dict[str, float]:
    from ulfine.data import StreamSpec, ssl_batches
    from ulfine.models import DeviceNormalizer

    norm = DeviceNormalizer(size, CLIP_MEAN, CLIP_STD, "bicubic").to(device)
    stream = ssl_batches(data, StreamSpec(batch, mu, seed=0, num_workers=workers))

    def one() -> int:
        hb = next(stream)
        views = [hb.x_l, hb.u_w, hb.u_s]
        out = [norm(v.to(device, non_blocking=True)) for v in views]
        assert out[0].shape[-1] == size
        return sum(len(v) for v in views)

    return _rate(one, device, batches)


def _peers(data, device: torch.device, size: int, batch: int, mu: int, workers: int,
           batches: int) -> dict[str, float]:
    lab = PeerDataset(data.labeled.images, data.labeled.labels, size, unlabeled=False)
    unl = PeerDataset(data.unlabeled.images, data.unlabeled.labels, size, unlabeled=True)
    kw: dict[str, Any] = {"num_workers": workers, "shuffle": True, "drop_last": True,
                          "pin_memory": device.type == "cuda"}
    if workers:
        kw["persistent_workers"] = True
    it_l = iter(DataLoader(lab, batch_size=batch, **kw))
    it_u = iter(DataLoader(unl, batch_size=mu * batch, **kw))

    def one() -> int:
        x_l, _ = next(it_l)
        u_w, u_s = next(it_u)
        views = [x_l, u_w, u_s]
        out = [v.to(device, non_blocking=True) for v in views]
        assert out[0].shape[-1] == size
        return sum(len(v) for v in views)

    return _rate(one, device, batches)


def run_pipeline(device: torch.device, *, size: int = 224, batch: int = 32, mu: int = 1,
                 workers: int = 0, batches: int = 8) -> dict[str, Any]:
    """Views/s (labeled + weak + strong, normalised at ``size`` on ``device``) of both pipelines."""
    n = max(256, (batches + 2) * batch * mu)
    data = synthetic_ssl_data(n)
    threads = torch.get_num_threads()
    # Per-core comparison: both pipelines run their host work in one thread (plus ``workers``
    # worker processes, one thread each, as ulfine's loader sets). Intra-op threads on tiny
    # per-image ops only add synchronisation (10-100x slower pads on a busy 2-core machine).
    torch.set_num_threads(1)
    try:
        ours = _ours(data, device, size, batch, mu, workers, batches)
        peers = _peers(data, device, size, batch, mu, workers, batches)
    finally:
        torch.set_num_threads(threads)
    return {
        "ours": ours, "naive": peers, "speedup": ours["images_per_s"] / peers["images_per_s"],
        "setup": {"native_size": 32, "model_size": size, "batch_size": batch, "mu": mu,
                  "num_workers": workers, "batches_timed": batches, "host_threads": 1,
                  "images_per_batch": batch + 2 * mu * batch,
                  "ours": "ssl_batches (torchvision.v2 at 32 px) + DeviceNormalizer on device",
                  "naive": "per image PIL resize to 224 + crop/flip/RandAugment + ToTensor/Normalize"},
    }
