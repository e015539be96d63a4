"""Which parameters of the image tower train: LP (none), LFT (injected modules), FFT (all)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from ..config.schema import PEFTConfig
from ..errors import ConfigError
from ..registry import FINETUNE_MODES
from .backbone import CLIPBackbone
from .peft import PEFT_MODULES

log = logging.getLogger(__name__)


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


@FINETUNE_MODES.register("lp")
def linear_probing(backbone: CLIPBackbone, peft: str, opts: PEFTConfig) -> str:
    """LP: tower frozen, features computed under no_grad in eval mode (no activations kept)."""
    backbone.frozen_features = True
    backbone.visual.eval()
    return "lp"


@FINETUNE_MODES.register("lft")
def lightweight_finetuning(backbone: CLIPBackbone, peft: str, opts: PEFTConfig) -> str:
    """LFT: tower frozen, ``PEFT_MODULES[peft]`` injected around open_clip's blocks."""
    PEFT_MODULES.get(peft)(backbone.visual, opts)
    return f"lft/{peft}"


@FINETUNE_MODES.register("fft")
def full_finetuning(backbone: CLIPBackbone, peft: str, opts: PEFTConfig) -> str:
    """FFT: every parameter of the image tower trains."""
    backbone.visual.requires_grad_(True)
    return "fft"


def apply_finetune(
    backbone: CLIPBackbone, finetune: str, peft: str = "adaptformer", opts: PEFTConfig | None = None
) -> ParamSummary:
    """Freeze the tower, then apply ``FINETUNE_MODES[finetune]`` in place (``peft`` used by lft).

    The text tower is never trained. Call once, before building the optimiser.
    """
    if backbone.finetune is not None:
        raise ConfigError(f"apply_finetune was already applied ({backbone.finetune}); build a new backbone")
    if finetune not in FINETUNE_MODES:
        raise ConfigError(f"finetune={finetune} is unknown; choose one of: {', '.join(FINETUNE_MODES.names())}")
    mode = FINETUNE_MODES.get(finetune)
    backbone.visual.requires_grad_(False)
    backbone.finetune = mode(backbone, peft, opts or PEFTConfig())
    summary = count_parameters(backbone)
    log.info("finetune=%s on %s: %s", backbone.finetune, backbone.arch, summary)
    return summary
