"""ImageSet.fingerprint: what the pixels are, so caches keyed on it never serve stale features."""

from __future__ import annotations

import os

import numpy as np

from ulfine.data import ImageSet
from ulfine.data.base import StoredArray


def test_array_fingerprint_follows_every_pixel() -> None:
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(6)
    base = ImageSet(images, labels).fingerprint()
    assert ImageSet(images.copy(), labels).fingerprint() == base
    changed = images.copy()
    changed[3, 7, 7, 2] ^= 1  # one bit of one pixel
    assert ImageSet(changed, labels).fingerprint() != base
    assert ImageSet(images[:5], labels[:5]).fingerprint() != base


def test_file_fingerprints_follow_the_files(tmp_path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(b"image %d" % i)
    labels = np.zeros(3, dtype=np.int64)
    base = ImageSet(paths, labels).fingerprint()
    assert ImageSet(list(paths), labels).fingerprint() == base
    assert ImageSet(paths, labels, image_size=32).fingerprint() != base  # decoded at another size
    paths[1].write_bytes(b"an edited image, longer")
    assert ImageSet(paths, labels).fingerprint() != base

    stored = tmp_path / "u.bin"
    stored.write_bytes(bytes(2 * 4 * 4 * 3))
    arr = StoredArray(stored, (2, 4, 4, 3))
    first = ImageSet(arr, np.full(2, -1)).fingerprint()
    os.utime(stored, ns=(1, 1))  # a rewritten file has another modification time
    assert ImageSet(arr, np.full(2, -1)).fingerprint() != first
