"""Views made on the device (data.augment_on=device) are the host path's views: same draws from the
same (seed, step, position) streams, torchvision's ops, per-sample grouping done right."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ulfine.config import DataConfig
from ulfine.data import StreamSpec, build_ssl_data, ssl_batches
from ulfine.data.device_augment import OPS, DeviceAugmenter, ViewParams, draw_params, randaugment, weak_views


@pytest.fixture(scope="module")
def data():
    cfg = DataConfig(dataset="synthetic10", num_labeled_head=20, num_unlabeled_head=40, imbalance_labeled=2,
                     imbalance_unlabeled=2, num_workers=0)
    return build_ssl_data(cfg, 0)


@pytest.mark.parametrize("world,rank,strong", [(1, 0, 1), (2, 1, 1), (1, 0, 2)])
def test_device_views_equal_the_host_views(data, world, rank, strong):
    host = ssl_batches(data, StreamSpec(8, 2, seed=3, strong_views=strong), 5, rank, world)
    raw = ssl_batches(data, StreamSpec(8, 2, seed=3), 5, rank, world, raw=True)
    augment = DeviceAugmenter(3, 8, 2, rank, world, strong_views=strong)
    for _ in range(3):
        h, r = next(host), next(raw)
        assert r.u_s is None and not torch.equal(r.u_w, h.u_w)  # the raw batch really is unaugmented
        d = augment(r)
        for field in ("x_l", "u_w", "u_s") + (("u_s2",) if strong == 2 else ()):
            diff = (getattr(h, field).int() - getattr(d, field).int()).abs().max().item()
            assert diff <= 1, (field, diff)  # one grey level (exact on the CPU)
        assert torch.equal(h.idx_u, d.idx_u) and torch.equal(h.y_l, d.y_l)


def test_draw_frequencies_match_randaugment():
    n = 4000
    weak, (strong,) = draw_params(list(range(n)), 32, strong_views=1)
    ops = strong.ops.flatten()
    freq = torch.bincount(ops, minlength=len(OPS)).float() / len(ops)
    tol = 4 * math.sqrt((1 / 14) * (13 / 14) / len(ops))  # 4 standard deviations
    assert len(OPS) == 14 and (freq - 1 / 14).abs().max() < tol
    signed = torch.tensor([o in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                                 "Contrast", "Sharpness") for o in OPS])[strong.ops]
    assert abs(strong.negate[signed].float().mean() - 0.5) < 0.03
    assert not strong.negate[~signed].any()  # unsigned ops never draw a sign
    for p in (weak, strong):
        assert abs(p.flip.float().mean() - 0.5) < 0.03
        assert set(p.top.tolist()) == set(range(9)) and set(p.left.tolist()) == set(range(9))  # pad 4 at 32 px


def test_fixed_ops_equal_torchvision_functional_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=g)
    names = ["Rotate", "Brightness", "Posterize", "Equalize", "ShearX", "Rotate"]
    negate = [False, True, False, False, True, True]
    p = ViewParams(torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.bool),
                   torch.tensor([[OPS.index(n), OPS.index("Identity")] for n in names]),
                   torch.tensor([[v, False] for v in negate]))
    out = randaugment(x, p)
    nearest = InterpolationMode.NEAREST
    expected = [
        TF.rotate(x[0], angle=10.0, interpolation=nearest),  # magnitude bin 10 of 31 over [0, 30] degrees
        TF.adjust_brightness(x[1], 1.0 - 0.3),
        TF.posterize(x[2], bits=int((8 - torch.tensor(10) / 7.5).round())),
        TF.equalize(x[3]),
        TF.affine(x[4], angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(-0.1)), 0.0],
                  interpolation=nearest, center=[0, 0]),
        TF.rotate(x[5], angle=-10.0, interpolation=nearest),
    ]
    for i, e in enumerate(expected):
        assert (out[i].int() - e.int()).abs().max() <= 1, names[i]
    assert not torch.equal(out[0], x[0]) and not torch.equal(out[1], x[1])  # the ops did something


def test_weak_view_crops_each_sample_at_its_own_offset():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    p = ViewParams(torch.tensor([1, 2]), torch.tensor([1, 0]), torch.tensor([False, True]))
    out = weak_views(x, p)  # pad 1 at 8 px: offset 1 = no shift
    assert torch.equal(out[0], x[0])
    padded = TF.pad(x[1], [1, 1, 1, 1], padding_mode="reflect")
    assert torch.equal(out[1], TF.horizontal_flip(padded[:, 2:10, 0:8]))


@pytest.mark.parametrize("augment_on,on_device", [("host", False), ("device", True), ("auto", False)])
def test_training_stream_decides_the_view_placement_and_both_give_the_same_samples(data, augment_on, on_device):
    """One entry point decides where the views are made (auto: the device only on a GPU; this
    machine is a CPU) and ships raw images exactly when it returns a device transform; either way
    step s of the stream is the same batch, carrying s."""
    from ulfine.data import training_stream

    spec = StreamSpec(8, 2, seed=3, strong_views=2)
    stream = training_stream(data, spec, torch.device("cpu"), augment_on, start_step=4)
    reference = next(ssl_batches(data, spec, start_step=4))
    host = next(stream.batches)
    assert (stream.device_views is not None) == on_device and host.step == reference.step == 4
    assert (host.u_s is None) == on_device  # raw images travel only to a device transform
    batch = stream.device_views(host) if on_device else host
    for field in ("x_l", "u_w", "u_s", "u_s2"):
        assert (getattr(batch, field).int() - getattr(reference, field).int()).abs().max().item() <= 1, field
    assert torch.equal(batch.idx_u, reference.idx_u)


def test_hue_preserving_strong_views_host_equal_device_and_never_draw_a_hue_op(data):
    """``data.strong_ops=hue_preserving``: the host's restricted RandAugment and the device's draws
    give the same views (same seeds), the four hue-moving ops never occur, and the ten others are
    drawn uniformly; ``all`` stays torchvision's table."""
    from ulfine.config.schema import HUE_CHANGING_OPS, RANDAUGMENT_OPS, STRONG_OP_SETS

    assert OPS == RANDAUGMENT_OPS  # ulfine's op table is torchvision's, in its order
    allowed = STRONG_OP_SETS["hue_preserving"]
    spec = StreamSpec(8, 2, seed=3, strong_views=2, strong_ops=allowed)
    host, raw = ssl_batches(data, spec, 5), ssl_batches(data, spec, 5, raw=True)
    augment = DeviceAugmenter(3, 8, 2, strong_views=2, strong_ops=allowed)
    for _ in range(3):
        h, d = next(host), augment(next(raw))
        for field in ("u_s", "u_s2"):
            assert (getattr(h, field).int() - getattr(d, field).int()).abs().max().item() <= 1
    full = next(ssl_batches(data, StreamSpec(8, 2, seed=3, strong_views=2), 5))
    assert not torch.equal(full.u_s, h.u_s) or not torch.equal(full.u_s2, h.u_s2)  # the op set matters
    n = 4000
    _, (strong,) = draw_params(list(range(n)), 32, strong_views=1, allowed=allowed)
    drawn = torch.bincount(strong.ops.flatten(), minlength=len(OPS)).float() / (2 * n)
    hue = torch.tensor([op in HUE_CHANGING_OPS for op in OPS])
    assert drawn[hue].sum() == 0
    tol = 4 * math.sqrt(0.1 * 0.9 / (2 * n))
    assert (drawn[~hue] - 0.1).abs().max() < tol


def test_strong_ops_are_validated_by_the_config():
    from ulfine.config import load_config
    from ulfine.errors import ConfigError

    assert load_config(None, ["data.strong_ops=[Rotate,Identity]"]).data.strong_ops == ["Rotate", "Identity"]
    with pytest.raises(ConfigError, match="strong_ops"):
        load_config(None, ["data.strong_ops=hue"])
    with pytest.raises(ConfigError, match="strong_ops"):
        load_config(None, ["data.strong_ops=[Rotate,Hue]"])
