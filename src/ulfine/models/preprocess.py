"""Input preprocessing that belongs with the backbone: uint8 images -> normalised model input.

Why here (models layer): the size, interpolation, mean and std come from the weights'
preprocessing config (:class:`PreprocessConfig`), never from a dataset,
so the batch type, the feature cache, evaluation and prediction all normalise through this one
module. The data layer hands over uint8 images at native size; the resize is one batched op on
the training device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class PreprocessConfig:
    """How images must be prepared for these weights (taken from the weights, never guessed)."""

    size: int | tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> "PreprocessConfig":
        size = cfg["size"]
        if isinstance(size, (tuple, list)):
            size = int(size[0]) if size[0] == size[1] else (int(size[0]), int(size[1]))
        return cls(int(size) if isinstance(size, int) else size,
                   tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"))


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
    statistics, never CIFAR's). Resizing uses antialiasing (it only matters when downsampling)
    and follows PIL, the reference of CLIP's preprocessing: on the CPU a uint8 batch is resized as
    uint8 (torch's PIL-like kernels, about 3x faster), elsewhere in float by :meth:`resize_float`,
    which matches PIL to about one grey level (tests/data/test_views_loaders.py).
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
        if x.shape[-2:] != (self.size, self.size):
            if x.dtype == torch.uint8 and x.device.type == "cpu":
                # channels-last uint8: torch's vectorised kernels, 20-40x faster than float,
                # rounded and clamped as PIL does
                x = TF.resize(x.contiguous(memory_format=torch.channels_last), [self.size, self.size],
                              interpolation=self.interpolation, antialias=True)
            else:
                x = self.resize_float(x)
        if x.dtype == torch.uint8:
            # (x / 255 - mean) / std as one scale and one shift, in place on the float copy
            return x.to(self.mean.dtype).mul_(self.scale_u8).sub_(self.shift)
        return (x.to(self.mean.dtype) - self.mean) / self.std

    def resize_float(self, x: torch.Tensor) -> torch.Tensor:
        """Resize in float (uint8 input is scaled to [0, 1]): the path accelerators take.

        Width first, then height, clamping to [0, 1] in between, as PIL's two uint8 passes do: a
        single 2-D float resize carries the first pass's bicubic overshoot into the second and
        ends up to 24 grey levels away from PIL on sharp edges and noise.
        """
        out = x.to(self.mean.dtype) / 255.0 if x.dtype == torch.uint8 else x.to(self.mean.dtype)
        for shape in ([out.shape[-2], self.size], [self.size, self.size]):
            out = TF.resize(out, shape, interpolation=self.interpolation, antialias=True)
            if self.interpolation == InterpolationMode.BICUBIC:
                out = out.clamp_(0.0, 1.0)
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation.value}"


def normalizer_for(preprocess: "PreprocessConfig") -> DeviceNormalizer:
    """The DeviceNormalizer of a backbone's preprocessing config (never guessed)."""
    size = preprocess.size if isinstance(preprocess.size, int) else preprocess.size[0]
    return DeviceNormalizer(size, preprocess.mean, preprocess.std, preprocess.interpolation)


__all__ = ["DeviceNormalizer", "normalizer_for"]
