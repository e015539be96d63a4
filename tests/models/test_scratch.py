"""Scratch backbones: the registry, WRN-28-2's layout and size, ResNet-50's stem, what the config
refuses for a backbone without text, and the one-pass forward of BatchNorm backbones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ulfine.batch import Batch
from ulfine.config import load_config
from ulfine.config.schema import ModelConfig
from ulfine.errors import ConfigError
from ulfine.methods import METHODS, MethodContext
from ulfine.models import ScratchBackbone, apply_finetune, build_backbone
from ulfine.registry import BACKBONES


# WRN-28-2 by hand: stem 3->16; groups 16->32, 32->64, 64->128 of 4 blocks; 3x3 convs, no biases;
# BN (2 params per channel) before every conv pair except in the first block of groups 2 and 3,
# whose conv reads the raw input; a 1x1 shortcut where widths change; a final BN of 128.
def _group(c_in: int, c_out: int, first_activated: bool) -> int:
    first = 2 * c_in * first_activated + 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + c_in * c_out
    rest = 2 * c_out + 9 * c_out * c_out + 2 * c_out + 9 * c_out * c_out
    return first + 3 * rest


WRN_28_2 = 9 * 3 * 16 + _group(16, 32, True) + _group(32, 64, False) + _group(64, 128, False) + 2 * 128


def test_scratch_archs_are_registered_and_built_by_the_one_factory():
    assert {"wrn-28-2", "resnet50"} <= set(BACKBONES.names())
    b = build_backbone(ModelConfig(arch="wrn-28-2", pretrained="none"))
    assert isinstance(b, ScratchBackbone) and not b.has_text and b.batch_statistics
    assert b.preprocess.size == 32 and b.preprocess.mean == (0.4914, 0.4822, 0.4465)
    assert sum(p.numel() for p in b.parameters()) == WRN_28_2 == 1_466_128
    # with ACR's two 128x10 classifiers (and the two unused BatchNorms of the reference code,
    # 2 x (32 + 64) parameters) it is the 1.47 M ACR's log prints (1,468,900)
    assert WRN_28_2 + 2 * (128 * 10 + 10) + 2 * (32 + 64) == 1_468_900
    out = b.encode_image(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 128)


def test_wrn_first_blocks_of_later_groups_convolve_their_raw_input():
    wrn = build_backbone(ModelConfig(arch="wrn-28-2", pretrained="none")).visual
    firsts = [wrn.blocks[i] for i in (0, 4, 8)]
    assert firsts[0].pre is not None and firsts[1].pre is None and firsts[2].pre is None
    assert all(wrn.blocks[i].pre is not None for i in range(12) if i not in (4, 8))
    bn = [m for m in wrn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {m.momentum for m in bn} == {0.001}


def test_resnet50_small_image_stem_and_size():
    b = build_backbone(ModelConfig(arch="resnet50", pretrained="none", image_size=64))
    assert b.preprocess.size == 64 and b.embed_dim == 2048
    assert b.visual.conv1.kernel_size == (3, 3) and b.visual.conv1.stride == (1, 1)
    assert isinstance(b.visual.maxpool, nn.Identity)
    feats = b.encode_image(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, 2048)


def test_finetune_fft_trains_every_weight():
    b = build_backbone(ModelConfig(arch="wrn-28-2", pretrained="none"))
    assert not any(p.requires_grad for p in b.parameters())
    summary = apply_finetune(b, "fft")
    assert summary.trainable == summary.total == WRN_28_2


@pytest.mark.parametrize(("override", "message"), [
    ("model.pretrained=openai", "trains from scratch: set model.pretrained=none"),
    ("finetune=lp", "use finetune=fft"),
    ("finetune=lft", "use finetune=fft"),
    ("head=prototype", "head=prototype initialises the classifier from text prototypes; use head=linear"),
    ("method=zeroshot", "zero-shot classifies with text prototypes"),
    ("method=ulfine", "ULFine's prototype branch starts from text prototypes"),
])
def test_config_refuses_what_a_scratch_backbone_cannot_do(override, message):
    base = ["model.arch=wrn-28-2", "model.pretrained=none", "finetune=fft", "head=linear", "method=fixmatch"]
    load_config(None, base)  # the base itself is fine
    with pytest.raises(ConfigError, match="invalid config: model") as err:
        load_config(None, [*base, override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_image_size_only_for_scratch_backbones():
    with pytest.raises(ConfigError, match="model.image_size applies to scratch backbones only"):
        load_config(None, ["model.image_size=64"])


@pytest.mark.parametrize("arch", ["wrn-28-2", "resnet50"])
def test_bn_momentum_sets_every_batchnorm_and_defaults_to_the_reference(arch):
    """model.bn_momentum replaces the running-statistics momentum of every BatchNorm (a cut budget
    needs a faster one); unset, the arch keeps its reference value (WRN: 0.001, torchvision: 0.1)."""
    def momenta(*extra: str) -> set[float]:
        cfg = load_config(None, [f"model.arch={arch}", "model.pretrained=none", "finetune=fft", "method=fixmatch",
                                 "head=linear", *extra])
        net = build_backbone(cfg.model, "meta")
        return {m.momentum for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

    assert momenta() == {0.001 if arch == "wrn-28-2" else 0.1}
    assert momenta("model.bn_momentum=0.01") == {0.01}
    with pytest.raises(ConfigError, match="model.bn_momentum applies to scratch backbones only"):
        load_config(None, ["model.bn_momentum=0.01"])


class _CountingWRN(nn.Module):
    """A tiny BatchNorm network that records the batch sizes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        return self.bn(self.conv(x)).mean((2, 3))


def _method(backbone: nn.Module):
    cfg = load_config(None, ["method=fixmatch", "head=linear"])
    ctx = MethodContext(3, ["a", "b", "c"], torch.tensor([3, 2, 1]), None, float("nan"), 8, 4)
    return METHODS.get("fixmatch").from_config(cfg, backbone, ctx)


def test_batchnorm_backbones_see_every_view_in_one_pass():
    """FixMatch's code feeds labeled, weak and strong views through one forward pass so BatchNorm's
    statistics are the whole step's; a LayerNorm tower keeps the no-grad weak pass apart."""
    visual = _CountingWRN()
    backbone = ScratchBackbone(visual, arch="tiny-bn", preprocess=None, embed_dim=4)  # type: ignore[arg-type]
    backbone.visual.requires_grad_(True)
    m = _method(backbone)
    x = torch.randn
    b = Batch(x(2, 3, 8, 8), torch.tensor([0, 1]), x(4, 3, 8, 8), x(4, 3, 8, 8), torch.arange(4), u_s2=x(4, 3, 8, 8))
    feats = m.view_features(b)
    assert visual.seen == [14]  # 2 labeled + 3 x 4 unlabeled views, one pass
    assert [feats[k].shape[0] for k in ("x_l", "u_w", "u_s", "u_s2")] == [2, 4, 4, 4]
    assert not feats["u_w"].requires_grad and feats["u_s"].requires_grad
    backbone.batch_statistics = False  # as a CLIP tower: the weak views alone, without gradient
    visual.seen.clear()
    feats = m.view_features(b)
    assert visual.seen == [4, 10]
    # the one-pass features are the batch-statistics features of the whole step
    backbone.batch_statistics = True
    visual.seen.clear()
    joint = m.view_features(b)
    whole = visual(torch.cat([b.x_l, b.u_w, b.u_s, b.u_s2]))
    torch.testing.assert_close(joint["u_s2"], whole[-4:])
