"""AdaptFormer (Chen et al., 2022): a parallel bottleneck beside each block's MLP."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...config.schema import PEFTConfig
from .base import PEFT_MODULES, like, vit_blocks


class Adapter(nn.Module):
    """``scale * up(relu(down(x)))`` with a zero up-projection: identity at initialisation."""

    def __init__(self, dim: int, bottleneck: int, scale: float, **factory) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck, **factory)
        self.act = nn.ReLU()
        self.up = nn.Linear(bottleneck, dim, **factory)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.act(self.down(x)))


class AdaptFormerMLP(nn.Module):
    """Wraps a block's MLP (kept as is): ``mlp(x) + adapter(x)`` on the same LN-ed input."""

    def __init__(self, mlp: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.adapter(x)


@PEFT_MODULES.register("adaptformer")
def inject_adaptformer(visual: nn.Module, opts: PEFTConfig) -> None:
    """Wrap ``block.mlp`` of every (or the last k) block; attention is untouched."""
    for block in vit_blocks(visual, opts.last_k_blocks):
        first = next(block.mlp.parameters())
        width = block.ln_2.normalized_shape[0]
        adapter = Adapter(width, opts.adaptformer_bottleneck, opts.adaptformer_scale, **like(first))
        block.mlp = AdaptFormerMLP(block.mlp, adapter)
