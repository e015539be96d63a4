"""The one batch type of a training step, from the loader to the method's loss.

Why one type, defined at the bottom of the house: the data layer builds it (uint8 images at
native size on the host), the feature cache builds it (precomputed (B, D) features), the engine
moves it to the device and cuts it into accumulation micro-batches, and a method reads it; none
of them copies fields by name. Unlabeled ground truth has no field here, so it cannot reach a
method through a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

#: fields holding images (or features): the ones a normaliser applies to
IMAGE_FIELDS = ("x_l", "u_w", "u_s", "u_s2")


@dataclass
class Batch:
    """One step's labeled (and unlabeled) inputs.

    ``x_l``/``u_w``/``u_s`` are uint8 (B, 3, h, w) images on the host, normalised float images
    on the device after :meth:`to`, or (B, D) features of a frozen tower (feature mode).
    With ``data.augment_on=device`` the host batch carries the raw images (``x_l`` unaugmented,
    ``u_w`` the unlabeled image, ``u_s`` None) until :class:`ulfine.data.device_augment.DeviceAugmenter`
    makes the views on the device.
    ``u_s2`` is a second strong view of the same unlabeled images, for methods that ask for two
    (``Method.strong_views = 2``, ACR); None otherwise.
    ``idx_u`` are indices into the unlabeled set (for per-sample memories such as PAF's P_u);
    ``step`` is the optimiser step the batch belongs to.
    """

    x_l: torch.Tensor
    y_l: torch.Tensor
    u_w: torch.Tensor | None = None
    u_s: torch.Tensor | None = None
    idx_u: torch.Tensor | None = None
    step: int = 0
    u_s2: torch.Tensor | None = None

    @property
    def num_labeled(self) -> int:
        return int(self.y_l.shape[0])

    @property
    def num_unlabeled(self) -> int:
        return 0 if self.u_w is None else int(self.u_w.shape[0])

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def pin_memory(self) -> Batch:
        """Pinned host copy (the DataLoader calls this when ``pin_memory=True``)."""
        return replace(self, **{k: t.pin_memory() for k, t in self._tensors().items()})

    def to(self, device: torch.device | str,
           normalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Batch:
        """This batch on ``device``; image fields also go through ``normalize`` there (e.g. the
        backbone's :class:`~ulfine.models.preprocess.DeviceNormalizer`), so the host only ever
        ships uint8 at native size. Labels and indices become int64."""
        moved: dict[str, torch.Tensor] = {}
        for name, t in self._tensors().items():
            t = t.to(device, non_blocking=True)
            moved[name] = t if name in IMAGE_FIELDS else t.long()
        batch = replace(self, **moved)
        return batch if normalize is None else batch.map_images(normalize)

    def map_images(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        """The batch with ``fn`` applied to each image field (normalisation, augmentation)."""
        return replace(self, **{k: fn(getattr(self, k)) for k in IMAGE_FIELDS if getattr(self, k) is not None})

    def split(self, n: int) -> list[Batch]:
        """``n`` micro-batches of (nearly) equal size, every field cut alike (grad accumulation)."""
        if n == 1:
            return [self]
        chunks = {k: torch.chunk(t, n) for k, t in self._tensors().items()}
        return [replace(self, **{k: c[i] for k, c in chunks.items()}) for i in range(n)]


__all__ = ["IMAGE_FIELDS", "Batch"]
