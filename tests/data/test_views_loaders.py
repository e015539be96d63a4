"""Views work at native size; DeviceNormalizer resizes and normalises; the batch streams are
identical across worker counts, resumes and ranks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from ulfine.config import DataConfig
from ulfine.data import StreamSpec, build_ssl_data, eval_batches, ssl_batches, strong_view, weak_view
from ulfine.data.views import crop_padding
from ulfine.models import DeviceNormalizer


@pytest.fixture(scope="module")
def data():
    cfg = DataConfig(dataset="synthetic10", num_labeled_head=20, num_unlabeled_head=40,
                     imbalance_labeled=10, imbalance_unlabeled=10)
    return build_ssl_data(cfg, seed=0)


def take(it, n):
    return list(itertools.islice(it, n))


def same(a, b):
    for f in ("x_l", "y_l", "u_w", "u_s", "idx_u"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None and y is None) or torch.equal(x, y), f


def test_padding_rule():
    assert [crop_padding(s) for s in (32, 224, 96, 28)] == [4, 28, 12, 3]


def test_views_keep_native_size_and_strong_differs():
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8))
    torch.manual_seed(0)
    w = weak_view(32)(img)
    torch.manual_seed(0)
    s = strong_view(32)(img)
    assert w.shape == s.shape == (3, 32, 32) and w.dtype == s.dtype == torch.uint8
    assert not torch.equal(w, s)  # same crop/flip draws, then RandAugment changes pixels


def test_device_normalizer_value_and_shape():
    norm = DeviceNormalizer(2, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0), interpolation="bicubic")
    x = torch.tensor([[[[255, 0], [51, 102]]] * 3], dtype=torch.uint8)  # (1, 3, 2, 2)
    out = norm(x)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 2, 2)
    # channel 0: (255/255 - 0.5)/0.5 = 1; (51/255 - 0.5)/0.5 = -0.6; channel 1: (0 - .25)/.25 = -1
    assert out[0, 0, 0, 0].item() == pytest.approx(1.0)
    assert out[0, 0, 1, 0].item() == pytest.approx(-0.6)
    assert out[0, 1, 0, 1].item() == pytest.approx(-1.0)
    assert out[0, 2, 1, 1].item() == pytest.approx(0.4)
    up = DeviceNormalizer(64, (0.5,) * 3, (0.5,) * 3)(torch.full((2, 3, 32, 32), 255, dtype=torch.uint8))
    assert up.shape == (2, 3, 64, 64) and torch.allclose(up, torch.ones_like(up))  # clamped overshoot
    # downsampling is antialiased: it matches PIL's bicubic resize (a plain bicubic is off by ~0.5)
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(img).resize((16, 16), Image.BICUBIC)).astype(np.float32) / 255
    down = DeviceNormalizer(16, (0.0,) * 3, (1.0,) * 3)(torch.from_numpy(img).permute(2, 0, 1)[None])
    assert np.abs(down[0].permute(1, 2, 0).numpy() - pil).max() < 0.01


@pytest.mark.parametrize("size", [16, 33, 96, 224])
def test_float_resize_path_matches_pil_and_the_uint8_path(size):
    """Accelerators resize in float (``resize_float``), the CPU in uint8: both must give what PIL's
    bicubic gives (CLIP's reference preprocessing), within 1.5 grey levels, even on noise, where
    sharp edges make bicubic overshoot most; non-square inputs included."""
    img = np.random.default_rng(size).integers(0, 256, (4, 32, 40, 3), dtype=np.uint8)
    pil = np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BICUBIC)) for i in img]).astype(np.float32)
    norm = DeviceNormalizer(size, (0.0,) * 3, (1.0,) * 3)
    x = torch.from_numpy(img).permute(0, 3, 1, 2)
    as_float = norm.resize_float(x).permute(0, 2, 3, 1).numpy() * 255
    as_uint8 = norm(x).permute(0, 2, 3, 1).numpy() * 255  # the CPU path
    assert np.abs(as_float - pil).max() <= 1.5
    assert np.abs(as_uint8 - pil).max() <= 2.001  # torch rounds its uint8 passes slightly differently
    assert np.abs(as_float - as_uint8).max() <= 2.5  # (a single 2-D float resize: up to 24)
    # float input in [0, 1] takes the same path and normalises like the uint8 path
    torch.testing.assert_close(norm(x.float() / 255), norm.resize_float(x), rtol=0, atol=1e-6)


def test_batch_contents(data):
    b = next(ssl_batches(data, StreamSpec(8, 2, seed=0)))
    assert b.x_l.shape == (8, 3, 32, 32) and b.x_l.dtype == torch.uint8
    assert b.u_w.shape == b.u_s.shape == (16, 3, 32, 32) and b.idx_u.shape == (16,)
    assert not hasattr(b, "y_u") and b.step == 0
    assert not torch.equal(b.u_w, b.u_s)
    plain = next(ssl_batches(data, StreamSpec(8, 1, seed=0, augment=False, unlabeled=False)))
    assert plain.u_w is None and plain.idx_u is None
    for x, y in zip(plain.x_l, plain.y_l):  # test view: exactly a stored labeled image
        hits = [i for i in range(len(data.labeled)) if np.array_equal(data.labeled.load(i), x.permute(1, 2, 0).numpy())]
        assert hits and int(data.labeled.labels[hits[0]]) == int(y)


def test_second_strong_view_for_acr(data):
    """strong_views=2 adds u_s2, another strong view of the same images, drawn after the first: the
    weak and first strong views are exactly those of the one-view stream."""
    one = next(ssl_batches(data, StreamSpec(8, 2, seed=4)))
    two = next(ssl_batches(data, StreamSpec(8, 2, seed=4, strong_views=2)))
    assert one.u_s2 is None and two.u_s2.shape == two.u_s.shape == (16, 3, 32, 32)
    for f in ("x_l", "u_w", "u_s", "idx_u"):
        assert torch.equal(getattr(one, f), getattr(two, f)), f
    assert not torch.equal(two.u_s, two.u_s2)
    assert torch.equal(next(ssl_batches(data, StreamSpec(8, 2, seed=4, strong_views=2, num_workers=2))).u_s2, two.u_s2)
    micro = two.split(2)
    assert [m.u_s2.shape[0] for m in micro] == [8, 8] and torch.equal(micro[1].u_s2, two.u_s2[8:])


def test_epoch_covers_labeled_set_once(data):
    n = len(data.labeled)  # 71 labeled images; batch 71 -> one epoch per step
    b = next(ssl_batches(data, StreamSpec(n, 1, seed=3, augment=False, unlabeled=False)))
    assert sorted(b.y_l.tolist()) == sorted(data.labeled.labels.tolist())


def test_workers_resume_and_ranks_agree(data):
    ref = take(ssl_batches(data, StreamSpec(8, 2, seed=5, num_workers=0)), 4)
    for a, b in zip(ref, take(ssl_batches(data, StreamSpec(8, 2, seed=5, num_workers=2)), 4)):
        same(a, b)
    resumed = next(ssl_batches(data, StreamSpec(8, 2, seed=5), start_step=3))
    same(resumed, ref[3])
    assert resumed.step == 3
    r0 = take(ssl_batches(data, StreamSpec(8, 2, seed=5), rank=0, world_size=2), 2)
    r1 = take(ssl_batches(data, StreamSpec(8, 2, seed=5), rank=1, world_size=2), 2)
    for g, a, b in zip(ref, r0, r1):
        assert a.x_l.shape[0] == 4 and a.u_w.shape[0] == 8
        for f in ("x_l", "y_l", "u_w", "u_s", "idx_u"):
            assert torch.equal(torch.cat([getattr(a, f), getattr(b, f)]), getattr(g, f)), f
    other = next(ssl_batches(data, StreamSpec(8, 2, seed=6)))
    assert not torch.equal(other.x_l, ref[0].x_l)


def test_eval_batches_shards(data):
    full = list(eval_batches(data.test, 64))
    assert [len(b[0]) for b in full] == [64, 64, 64, 8]
    idx = torch.cat([b[2] for b in full])
    assert idx.tolist() == list(range(200))
    assert torch.equal(torch.cat([b[1] for b in full]), torch.tensor(data.test.labels))
    assert torch.equal(full[0][0][5].permute(1, 2, 0), torch.tensor(data.test.load(5)))
    shards = [torch.cat([b[2] for b in eval_batches(data.test, 50, rank=r, world_size=3, num_workers=1)])
              for r in range(3)]
    assert torch.cat(shards).tolist() == list(range(200))


def test_device_normalizer_uint8_fast_path_matches_the_float_path_and_pil():
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    norm = DeviceNormalizer(224, mean, std, "bicubic")
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
    fast = norm(x)  # uint8 resize (CPU) + fused scale/shift
    assert fast.shape == (4, 3, 224, 224) and fast.dtype == torch.float32
    # the fused scale/shift equals the textbook (x / 255 - mean) / std of the resized uint8 batch
    resized = torch.nn.functional.interpolate(x, size=224, mode="bicubic", antialias=True).float()
    textbook = (resized / 255.0 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(fast, textbook, atol=1e-5)
    # and the uint8 resize is PIL's bicubic upsampling to one grey level (the float path is off
    # by up to ~20 levels near the borders of noise images)
    from PIL import Image
    pil = np.asarray(Image.fromarray(x[0].permute(1, 2, 0).numpy()).resize((224, 224), Image.BICUBIC))
    back = (fast[0] * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)) * 255
    assert np.abs(back.permute(1, 2, 0).numpy() - pil).max() <= 1.01
