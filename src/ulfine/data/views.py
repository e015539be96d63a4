"""Image views at native resolution, and the on-device resize + normalisation.

Why this seam: augmenting a 32 px CIFAR image is ~50x cheaper than augmenting it after an
upsample to 224 px, and the upsample is one batched op on the GPU. So the loader augments
uint8 (3, h, w) tensors at native size (torchvision.transforms.v2) and :class:`DeviceNormalizer`
resizes the uint8 batch on the training device to the backbone's input size with the
backbone's interpolation, mean and std (taken from its preprocessing config, never hard-coded).

Weak view [B]: random crop with reflect padding of 1/8 of the side (4 px at 32, 28 at 224) and a
horizontal flip. Strong view [B]: weak + RandAugment(num_ops=2, magnitude=10). Test view: as is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

Transform = Callable[[torch.Tensor], torch.Tensor]


def crop_padding(size: int) -> int:
    """Reflect padding of the weak view: 1/8 of the side (at least 1 px)."""
    return max(1, size // 8)


def weak_view(size: int) -> Transform:
    """Random crop (reflect padding size/8) + horizontal flip on a uint8 (3, size, size) tensor."""
    return v2.Compose([
        v2.RandomCrop(size, padding=crop_padding(size), padding_mode="reflect"),
        v2.RandomHorizontalFlip(),
    ])


def strong_view(size: int, num_ops: int = 2, magnitude: int = 10) -> Transform:
    """Weak view followed by RandAugment(num_ops, magnitude) (FixMatch's strong view)."""
    return v2.Compose([weak_view(size), v2.RandAugment(num_ops=num_ops, magnitude=magnitude)])


def test_view() -> Transform:
    """No augmentation (evaluation, and labeled images when ``augment=False``)."""
    return v2.Identity()


@dataclass
class Views:
    """The three views of one native size."""

    weak: Transform
    strong: Transform
    test: Transform


def build_views(size: int) -> Views:
    """Weak, strong and test views for images of side ``size``."""
    return Views(weak_view(size), strong_view(size), test_view())


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
