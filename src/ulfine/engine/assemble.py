"""The one place that assembles a run from its config.

Seeding, the data split (checked against the run folder's ``split.json`` when there is one),
the backbone with its fine-tuning strategy, the text prototypes (none for a backbone without a
text tower: ``ctx.text_prototypes`` is None), the feature-mode decision and the method.
Training, re-evaluation and everything that loads a finished run later (prediction, export) go
through :func:`assemble_run`, so a reloaded run is rebuilt by exactly the code that
trained it. The order of the steps fixes how the global RNG is consumed (random backbones, PEFT
and head initialisation), so a run is the same whoever assembles it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Config, DataConfig
from ..data import DATASETS, SSLData, build_ssl_data, check_split
from ..data.splits import SPLIT_FILE
from ..errors import ConfigError
from ..methods import METHODS, Method, MethodContext
from ..models import (
    CachedFeatures,
    CLIPBackbone,
    DeviceNormalizer,
    ParamSummary,
    ScratchBackbone,
    apply_finetune,
    build_backbone,
    input_size,
    normalizer_for,
    text_prototypes,
)
from ..registry import FINETUNE_MODES
from .runtime import Runtime
from .seeding import seed_everything

log = logging.getLogger("ulfine.engine")


@dataclass
class RunParts:
    """Everything a trainer, an evaluation or a predictor needs, on its device."""

    cfg: Config
    data: SSLData
    backbone: CLIPBackbone | ScratchBackbone  # the real one (in feature mode it computes the features)
    method: Method  # its backbone is ``backbone``, or a CachedFeatures stand-in in feature mode
    normalizer: DeviceNormalizer  # uint8 (B,3,h,w) on the device -> normalised model input
    param_summary: ParamSummary  # trainable / total parameters of the backbone
    feature_mode: bool  # the method sees cached features of the frozen tower, not images
    device: torch.device


def uses_features(cfg: Config) -> bool:
    """True when this run trains/evaluates on cached features of a frozen tower.

    When the image tower cannot change and no augmentation is asked for -- ``method=zeroshot``, or
    ``finetune=lp`` with ``data.augment=false`` for a method that does not use unlabeled views --
    every epoch would push the same pixels through the same tower (``cache.features=false`` turns
    this off).
    """
    method_cls = METHODS.get(cfg.method)
    if not cfg.cache.features:
        return False
    if not method_cls.trains:
        return True
    return FINETUNE_MODES.get(cfg.finetune).frozen_tower and not cfg.data.augment and not method_cls.uses_unlabeled


def data_config(cfg: Config) -> DataConfig:
    """``cfg.data``, with a dataset that has no native size (a user's folder) read at the
    backbone's input size unless ``data.image_size`` says otherwise."""
    if cfg.data.image_size is None and DATASETS.get(cfg.data.dataset).native_size is None:
        return cfg.data.model_copy(update={"image_size": input_size(cfg.model.arch)})
    return cfg.data


def build_data(cfg: Config, run_dir: Path | None) -> SSLData:
    """The seeded split; when ``run_dir`` holds a ``split.json``, the data must give the same split
    (``data.root`` may change on resume or re-evaluation, the split may not)."""
    data = build_ssl_data(data_config(cfg), cfg.seed)
    if run_dir is not None and (run_dir / SPLIT_FILE).is_file():
        check_split(data, run_dir)
    return data


def check_unlabeled(cfg: Config, data: SSLData) -> None:
    """Fail early when the method needs unlabeled data and the split has none."""
    if METHODS.get(cfg.method).uses_unlabeled and (data.unlabeled is None or len(data.unlabeled) == 0):
        raise ConfigError(
            f"method {cfg.method!r} needs unlabeled data but the split has none; set "
            "data.num_unlabeled_head > 0 or use method=supervised"
        )


def unlabeled_from_labeled(data: SSLData) -> torch.Tensor | None:
    """(N_u,) bool: which unlabeled samples are labeled images too (``data.labeled_in_unlabeled``).
    Split membership, known by construction; None when the unlabeled set is another pool."""
    lab, unl = data.indices.get("labeled"), data.indices.get("unlabeled")
    if data.unlabeled is None or lab is None or unl is None or unl.pool != lab.pool:
        return None
    return torch.from_numpy(np.isin(unl.indices, lab.indices))


def method_context(cfg: Config, backbone: CLIPBackbone | ScratchBackbone, data: SSLData, rt: Runtime,
                   prototypes: torch.Tensor | None) -> MethodContext:
    """What the method may know: class names and labeled counts, never unlabeled ground truth."""
    return MethodContext.from_facts(
        backbone, data.class_names, data.labeled_counts, prototypes,
        len(data.unlabeled) if data.unlabeled is not None else 0, rt.collectives(),
        steps_per_epoch=cfg.train.steps_per_epoch, unlabeled_from_labeled=unlabeled_from_labeled(data),
    )


def class_prototypes(cfg: Config, backbone: CLIPBackbone | ScratchBackbone, data: SSLData,
                     device: torch.device) -> torch.Tensor | None:
    """The text prototypes of the class names; None for a backbone without a text tower."""
    if not backbone.has_text:
        return None
    with torch.no_grad():
        return text_prototypes(
            backbone, data.class_names, cfg.model.templates, cache_dir=cfg.model.text_cache_dir
        ).to(device)


def note_batch_statistics(cfg: Config, rt: Runtime, backbone: CLIPBackbone | ScratchBackbone) -> None:
    """Say when BatchNorm makes processes / accumulation change the model, not only summation order:
    its statistics are those of each micro-batch on each process (as in FixMatch's, ACR's and
    USB's code), so 1 vs N processes or grad_accum 1 vs A train slightly different models."""
    if backbone.batch_statistics and (rt.world_size > 1 or cfg.optim.grad_accum > 1):
        log.warning("model.arch=%s uses BatchNorm: its statistics come from each process's micro-batch "
                    "(%d processes x grad_accum %d), so this run is not the 1-process, 1-micro-batch one",
                    cfg.model.arch, rt.world_size, cfg.optim.grad_accum)


@dataclass
class ModelParts:
    """A run's model without its data: what prediction and export need."""

    backbone: CLIPBackbone | ScratchBackbone
    method: Method
    normalizer: DeviceNormalizer
    param_summary: ParamSummary
    feature_mode: bool


def assemble_model(cfg: Config, rt: Runtime, backbone: CLIPBackbone | ScratchBackbone, ctx: MethodContext,
                   feature_mode: bool = False) -> ModelParts:
    """Fine-tuning applied to ``backbone`` and the method built on it, on ``rt.device``.

    Why apart from :func:`assemble_run`: an exported model folder has no data, only the class
    names, counts and prototypes its ``config.json`` and ``model.safetensors`` carry; it is built
    by this same code so that its tensors load into exactly the modules that trained them.
    """
    summary = apply_finetune(backbone, cfg.finetune, cfg.peft, cfg.options_for(cfg.peft))
    note_batch_statistics(cfg, rt, backbone)
    backbone.to(rt.device)
    seen_by_method: nn.Module = CachedFeatures(backbone) if feature_mode else backbone
    method = METHODS.get(cfg.method).from_config(cfg, seen_by_method, ctx).to(rt.device)
    normalizer = normalizer_for(backbone.preprocess).to(rt.device)
    return ModelParts(backbone, method, normalizer, summary, feature_mode)


def assemble_run(cfg: Config, rt: Runtime, run_dir: Path | None = None) -> RunParts:
    """Seed, split (checked against ``run_dir/split.json``), backbone + fine-tuning, text
    prototypes and method, in this order, on ``rt.device``."""
    seed_everything(cfg.seed)
    data = build_data(cfg, run_dir)
    check_unlabeled(cfg, data)
    backbone = build_backbone(cfg.model, device=rt.device)
    # the text tower is frozen and consumes no RNG: its prototypes may come before fine-tuning
    prototypes = class_prototypes(cfg, backbone, data, rt.device)
    ctx = method_context(cfg, backbone, data, rt, prototypes)
    model = assemble_model(cfg, rt, backbone, ctx, feature_mode=uses_features(cfg))
    return RunParts(cfg, data, model.backbone, model.method, model.normalizer, model.param_summary,
                    model.feature_mode, rt.device)


def trainable_parameter_count(method: nn.Module) -> int:
    """Number of parameters the optimiser updates (backbone modules and heads)."""
    return sum(p.numel() for p in method.parameters() if p.requires_grad)


__all__ = ["ModelParts", "RunParts", "assemble_model", "assemble_run", "build_data", "trainable_parameter_count",
           "uses_features"]
