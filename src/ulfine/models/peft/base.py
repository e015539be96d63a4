"""What every lightweight fine-tuning (LFT) module needs: the registry and the ViT's blocks."""

from __future__ import annotations

from collections.abc import Callable

from open_clip.transformer import VisionTransformer
from pydantic import Field
from torch import nn

from ...config.schema import Section
from ...errors import ConfigError
from ...registry import PEFT_MODULES as _PEFT_MODULES
from ...registry import Registry


class PEFTOptions(Section):
    """What every LFT module accepts; a module's own options class extends it and is registered
    with it (``PEFT_MODULES.register("vpt", options=VPTOptions)``), so the config validates the
    section of the same name (``vpt.length=50``) and the module receives it typed."""

    last_k_blocks: int | None = Field(
        None, ge=1, description="inject the module only in the last k residual blocks (null: all)")


#: name -> inject(visual, opts): adds trainable modules / unfreezes parameters in place
#: (``ulfine.registry.PEFT_MODULES``, typed here); ``opts`` is the module's registered options
PEFT_MODULES: Registry[Callable[[nn.Module, PEFTOptions], None]] = _PEFT_MODULES


def vit_blocks(visual: nn.Module, last_k: int | None = None) -> list[nn.Module]:
    """The residual blocks of an open_clip ViT tower (only the last ``last_k`` when given)."""
    if not isinstance(visual, VisionTransformer):
        raise ConfigError(
            f"finetune=lft needs an open_clip VisionTransformer image tower, got "
            f"{type(visual).__name__}; use finetune=lp or finetune=fft with this model.arch"
        )
    if not getattr(visual.transformer, "batch_first", True):
        raise ConfigError("finetune=lft needs a batch-first open_clip transformer")
    blocks = list(visual.transformer.resblocks)
    if last_k is not None:
        if last_k > len(blocks):
            raise ConfigError(f"last_k_blocks={last_k} but the tower has {len(blocks)} blocks")
        blocks = blocks[-last_k:]
    return blocks


def like(weight: nn.Parameter) -> dict:
    """Factory kwargs so injected parameters match the tower's device and dtype."""
    return {"device": weight.device, "dtype": weight.dtype}


def peft_options(peft: str, **values: object) -> PEFTOptions:
    """The validated options of PEFT module ``peft`` (its registered class; defaults for the rest),
    for code that applies fine-tuning without a whole run config."""
    options_class = PEFT_MODULES.options().get(peft, PEFTOptions)
    return options_class(**values)
