"""Zero-shot classification of uint8 images by text prompts, for any pair of CLIP encoders.

Why: pretraining reports it as its success measure, the shipped-weights test pins it, and the
demo shows it as the first row; all three must compute it the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def to_model_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W) (the micro model needs no resize)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def zero_shot_predict(
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    text_features: torch.Tensor,
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
) -> np.ndarray:
    """Predicted class per image: argmax of cosine similarity to the (K, D) text features."""
    protos = F.normalize(text_features.float(), dim=-1)
    preds = []
    for i in range(0, len(images), batch_size):
        feats = F.normalize(encode_image(to_model_input(images[i : i + batch_size], mean, std)).float(), dim=-1)
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
