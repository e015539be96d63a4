"""ulfine.features: exact features, disk reuse without the tower, misses on key changes, mmap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ulfine.data import ImageSet, eval_batches
from ulfine.features import cached_features, feature_cache_key, weights_fingerprint
from ulfine.models import DeviceNormalizer

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class CountingTower(nn.Module):
    """A tiny frozen 'image tower' that counts how many batches it encoded."""

    def __init__(self, seed: int = 0, size: int = 8, dim: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.visual = nn.Linear(3 * size * size, dim)
        with torch.no_grad():
            self.visual.weight.copy_(torch.randn(dim, 3 * size * size, generator=g))
            self.visual.bias.copy_(torch.randn(dim, generator=g))
        self.calls = 0

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.visual(x.flatten(1))


@pytest.fixture()
def images() -> ImageSet:
    rng = np.random.default_rng(0)
    return ImageSet(rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8), np.arange(10))


def image_batches(images: ImageSet, batch_size: int):
    """The host batches the engine hands the feature cache (uint8 (B, 3, h, w), index order)."""
    return lambda: (x for x, _, _ in eval_batches(images, batch_size))


def key_for(tower: nn.Module, normalizer: nn.Module, indices=None) -> dict:
    indices = np.arange(10) if indices is None else indices
    return feature_cache_key(tower, arch="toy", dataset="toy", role="labeled", indices=indices,
                             preprocess=normalizer)


def reference(tower: CountingTower, normalizer: nn.Module, images: ImageSet) -> torch.Tensor:
    x = torch.from_numpy(images.images).permute(0, 3, 1, 2)
    with torch.no_grad():
        return tower.visual(normalizer(x).flatten(1))


def test_cache_returns_uncached_features_then_reads_disk(tmp_path: Path, images: ImageSet) -> None:
    tower, norm = CountingTower(), DeviceNormalizer(8, MEAN, STD)
    key = key_for(tower, norm)
    first = cached_features(tower, image_batches(images, 4), len(images), norm, key=key, cache_dir=tmp_path)
    assert tower.calls == 3  # ceil(10 / 4) batches
    assert first.shape == (10, 5) and first.dtype == torch.float32
    # batch size changes BLAS summation order: allow float32 rounding, not a different encoding
    torch.testing.assert_close(first, reference(tower, norm, images), rtol=1e-4, atol=1e-4)

    second = cached_features(tower, image_batches(images, 4), len(images), norm, key=key, cache_dir=tmp_path)
    assert tower.calls == 3  # hit: the tower never ran again
    assert torch.equal(first, second)
    assert len(list(tmp_path.glob("*.npy"))) == 1


@pytest.mark.parametrize("change", ["weights", "transform", "indices", "role"])
def test_key_changes_miss(tmp_path: Path, images: ImageSet, change: str) -> None:
    tower, norm = CountingTower(), DeviceNormalizer(8, MEAN, STD)
    base = cached_features(tower, image_batches(images, 256), len(images), norm, key=key_for(tower, norm), cache_dir=tmp_path)
    assert tower.calls == 1
    if change == "weights":
        tower2 = CountingTower(seed=1)
        key = key_for(tower2, norm)
        out = cached_features(tower2, image_batches(images, 256), len(images), norm, key=key, cache_dir=tmp_path)
        assert tower2.calls == 1
        assert not torch.allclose(out, base)
    else:
        norm2 = DeviceNormalizer(8, (0.1, 0.1, 0.1), STD) if change == "transform" else norm
        if change == "indices":
            key = key_for(tower, norm, indices=np.arange(1, 11))
        elif change == "role":
            key = {**key_for(tower, norm), "role": "unlabeled"}
        else:
            key = key_for(tower, norm)  # same key; the normaliser itself differs
        cached_features(tower, image_batches(images, 256), len(images), norm2, key=key, cache_dir=tmp_path)
        assert tower.calls == 2
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_same_weights_in_a_new_object_hit(tmp_path: Path, images: ImageSet) -> None:
    a, b, norm = CountingTower(seed=3), CountingTower(seed=3), DeviceNormalizer(8, MEAN, STD)
    assert weights_fingerprint(a.visual) == weights_fingerprint(b.visual)
    cached_features(a, image_batches(images, 256), len(images), norm, key=key_for(a, norm), cache_dir=tmp_path)
    cached_features(b, image_batches(images, 256), len(images), norm, key=key_for(b, norm), cache_dir=tmp_path)
    assert (a.calls, b.calls) == (1, 0)


def _mapped_files(address: int) -> list[str]:
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if lo <= address < hi and len(parts) >= 6:
            out.append(parts[5])
    return out


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_reuse_is_memory_mapped_and_sidecar_records_key(tmp_path: Path, images: ImageSet) -> None:
    tower, norm = CountingTower(), DeviceNormalizer(8, MEAN, STD)
    key = key_for(tower, norm)
    cached_features(tower, image_batches(images, 256), len(images), norm, key=key, cache_dir=tmp_path)
    feats = cached_features(tower, image_batches(images, 256), len(images), norm, key=key, cache_dir=tmp_path)
    (npy,) = tmp_path.glob("*.npy")
    assert str(npy) in _mapped_files(feats.data_ptr())  # the tensor's memory IS the file
    side = json.loads(npy.with_suffix(".json").read_text())
    assert side["shape"] == [10, 5]
    assert side["key"]["arch"] == "toy" and side["key"]["indices"]["n"] == 10
    assert side["key"]["normalizer"]["size"] == 8
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries


def test_failed_extraction_leaves_no_entry(tmp_path: Path, images: ImageSet) -> None:
    class Failing(CountingTower):
        def encode_image(self, x: torch.Tensor) -> torch.Tensor:
            if self.calls == 1:
                raise RuntimeError("boom")
            return super().encode_image(x)

    tower, norm = Failing(), DeviceNormalizer(8, MEAN, STD)
    with pytest.raises(RuntimeError, match="boom"):
        cached_features(tower, image_batches(images, 4), len(images), norm, key=key_for(tower, norm), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_entry_is_recomputed(tmp_path: Path, images: ImageSet) -> None:
    tower, norm = CountingTower(), DeviceNormalizer(8, MEAN, STD)
    key = key_for(tower, norm)
    good = cached_features(tower, image_batches(images, 256), len(images), norm, key=key, cache_dir=tmp_path).clone()
    (npy,) = tmp_path.glob("*.npy")
    npy.write_bytes(b"not a npy file")
    again = cached_features(tower, image_batches(images, 256), len(images), norm, key=key, cache_dir=tmp_path)
    assert tower.calls == 2
    assert torch.equal(again, good)
