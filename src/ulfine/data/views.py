"""Image views at native resolution (the on-device resize + normalisation is
:class:`ulfine.models.preprocess.DeviceNormalizer`, which belongs with the backbone).

Why this seam: augmenting a 32 px CIFAR image is ~50x cheaper than augmenting it after an
upsample to 224 px, and the upsample is one batched op on the GPU. So the loader augments
uint8 (3, h, w) tensors at native size (torchvision.transforms.v2) and :class:`DeviceNormalizer`
resizes the uint8 batch on the training device to the backbone's input size with the
backbone's interpolation, mean and std (taken from its preprocessing config, never hard-coded).

Weak view [B]: random crop with reflect padding of 1/8 of the side (4 px at 32, 28 at 224) and a
horizontal flip. Strong view [B]: weak + RandAugment(num_ops=2, magnitude=10). Test view: as is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from ..config.schema import RANDAUGMENT_OPS

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


STRONG_NUM_OPS, STRONG_MAGNITUDE = 2, 10  # FixMatch's RandAugment(n=2, m=10) [B]


def strong_view(size: int, num_ops: int = STRONG_NUM_OPS, magnitude: int = STRONG_MAGNITUDE,
                ops: tuple[str, ...] = RANDAUGMENT_OPS) -> Transform:
    """Weak view followed by RandAugment(num_ops, magnitude) (FixMatch's strong view), drawing its
    ops only from ``ops`` (``data.strong_ops``; torchvision draws uniformly over its table)."""
    randaugment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
    if ops != RANDAUGMENT_OPS:  # the instance's own table: the same draw over the allowed ops
        randaugment._AUGMENTATION_SPACE = {k: v for k, v in randaugment._AUGMENTATION_SPACE.items() if k in ops}
    return v2.Compose([weak_view(size), randaugment])


def test_view() -> Transform:
    """No augmentation (evaluation, and labeled images when ``augment=False``)."""
    return v2.Identity()


@dataclass
class Views:
    """The three views of one native size."""

    weak: Transform
    strong: Transform
    test: Transform


def build_views(size: int, strong_ops: tuple[str, ...] = RANDAUGMENT_OPS) -> Views:
    """Weak, strong (drawing from ``strong_ops``) and test views for images of side ``size``."""
    return Views(weak_view(size), strong_view(size, ops=strong_ops), test_view())
