"""Backbones trained from scratch, the long-tailed SSL field's standard: no weights, no text tower.

``model.arch=wrn-28-2`` is the Wide ResNet every LTSSL paper trains at 32 px (ACR, USB, DASO,
SimPro: depth 28, widen factor 2, about 1.5 M parameters); ``model.arch=resnet50`` is
torchvision's ResNet-50 with the small-image stem the field uses for ImageNet-127 at 32/64 px.
Both are registered in :data:`ulfine.registry.BACKBONES`; :func:`ulfine.models.build_backbone`
looks an arch up there first and in open_clip otherwise.

A :class:`ScratchBackbone` offers what the engine and the methods use of a CLIP backbone
(``visual``, ``encode_image``, ``preprocess``, ``embed_dim``, ``arch``, ``weights_id``) and says
that it has no text tower (``has_text = False``: no text prototypes are computed, and methods
that need them are refused when the config is validated) and whether it normalises with batch
statistics (``batch_statistics``: FixMatch-style methods then feed every view of a step through
one forward pass, as the reference implementations do). Only ``finetune=fft`` applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from ..config.schema import ModelConfig
from ..errors import ConfigError
from ..registry import BACKBONES
from .preprocess import PreprocessConfig

#: CIFAR-10 training-set statistics, used by ACR/FixMatch/USB code for their 32 px WRNs
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)
#: ImageNet-127 statistics from ACR's small-ImageNet loader (dataset/cifar.py)
IMAGENET127_MEAN = (0.48109809, 0.45747185, 0.40785507)
IMAGENET127_STD = (0.26040889, 0.2532126, 0.26820634)
BN_MOMENTUM = 0.001  # the WRN's BatchNorm: running <- 0.999 running + 0.001 batch (reference code)
LEAKY_SLOPE = 0.1


def _act(channels: int) -> nn.Sequential:
    """BatchNorm then LeakyReLU(0.1): the WRN's pre-activation."""
    return nn.Sequential(nn.BatchNorm2d(channels, momentum=BN_MOMENTUM), nn.LeakyReLU(LEAKY_SLOPE))


class WideBlock(nn.Module):
    """Pre-activation basic block of the SSL WRN.

    The block's input is pre-activated (BN, LeakyReLU) when the widths match, or when
    ``activate_input`` (first block of the network); the first block of the later groups
    convolves its raw input, as the reference WRN of FixMatch/ACR/USB does (there the
    pre-activation is computed and discarded, so it is simply absent here). The shortcut is the
    identity, or a strided 1x1 convolution of the (possibly activated) input when widths differ.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, activate_input: bool) -> None:
        super().__init__()
        self.pre = _act(c_in) if (c_in == c_out or activate_input) else None
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.mid = _act(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x) if self.pre is not None else x
        out = self.conv2(self.mid(self.conv1(h)))
        if self.shortcut is None:
            return x + out
        return self.shortcut(h) + out


class WideResNet(nn.Module):
    """(B, 3, H, W) -> (B, 64 * widen) pooled features; the classifier belongs to the method."""

    def __init__(self, depth: int = 28, widen: int = 2) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        groups = []
        for g, stride in enumerate((1, 2, 2)):
            c_in, c_out = widths[g], widths[g + 1]
            groups += [WideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1,
                                 activate_input=(g == 0 and i == 0)) for i in range(n)]
        self.blocks = nn.Sequential(*groups)
        self.head_act = _act(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.output_dim = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.head_act(self.blocks(self.stem(x)))).flatten(1)


def small_image_resnet50() -> nn.Module:
    """torchvision's ResNet-50 (random init) with a 3x3 stride-1 stem and no max-pool, the
    layout the field trains on 32/64 px ImageNet-127 (ACR's models/resnet.py); fc removed."""
    net = torchvision.models.resnet50(weights=None)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.output_dim = 2048
    return net


def set_bn_momentum(module: nn.Module, momentum: float) -> None:
    """Give every BatchNorm of ``module`` this running-statistics momentum (``model.bn_momentum``).

    Why: the reference WRN's 0.001 suits 250,000 steps; a run cut to a few thousand would evaluate
    with statistics still partly those of the random start (0.999^2000 = 14%).
    """
    for m in _batch_norms(module):
        m.momentum = momentum


def _batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _has_batch_norm(module: nn.Module) -> bool:
    return bool(_batch_norms(module))


class ScratchBackbone(nn.Module):
    """A randomly initialised image network behind the backbone interface the engine uses."""

    has_text = False

    def __init__(self, visual: nn.Module, *, arch: str, preprocess: PreprocessConfig, embed_dim: int) -> None:
        super().__init__()
        visual.requires_grad_(False)  # nothing trains until apply_finetune says so (fft)
        self.visual = visual
        self.arch = arch
        self.weights_id = f"none:{arch}"
        self.preprocess = preprocess
        self.embed_dim = int(embed_dim)
        self.logit_scale = float("nan")  # no CLIP joint space
        self.batch_statistics = _has_batch_norm(visual)
        self.frozen_features = False
        self.finetune: str | None = None

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,s,s) normalised images -> (B, embed_dim) pooled features."""
        return self.visual(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)


@dataclass(frozen=True)
class ScratchSpec:
    """A registered scratch architecture: its network, input preparation and what applies to it."""

    arch: str
    network: Callable[[], nn.Module]  # -> module mapping (B,3,s,s) to (B, embed_dim)
    embed_dim: int
    size: int  # default input side (model.image_size overrides it)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str
    finetune_modes: tuple[str, ...] = ("fft",)  # from scratch, every weight must train
    has_text: bool = False

    def create(self, cfg: ModelConfig, device: str | torch.device = "cpu") -> ScratchBackbone:
        """This arch with random weights at ``cfg.image_size`` px (default: the arch's own); the
        global torch RNG draws the initialisation (seeded by the run)."""
        if cfg.pretrained != "none":
            raise ConfigError(f"model.arch={self.arch} trains from scratch: set model.pretrained=none")
        preprocess = PreprocessConfig(cfg.image_size or self.size, self.mean, self.std, "bilinear")
        if str(device) == "meta":
            with torch.device("meta"):
                visual = self.network()
        else:
            visual = self.network().to(device)
        if cfg.bn_momentum is not None:
            set_bn_momentum(visual, cfg.bn_momentum)
        return ScratchBackbone(visual, arch=self.arch, preprocess=preprocess, embed_dim=self.embed_dim)


def register_scratch() -> None:
    """Register ulfine's scratch archs (once; importing ulfine.models calls it)."""
    specs = [
        ScratchSpec("wrn-28-2", lambda: WideResNet(28, 2), 128, 32, CIFAR_MEAN, CIFAR_STD,
                    "Wide ResNet 28-2 (1.5 M parameters) at 32 px: CIFAR-10/100-LT, STL-10-LT"),
        ScratchSpec("resnet50", small_image_resnet50, 2048, 32, IMAGENET127_MEAN, IMAGENET127_STD,
                    "torchvision ResNet-50, small-image stem: ImageNet-127 at 32/64 px"),
    ]
    for spec in specs:
        if spec.arch not in BACKBONES:
            BACKBONES.register(spec.arch)(spec)


__all__ = ["ScratchBackbone", "ScratchSpec", "WideResNet", "register_scratch", "set_bn_momentum",
           "small_image_resnet50"]
