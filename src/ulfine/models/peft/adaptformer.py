"""AdaptFormer (Chen et al., 2022): a parallel bottleneck beside each block's MLP.

The published form (``adaptformer.layernorm=own``, the default) is the one of AdaptFormer's code
(ShoufaChen/AdaptFormer, ``adapter_layernorm_option="in"``) and of FineSSL, whose ``model.py``
(Gank0078/FineSSL@76b6f48) it was checked against with golden vectors
(``tests/golden/test_peft.py``)::

    x = x + attn(ln_1(x))                                   # the block's attention, unchanged
    x = x + mlp(ln_2(x)) + s * up(drop(relu(down(LN(x)))))  # the adapter reads x itself

FineSSL's ``model.py`` at that commit:

- lines 485-486: ``adapt_x = adaptformer(x, add_residual=False)`` on the residual stream right
  after the attention residual, i.e. the input of ``ln_2`` (not its output);
- lines 112-113: the adapter's own trainable ``nn.LayerNorm`` ("in"), default init (1, 0);
- lines 115-120: ``down`` -> ReLU -> dropout -> ``up`` -> ``* scale``; dropout p=0.1 (line 68,
  never overridden by ``ViT_Tuner``), active only in training (``training=self.training``);
- lines 104-108: down Kaiming-uniform (a=sqrt 5), up weight and both biases zero: identity at
  initialisation;
- lines 506-512: ``x = mlp(ln_2(x)) + adapt_x`` (``ffn_opt="parallel"``), then the residual;
- bottleneck 64 (``ffn_num``), scale 0.1 (``adapter_scalar``), not learnable
  (``utils/config.py`` lines 42-46).

``adaptformer.layernorm=block`` [R] is ulfine's earlier form: no LayerNorm of its own, the adapter
reads the block's frozen ``ln_2`` output (``mlp(h) + adapter(h)``, ``h = ln_2(x)``).

Nothing of open_clip's block forward is copied (it calls ``self.mlp(self.ln_2(x))``): ``block.mlp``
is wrapped, and for the published form a forward hook on ``block.ln_2`` (a module-level function,
so ``copy.deepcopy`` for EMA and pickling keep working) hands the wrapper ``(ln_2(x), x)``. No
tensor is stored on a module between calls. With a LayerScale tower (``ls_2``) the scale applies to
the sum; CLIP towers have none.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from .base import PEFT_MODULES, PEFTOptions, like, vit_blocks


class AdaptFormerOptions(PEFTOptions):
    """adaptformer: bottleneck width, output scale, dropout and what the adapter reads."""

    bottleneck: int = Field(64, ge=1, le=65536, description="adapter bottleneck width")
    scale: float = Field(0.1, description="factor on the adapter's output (AdaptFormer: 0.1)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0,
                           description="dropout after the ReLU, training only (AdaptFormer/FineSSL: 0.1)")
    layernorm: Literal["own", "block"] = Field(
        "own", description="own: the adapter's trainable LayerNorm on the block's residual input "
        "(AdaptFormer/FineSSL); block [R]: the frozen ln_2 output, no LayerNorm of its own")


class Adapter(nn.Module):
    """``scale * up(dropout(relu(down(ln(x)))))``; ``ln`` is None in the ``block`` form.

    Zero up-projection (weight and bias): identity at initialisation, as in FineSSL.
    """

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float = 0.1,
                 own_layernorm: bool = True, **factory) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim, **factory) if own_layernorm else None
        self.down = nn.Linear(dim, bottleneck, **factory)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim, **factory)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ln is not None:
            x = self.ln(x)
        return self.scale * self.up(self.dropout(self.act(self.down(x))))


def pass_residual_input(module: nn.Module, args: tuple, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward hook on ``block.ln_2``: its output *and* its input, ``(ln_2(x), x)``, go to the
    wrapped MLP (open_clip calls ``self.mlp(self.ln_2(x))`` with nothing in between)."""
    return out, args[0]


class AdaptFormerMLP(nn.Module):
    """Wraps a block's MLP (kept as is).

    ``own`` form: called with ``(ln_2(x), x)`` (see :func:`pass_residual_input`), returns
    ``mlp(ln_2(x)) + adapter(x)``; ``block`` form: called with ``h = ln_2(x)``, returns
    ``mlp(h) + adapter(h)``.
    """

    def __init__(self, mlp: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, h: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if self.adapter.ln is None:
            return self.mlp(h) + self.adapter(h)
        if not isinstance(h, tuple):
            raise RuntimeError("AdaptFormer (layernorm=own) needs (ln_2(x), x): the forward hook "
                               "pass_residual_input on block.ln_2 is missing")
        h, x = h
        return self.mlp(h) + self.adapter(x)


@PEFT_MODULES.register("adaptformer", options=AdaptFormerOptions)
def inject_adaptformer(visual: nn.Module, opts: AdaptFormerOptions) -> None:
    """Wrap ``block.mlp`` of every (or the last k) block (and hook ``block.ln_2`` for the
    published form); attention is untouched."""
    own = opts.layernorm == "own"
    for block in vit_blocks(visual, opts.last_k_blocks):
        first = next(block.mlp.parameters())
        width = block.ln_2.normalized_shape[0]
        adapter = Adapter(width, opts.bottleneck, opts.scale, opts.dropout, own_layernorm=own, **like(first))
        block.mlp = AdaptFormerMLP(block.mlp, adapter)
        if own:
            block.ln_2.register_forward_hook(pass_residual_input)
