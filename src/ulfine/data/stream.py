"""The one entry point of a training run's data: the host batches and, when the views are made on
the training device, the batched transform that makes them there.

Why here and not in the engine: where the views are made (loader workers on the host, or
:class:`~ulfine.data.device_augment.DeviceAugmenter` on the device) decides what the host must
ship (augmented views, or raw images); both halves must agree, so one function decides both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from ..batch import Batch
from .device_augment import DeviceAugmenter
from .loaders import StreamSpec, ssl_batches
from .splits import SSLData

AugmentOn = Literal["auto", "host", "device"]


def views_on_device(augment_on: AugmentOn, device: torch.device) -> bool:
    """``data.augment_on``: host workers, the device, or auto (the device when it is a GPU)."""
    return augment_on == "device" or (augment_on == "auto" and device.type == "cuda")


@dataclass
class TrainingStream:
    """This rank's endless host batches and the on-device view transform (None: views made on
    the host). ``device_views`` takes the batch already on the device."""

    batches: Iterator[Batch]
    device_views: Callable[[Batch], Batch] | None


def training_stream(data: SSLData, spec: StreamSpec, device: torch.device, augment_on: AugmentOn,
                    start_step: int = 0, rank: int = 0, world_size: int = 1) -> TrainingStream:
    """The stream of steps ``start_step`` on, with the views placed as ``augment_on`` asks;
    either placement yields the same samples (docs/performance.md)."""
    on_device = views_on_device(augment_on, device)
    augmenter = (DeviceAugmenter(spec.seed, spec.batch_size, spec.mu, rank, world_size,
                                 augment_labeled=spec.augment, strong_views=spec.strong_views,
                                 strong_ops=spec.strong_ops)
                 if on_device else None)
    return TrainingStream(ssl_batches(data, spec, start_step, rank, world_size, raw=on_device), augmenter)


__all__ = ["AugmentOn", "TrainingStream", "training_stream", "views_on_device"]
