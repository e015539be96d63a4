"""Which parameters of the image tower train: LP (none), LFT (injected modules), FFT (all)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from ..config.schema import PEFTConfig
from ..errors import ConfigError
from .backbone import CLIPBackbone
from .peft import PEFT_MODULES

log = logging.getLogger(__name__)
FINETUNE_MODES = ("lp", "lft", "fft")


@dataclass(frozen=True)
class ParamSummary:
    """Trainable and total parameters of the backbone (image tower + injected modules)."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} / {self.total:,} parameters ({100 * self.fraction:.3f}%)"


def count_parameters(module: nn.Module) -> ParamSummary:
    """Count (trainable, total) parameters, each shared tensor once."""
    params = {id(p): p for p in module.parameters()}.values()
    return ParamSummary(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def apply_finetune(
    backbone: CLIPBackbone, finetune: str, peft: str = "adaptformer", opts: PEFTConfig | None = None
) -> ParamSummary:
    """Freeze/unfreeze/inject in place for ``finetune`` in lp|lft|fft (``peft`` used by lft).

    lp: tower frozen, features computed under no_grad in eval mode (no activations kept).
    lft: tower frozen, ``PEFT_MODULES[peft]`` injected (ViT towers only). fft: tower trainable.
    The text tower is never trained. Call once, before building the optimiser.
    """
    if backbone.finetune is not None:
        raise ConfigError(f"apply_finetune was already applied ({backbone.finetune}); build a new backbone")
    if finetune not in FINETUNE_MODES:
        raise ConfigError(f"finetune={finetune} is unknown; choose one of: {', '.join(FINETUNE_MODES)}")
    opts = opts or PEFTConfig()
    visual = backbone.visual
    visual.requires_grad_(False)
    if finetune == "lp":
        backbone.frozen_features = True
        visual.eval()
    elif finetune == "fft":
        visual.requires_grad_(True)
    else:
        PEFT_MODULES.get(peft)(visual, opts)
    backbone.finetune = finetune if finetune != "lft" else f"lft/{peft}"
    summary = count_parameters(backbone)
    log.info("finetune=%s on %s: %s", backbone.finetune, backbone.arch, summary)
    return summary
