"""ONNX export of a :class:`~ulfine.apps.classifier.Classifier`, checked against PyTorch.

The graph is the classifier's :class:`~ulfine.apps.classifier.DecisionModule`: uint8 RGB
``(B, 3, S, S)`` at the tower's input size S -> normalisation -> image tower with its PEFT
modules -> the method's decision head -> ``(B, K)`` logits. Resizing stays outside the graph
(antialiased bicubic resizing has no exact ONNX counterpart); ``ulfine predict`` and
:meth:`Classifier.pixels` show how images are prepared.

Why a parity check at export time: open_clip users report ONNX graphs that silently diverge from
PyTorch; the export runs both on sample images and refuses a graph whose logits differ by more
than :data:`PARITY_ATOL` (printed either way). onnx and onnxruntime are an optional extra
(``pip install 'ulfine[onnx]'``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UlfineError
from .classifier import Classifier

log = logging.getLogger("ulfine.apps")

#: largest accepted |logit difference| between ONNX Runtime and PyTorch (fp32, CPU) at export
PARITY_ATOL = 1e-3
OPSET = 18


def _import_onnx() -> tuple[object, object]:
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as exc:
        raise UlfineError(f"ONNX export needs the onnx extra ({exc.name} is missing): "
                          "pip install 'ulfine[onnx]'") from None
    return onnx, onnxruntime


def model_size_pixels(classifier: Classifier, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels resized to the tower's input size (the graph's input), antialiased bicubic."""
    size = classifier.model_size
    if pixels.shape[-2:] == (size, size):
        return pixels
    x = F.interpolate(pixels.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def onnx_logits(path: Path, pixels: torch.Tensor) -> np.ndarray:
    """ONNX Runtime's (CPU) logits of uint8 ``(B, 3, S, S)`` pixels."""
    _, ort = _import_onnx()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    return session.run(["logits"], {"images": pixels.numpy()})[0]


def export_onnx(classifier: Classifier, path: Path, samples: torch.Tensor) -> float:
    """Write ``path`` (one graph, dynamic batch) and return the largest |logit difference| to
    PyTorch on ``samples`` (uint8 ``(N, 3, h, w)``); fails above :data:`PARITY_ATOL`."""
    onnx, _ = _import_onnx()
    module = classifier.module.to("cpu").eval()
    pixels = model_size_pixels(classifier, samples.cpu())
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on unused opset features
        program = torch.onnx.export(module, (pixels,), dynamo=True, input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), opset_version=OPSET, verbose=False)
    program.save(str(path))
    onnx.checker.check_model(str(path))  # type: ignore[attr-defined]
    with torch.no_grad():
        expected = module(pixels).float().numpy()
    diff = float(np.abs(onnx_logits(path, pixels) - expected).max()) if len(pixels) else 0.0
    print(f"ONNX parity: max |logit difference| to PyTorch = {diff:.2e} on {len(pixels)} sample images "
          f"(tolerance {PARITY_ATOL:g}); graph {path}")
    if not diff <= PARITY_ATOL:
        path.unlink(missing_ok=True)
        raise UlfineError(f"the ONNX graph's logits differ from PyTorch's by {diff:.3g} > {PARITY_ATOL:g}; "
                          "not written (please report this with the run's config)")
    return diff


__all__ = ["OPSET", "PARITY_ATOL", "export_onnx", "model_size_pixels", "onnx_logits"]
