"""Assemble a run from its config: data split, backbone + fine-tuning, text prototypes, method.

Shared by training and by :func:`ulfine.engine.evaluate_run`, so a reloaded run is rebuilt by
exactly the code that trained it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config
    from ..methods.base import Method

log = logging.getLogger("ulfine.engine")


@dataclass
class RunParts:
    """Everything a loop or an evaluation needs, on its device."""

    data: Any  # ulfine.data.SSLData
    backbone: nn.Module
    method: "Method"
    normalizer: nn.Module  # uint8 (B,3,h,w) on the device -> normalised float at model size
    param_summary: Any  # ulfine.models ParamSummary(trainable, total) of the backbone
    device: torch.device


def build_normalizer(backbone: nn.Module) -> nn.Module:
    """The DeviceNormalizer matching the backbone's preprocessing (never guessed)."""
    from ..models import normalizer_for

    return normalizer_for(backbone.preprocess)


def build_parts(cfg: "Config", device: torch.device, data: Any | None = None) -> RunParts:
    """Data (unless given), backbone with ``finetune``/``peft`` applied, prototypes and method."""
    from .. import methods as _methods  # noqa: F401  (registers the methods)
    from ..data import build_ssl_data
    from ..methods.base import METHODS, MethodContext
    from ..models import apply_finetune, build_backbone, text_prototypes

    method_cls = METHODS.get(cfg.method)
    if data is None:
        data = build_ssl_data(cfg.data, cfg.seed)
    if method_cls.uses_unlabeled and (data.unlabeled is None or len(data.unlabeled) == 0):
        raise ConfigError(
            f"method {cfg.method!r} needs unlabeled data but the split has none; set "
            "data.num_unlabeled_head > 0 or use method=supervised"
        )
    backbone = build_backbone(cfg.model, device=device)
    summary = apply_finetune(backbone, cfg.finetune, cfg.peft, cfg.peft_options)
    backbone.to(device)
    with torch.no_grad():
        prototypes = text_prototypes(
            backbone, data.class_names, cfg.model.templates, cache_dir=cfg.model.text_cache_dir
        ).to(device)
    ctx = MethodContext(
        num_classes=len(data.class_names),
        class_names=list(data.class_names),
        labeled_counts=torch.as_tensor(data.labeled_counts, dtype=torch.long),
        text_prototypes=prototypes,
        logit_scale=float(backbone.logit_scale),
        num_unlabeled=len(data.unlabeled) if data.unlabeled is not None else 0,
        feature_dim=int(backbone.embed_dim),
    )
    method = method_cls(cfg, backbone, ctx).to(device)
    return RunParts(data, backbone, method, build_normalizer(backbone).to(device), summary, device)


def trainable_parameter_count(method: nn.Module) -> int:
    """Number of parameters the optimiser updates (backbone modules and heads)."""
    return sum(p.numel() for p in method.parameters() if p.requires_grad)


__all__ = ["RunParts", "build_normalizer", "build_parts", "trainable_parameter_count"]
