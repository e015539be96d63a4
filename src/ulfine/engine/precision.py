"""Resolve ``train.device`` and ``train.precision`` into what Accelerate and autocast need.

``auto`` means bf16 autocast on a CUDA device that supports it, fp32 elsewhere; ``fp16`` uses
autocast with a gradient scaler (CUDA only); ``bf16`` on CPU is allowed (CPU autocast).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

ACCELERATE_NAMES = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> str:
    """'cpu' or 'cuda' for ``train.device`` (auto: CUDA when available)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """'fp32' | 'bf16' | 'fp16' actually used on ``device``."""
    if precision == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return precision


__all__ = ["ACCELERATE_NAMES", "AUTOCAST_DTYPES", "resolve_device", "resolve_precision"]
