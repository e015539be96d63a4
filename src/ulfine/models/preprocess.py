"""Input preprocessing that belongs with the backbone: uint8 images -> normalised model input.

Why here (models layer): the size, interpolation, mean and std come from the weights'
preprocessing config (:class:`ulfine.models.backbone.PreprocessConfig`), never from a dataset,
so the batch type, the feature cache, evaluation and prediction all normalise through this one
module. The data layer hands over uint8 images at native size; the resize is one batched op on
the training device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

if TYPE_CHECKING:
    from .backbone import PreprocessConfig


def _interpolation(mode: str | InterpolationMode) -> InterpolationMode:
    if isinstance(mode, InterpolationMode):
        return mode
    try:
        return InterpolationMode(str(mode).lower())
    except ValueError:
        raise ValueError(f"unknown interpolation {mode!r}; use bicubic, bilinear or nearest") from None


class DeviceNormalizer(nn.Module):
    """uint8 (B, 3, h, w) on the device -> normalised float (B, 3, size, size).

    ``mean``/``std``/``interpolation`` come from the backbone's preprocessing config (CLIP's own
    statistics, never CIFAR's). Resizing uses antialiasing (it only matters when downsampling),
    and bicubic overshoot is clamped to [0, 1] as PIL does on uint8 images. On the CPU a uint8
    batch is resized as uint8 (rounded as PIL does; about 3x faster), on accelerators in float.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 interpolation: str | InterpolationMode = "bicubic") -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need 3 values (RGB)")
        self.size = int(size)
        self.interpolation = _interpolation(interpolation)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale_u8", 1.0 / (255.0 * self.std), persistent=False)
        self.register_buffer("shift", self.mean / self.std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, h, w) batch, got shape {tuple(x.shape)}")
        resize = x.shape[-2:] != (self.size, self.size)
        if resize and x.dtype == torch.uint8 and x.device.type == "cpu":
            # CPU: resize the uint8 batch itself in channels-last layout (torch's vectorised
            # uint8 kernels, 20-40x faster than float; rounded and clamped as PIL does).
            x = x.contiguous(memory_format=torch.channels_last)
            x = TF.resize(x, [self.size, self.size], interpolation=self.interpolation, antialias=True)
            resize = False
        if x.dtype == torch.uint8 and not resize:
            # (x / 255 - mean) / std as one scale and one shift, in place on the float copy
            return x.to(self.mean.dtype).mul_(self.scale_u8).sub_(self.shift)
        out = x.to(self.mean.dtype) / 255.0 if x.dtype == torch.uint8 else x.to(self.mean.dtype)
        if resize:
            out = TF.resize(out, [self.size, self.size], interpolation=self.interpolation, antialias=True)
            if self.interpolation == InterpolationMode.BICUBIC:
                out = out.clamp_(0.0, 1.0)
        return (out - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation.value}"


def normalizer_for(preprocess: "PreprocessConfig") -> DeviceNormalizer:
    """The DeviceNormalizer of a backbone's preprocessing config (never guessed)."""
    size = preprocess.size if isinstance(preprocess.size, int) else preprocess.size[0]
    return DeviceNormalizer(size, preprocess.mean, preprocess.std, preprocess.interpolation)


__all__ = ["DeviceNormalizer", "normalizer_for"]
