"""BitFit (Ben Zaken et al., 2022): train only the biases of the image tower."""

from __future__ import annotations

from torch import nn

from .base import PEFT_MODULES, PEFTOptions, vit_blocks


@PEFT_MODULES.register("bitfit", options=PEFTOptions)
def inject_bitfit(visual: nn.Module, opts: PEFTOptions) -> None:
    """Unfreeze every bias (``*.bias``, ``in_proj_bias``) of the tower, or only those inside the last k blocks."""
    modules = vit_blocks(visual, opts.last_k_blocks) if opts.last_k_blocks else [visual]
    if opts.last_k_blocks is None:
        vit_blocks(visual)  # same ViT check as the other LFT modules
    for module in modules:
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias" or leaf.endswith("_bias"):  # incl. MultiheadAttention.in_proj_bias
                p.requires_grad_(True)
