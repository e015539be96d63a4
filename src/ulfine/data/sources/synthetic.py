"""``synthetic10``: a tiny, deterministic, learnable dataset held in memory (no disk).

Why: tests and smoke runs of the other parts need real-looking uint8 images with learnable
classes and a known answer, in milliseconds. Each class has its own colour and its own stripe
pattern (orientation and frequency); every image adds a random phase, brightness jitter and
Gaussian noise. 200 train and 20 test images per class, 32x32 RGB, always the same bytes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ...config import DataConfig
from ..base import DATASETS, DatasetSpec, ImageSet, SourceData

SYNTHETIC_CLASSES = [
    "red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple", "white", "gray",
]
_COLOURS = np.array([
    [220, 40, 40], [40, 180, 60], [50, 70, 220], [230, 220, 50], [60, 210, 220],
    [210, 60, 200], [240, 140, 30], [120, 50, 160], [235, 235, 235], [128, 128, 128],
], dtype=np.float32)
SEED = 20250505
SIZE = 32
TRAIN_PER_CLASS = 200
TEST_PER_CLASS = 20


def _make(per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    images, labels = [], []
    for k in range(len(SYNTHETIC_CLASSES)):
        angle = np.pi * k / len(SYNTHETIC_CLASSES)
        freq = 2 * np.pi * (2 + k % 3) / SIZE
        coord = np.cos(angle) * xx + np.sin(angle) * yy
        phase = rng.uniform(0, 2 * np.pi, size=(per_class, 1, 1))
        stripes = 0.5 + 0.5 * np.sin(freq * coord[None] + phase)  # (n, H, W) in [0, 1]
        bright = rng.uniform(0.8, 1.1, size=(per_class, 1, 1, 1))
        img = _COLOURS[k] * (0.55 + 0.45 * stripes[..., None]) * bright
        img += rng.normal(0.0, 12.0, size=img.shape)
        images.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        labels.append(np.full(per_class, k, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


@lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    x_train, y_train = _make(TRAIN_PER_CLASS, rng)
    x_test, y_test = _make(TEST_PER_CLASS, rng)
    for arr in (x_train, y_train, x_test, y_test):
        arr.setflags(write=False)
    return x_train, y_train, x_test, y_test


def read_synthetic10(cfg: DataConfig) -> SourceData:
    """The toy dataset (identical for every call and machine)."""
    x_train, y_train, x_test, y_test = _arrays()
    return SourceData("synthetic10", list(SYNTHETIC_CLASSES), ImageSet(x_train, y_train),
                      ImageSet(x_test, y_test), None, SIZE)


DATASETS.register("synthetic10")(DatasetSpec(
    name="synthetic10", num_classes=10, class_names=list(SYNTHETIC_CLASSES), native_size=SIZE,
    has_natural_unlabeled=False,
    description="toy in-memory dataset: 10 colour+stripe classes, 200 train / 20 test each, 32 px",
    reader=read_synthetic10, train_counts=[TRAIN_PER_CLASS] * 10,
))
