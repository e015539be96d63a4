"""LoRA (Hu et al., 2021) on attention weights via ``torch.nn.utils.parametrize``.

``attn.in_proj_weight`` (q,k,v stacked) and optionally ``attn.out_proj.weight`` become
``W + (alpha/r) B A`` while ``nn.MultiheadAttention``'s own (fused, SDPA) forward still runs.
B is zero-initialised, so the model is unchanged at initialisation.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from .base import PEFT_MODULES, PEFTOptions, like, vit_blocks


class LoRAOptions(PEFTOptions):
    """lora: rank, scaling numerator and which attention weights get the update."""

    rank: int = Field(8, ge=1, le=4096)
    alpha: float = Field(8.0, gt=0)
    targets: list[Literal["qkv", "out"]] = Field(["qkv"], min_length=1)



class LoRAWeight(nn.Module):
    """Parametrisation ``W -> W + scaling * B @ A`` with A (r,in), B (out,r)."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, **factory) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.rank = rank
        self.scaling = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scaling * (self.lora_B @ self.lora_A).to(weight.dtype)


def _add(module: nn.Module, name: str, rank: int, alpha: float) -> None:
    weight = getattr(module, name)
    out_f, in_f = weight.shape
    parametrize.register_parametrization(module, name, LoRAWeight(out_f, in_f, rank, alpha, **like(weight)))


@PEFT_MODULES.register("lora", options=LoRAOptions)
def inject_lora(visual: nn.Module, opts: LoRAOptions) -> None:
    """LoRA on ``targets`` (qkv and/or out) of every (or the last k) block."""
    for block in vit_blocks(visual, opts.last_k_blocks):
        if "qkv" in opts.targets:
            _add(block.attn, "in_proj_weight", opts.rank, opts.alpha)
        if "out" in opts.targets:
            _add(block.attn.out_proj, "weight", opts.rank, opts.alpha)
