"""A trained model that predicts: :class:`Classifier` (what ``ulfine.load`` returns).

Why one class for run folders and model folders: both end as the same three modules (the
backbone's normaliser, the image tower and the method's decision head); prediction, the CLI's
``predict``, the ONNX export and the parity tests all go through :class:`DecisionModule`, so the
run folder, the exported folder and the ONNX graph cannot drift apart.

Images are turned into pixels as the evaluation set was: decoded to RGB and squashed (bicubic) to
the training data's native size (``input_size``; :func:`ulfine.data.image_array`), then resized
to the tower's size and normalised by the backbone's own statistics on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data import image_array
from ..data.decode import check_pixels
from ..engine.runtime import Runtime
from ..methods import Method
from ..models import CLIPBackbone, DeviceNormalizer

#: what :meth:`Classifier.predict` accepts per image
ImageLike = str | Path | Image.Image | np.ndarray


class DecisionModule(nn.Module):
    """uint8 (B, 3, h, w) -> (B, K) decision logits: normalise, image tower, method's head.

    A method trained in feature mode holds the ``CachedFeatures`` stand-in, whose ``encode_image``
    is the identity; here the real tower computes those features from pixels first.
    """

    def __init__(self, backbone: CLIPBackbone, method: Method, normalizer: DeviceNormalizer,
                 feature_mode: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.normalizer = normalizer
        self.feature_mode = feature_mode

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalizer(images)
        if self.feature_mode:
            x = self.backbone.encode_image(x)
        return self.method.predict(x).float()


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, most probable first."""

    labels: list[str]
    indices: list[int]
    probs: list[float]


def to_pixels(image: ImageLike, size: int) -> np.ndarray:
    """One image (a path, a PIL image or a uint8 (H, W[, 3]) array) as uint8 (size, size, 3).

    Raises ``OSError``/``ValueError`` (PIL's) for a file that is not a readable image, and
    :class:`~ulfine.data.decode.ImageTooLargeError` (a ``ValueError``) for one over the decode bound.
    """
    if isinstance(image, (str, Path)):
        with Image.open(image) as img:
            check_pixels(img)  # refuse a decompression bomb from its header, before decoding
            return image_array(img, size)
    if isinstance(image, Image.Image):
        return image_array(image, size)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"an image array must be uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
        return image_array(Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[2] == 1 else image),
                           size)
    raise TypeError(f"cannot read an image from {type(image).__name__}; pass a path, a PIL image or a uint8 array")


def _as_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image or several; a 4-D uint8 array is a batch (N, H, W, 3)."""
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


class Classifier:
    """A trained ulfine model: ``.class_names``, ``.predict(images, topk)``, ``.logits(images)``.

    Built by :func:`ulfine.apps.model_io.load` from a run folder or an exported model folder.
    """

    def __init__(self, module: DecisionModule, class_names: Sequence[str], input_size: int, rt: Runtime,
                 info: dict[str, Any]) -> None:
        self.module = module.eval()
        self.class_names = list(class_names)
        self.input_size = int(input_size)
        self.rt = rt
        self.info = info  # where it came from: source, method, arch, weights (for humans and cards)

    @property
    def device(self) -> torch.device:
        return self.rt.device

    @property
    def model_size(self) -> int:
        """The square size the image tower sees (the ONNX graph's input size)."""
        return self.module.normalizer.size

    def pixels(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """uint8 (N, 3, input_size, input_size) of ``images``, as the model reads them."""
        arrays = [to_pixels(im, self.input_size) for im in _as_list(images)]
        if not arrays:
            return torch.empty(0, 3, self.input_size, self.input_size, dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def logits_of_pixels(self, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(N, K) float32 CPU decision logits of uint8 (N, 3, h, w) pixels, in batches."""
        out = [torch.empty(0, len(self.class_names))]
        for start in range(0, pixels.shape[0], batch_size):
            with self.rt.autocast():
                out.append(self.module(pixels[start : start + batch_size].to(self.device)).float().cpu())
        return torch.cat(out)

    def logits(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 64) -> torch.Tensor:
        """(N, K) decision logits (the method's ``predict``) of ``images``."""
        return self.logits_of_pixels(self.pixels(images), batch_size)

    def probabilities(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 64) -> torch.Tensor:
        """(N, K) softmax of the decision logits."""
        return torch.softmax(self.logits(images, batch_size), dim=-1)

    def top_k(self, logits: torch.Tensor, k: int) -> list[Prediction]:
        """The ``k`` most probable classes of each row of ``logits``."""
        k = max(1, min(int(k), len(self.class_names)))
        probs, idx = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
        return [Prediction([self.class_names[i] for i in row.tolist()], row.tolist(), p.tolist())
                for row, p in zip(idx, probs)]

    def predict(self, images: ImageLike | Sequence[ImageLike], topk: int = 5, batch_size: int = 64) -> list[Prediction]:
        """Top-``topk`` classes and probabilities of each image (paths, PIL images or uint8 arrays).

        >>> clf = ulfine.load("models/my_model")
        >>> clf.predict(["cat.jpg"], topk=3)[0].labels
        """
        return self.top_k(self.logits(images, batch_size), topk)

    def __repr__(self) -> str:
        return (f"Classifier({len(self.class_names)} classes, method={self.info.get('method')}, "
                f"arch={self.info.get('arch')}, device={self.device}, source={self.info.get('source')})")


__all__ = ["Classifier", "DecisionModule", "ImageLike", "Prediction", "to_pixels"]
