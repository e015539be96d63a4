"""Which parameters of the image tower train: LP (none), LFT (injected modules), FFT (all)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..registry import FINETUNE_MODES
from .backbone import CLIPBackbone
from .peft import PEFT_MODULES
from .peft.base import PEFTOptions, peft_options

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


@dataclass(frozen=True)
class FinetuneMode:
    """A registered fine-tuning mode and the facts the engine reads from it (never its name).

    ``frozen_tower``: the image tower's weights never change (its features can be cached);
    ``trains_whole_tower``: every tower weight trains (the heaviest memory footprint).
    """

    apply: Callable[[CLIPBackbone, str, PEFTOptions | None], str]
    frozen_tower: bool
    trains_whole_tower: bool
    doc: str = ""


def register_finetune_mode(name: str, *, frozen_tower: bool, trains_whole_tower: bool = False
                           ) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Register ``apply(backbone, peft, opts) -> description`` as fine-tuning mode ``name`` with its facts."""

    def deco(fn: Callable[..., str]) -> Callable[..., str]:
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        FINETUNE_MODES.register(name)(FinetuneMode(fn, frozen_tower, trains_whole_tower, doc))
        return fn

    return deco


@register_finetune_mode("lp", frozen_tower=True)
def linear_probing(backbone: CLIPBackbone, peft: str, opts: PEFTOptions | None) -> str:
    """LP: tower frozen, features computed under no_grad in eval mode (no activations kept)."""
    backbone.frozen_features = True
    backbone.visual.eval()
    return "lp"


@register_finetune_mode("lft", frozen_tower=False)
def lightweight_finetuning(backbone: CLIPBackbone, peft: str, opts: PEFTOptions | None) -> str:
    """LFT: tower frozen, ``PEFT_MODULES[peft]`` injected around open_clip's blocks."""
    PEFT_MODULES.get(peft)(backbone.visual, opts if opts is not None else peft_options(peft))
    return f"lft/{peft}"


@register_finetune_mode("fft", frozen_tower=False, trains_whole_tower=True)
def full_finetuning(backbone: CLIPBackbone, peft: str, opts: PEFTOptions | None) -> str:
    """FFT: every parameter of the image tower trains."""
    backbone.visual.requires_grad_(True)
    return "fft"


def apply_finetune(
    backbone: CLIPBackbone, finetune: str, peft: str = "adaptformer", opts: PEFTOptions | None = None
) -> ParamSummary:
    """Freeze the tower, then apply ``FINETUNE_MODES[finetune]`` in place (``peft`` used by lft).

    ``opts``: the PEFT module's own options (its defaults when None). The text tower is never
    trained. Call once, before building the optimiser.
    """
    if backbone.finetune is not None:
        raise ConfigError(f"apply_finetune was already applied ({backbone.finetune}); build a new backbone")
    if finetune not in FINETUNE_MODES:
        raise ConfigError(f"finetune={finetune} is unknown; choose one of: {', '.join(FINETUNE_MODES.names())}")
    mode: FinetuneMode = FINETUNE_MODES.get(finetune)
    backbone.visual.requires_grad_(False)
    backbone.finetune = mode.apply(backbone, peft, opts)
    summary = count_parameters(backbone)
    log.info("finetune=%s on %s: %s", backbone.finetune, backbone.arch, summary)
    return summary
