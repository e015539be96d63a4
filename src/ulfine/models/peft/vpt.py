"""VPT-deep (Jia et al., 2022): learnable prompt tokens after the CLS token in every block.

Forward pre-hooks on open_clip's own blocks insert (first prompted block) or replace (later
blocks) the prompts; a forward hook on the last block drops them, so pooling is unchanged.
Nothing of the block's forward is copied. VPT is *not* identity at initialisation: the
prompts (small random, as in VPT) take part in attention.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from .base import PEFT_MODULES, PEFTOptions, like, vit_blocks


class VPTOptions(PEFTOptions):
    """vpt: VPT-deep's prompt length (FineSSL's README runs 50)."""

    length: int = Field(10, ge=1, le=4096, description="VPT-deep prompt tokens per layer")



class BlockPrompts(nn.Module):
    """The prompt tokens of one block and the hooks that place them."""

    def __init__(self, length: int, width: int, patch_area: int, insert: bool, drop_after: bool, **factory) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(length, width, **factory))
        bound = math.sqrt(6.0 / float(3 * patch_area + width))  # VPT's xavier-style init
        nn.init.uniform_(self.prompts, -bound, bound)
        self.insert = insert  # first prompted block: add tokens; later blocks: overwrite them
        self.drop_after = drop_after

    @property
    def length(self) -> int:
        return self.prompts.shape[0]

    def pre_hook(self, module: nn.Module, args: tuple) -> tuple:
        x, rest = args[0], args[1:]
        p = self.prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        tail = x[:, 1:] if self.insert else x[:, 1 + self.length :]
        return (torch.cat([x[:, :1], p, tail], dim=1), *rest)

    def post_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out[:, :1], out[:, 1 + self.length :]], dim=1)


@PEFT_MODULES.register("vpt", options=VPTOptions)
def inject_vpt(visual: nn.Module, opts: VPTOptions) -> None:
    """Prompts of ``opts.length`` tokens in every (or the last k) block, as ``block.vpt``."""
    blocks = vit_blocks(visual, opts.last_k_blocks)
    ph, pw = visual.patch_size
    for i, block in enumerate(blocks):
        width = block.ln_1.normalized_shape[0]
        prompts = BlockPrompts(
            opts.length, width, ph * pw, insert=(i == 0), drop_after=(i == len(blocks) - 1),
            **like(next(block.parameters())),
        )
        block.vpt = prompts
        block.register_forward_pre_hook(prompts.pre_hook)  # bound methods: deepcopy-safe (EMA)
        if prompts.drop_after:
            block.register_forward_hook(prompts.post_hook)
