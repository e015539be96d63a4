"""Zero-shot classification of uint8 images by text prompts, for any pair of CLIP encoders.

Why: pretraining reports it as its success measure, the shipped-weights test pins it, and the
demo shows it as the first row; all three must compute it the same way. Normalisation is the
backbone's own (:class:`ulfine.models.preprocess.DeviceNormalizer`), never a copy of it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..models.archs import MICRO_ARCH, arch_preprocess
from ..models.preprocess import DeviceNormalizer
from .world import IMAGE_SIZE


def micro_normalizer() -> DeviceNormalizer:
    """The normaliser of ``ulfine-micro-vit`` (32 px; mean/std/interpolation it is registered with).

    Why: pretraining builds a bare open_clip model (no :class:`~ulfine.models.CLIPBackbone`), so
    it takes the statistics from the same registry the backbone reads them from.
    """
    cfg = arch_preprocess(MICRO_ARCH)
    return DeviceNormalizer(IMAGE_SIZE, cfg["mean"], cfg["std"], cfg.get("interpolation", "bicubic"))


def as_uint8_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy -> uint8 (N, 3, H, W) tensor view: the layout the normaliser takes.

    Why a view (channels-last strides) and not a contiguous copy: the encoders then see the
    memory layout they always saw here, so zero-shot numbers stay as measured. The micro world's
    arrays are read-only; torch wants a writable buffer, so that case is copied once.
    """
    return torch.from_numpy(np.require(images, requirements=["C", "W"])).permute(0, 3, 1, 2)


@torch.no_grad()
def zero_shot_predict(
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    text_features: torch.Tensor,
    images: np.ndarray,
    normalizer: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 512,
) -> np.ndarray:
    """Predicted class per image: argmax of cosine similarity to the (K, D) text features.

    ``normalizer`` maps a uint8 (B, 3, H, W) batch to model input, e.g.
    ``normalizer_for(backbone.preprocess)`` or :func:`micro_normalizer`.
    """
    protos = F.normalize(text_features.float(), dim=-1)
    preds = []
    for i in range(0, len(images), batch_size):
        x = normalizer(as_uint8_nchw(images[i : i + batch_size]))
        feats = F.normalize(encode_image(x).float(), dim=-1)
        preds.append((feats @ protos.T).argmax(dim=-1).cpu().numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of every class (NaN for a class with no test image)."""
    out = np.full(num_classes, np.nan)
    for k in range(num_classes):
        sel = labels == k
        if sel.any():
            out[k] = float((pred[sel] == k).mean())
    return out
