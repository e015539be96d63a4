"""Contiguous attention inputs for open_clip's batch-first towers, without touching attention.

Why: open_clip builds ``nn.MultiheadAttention(batch_first=True)``. Outside torch's fused inference
fast path (training, or gradients wanted), the module transposes its (N, L, D) input to a
non-contiguous (L, N, D) view and hands it to the packed input projection; torch's CPU matmul then
takes a per-position batched path, 4-5x slower than the same projection on a contiguous tensor
(45% of a ViT-B/16 step at 224 px; docs/performance.md). These hooks hand the module the same
values as one contiguous (L, N, D) tensor with ``batch_first`` off for that call, and turn the
output back: the module's own forward (the same SDPA kernel, the same FLOPs) runs unchanged.
Where the fused fast path can run (eval mode without gradients, even head count) nothing changes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: set on a module whose hooks are installed (installing twice is a no-op)
_FLAG = "_ulfine_contiguous_layout"


def _fast_path_possible(module: nn.MultiheadAttention) -> bool:
    """The conditions of torch's fused inference path that a training step can change."""
    return not module.training and not torch.is_grad_enabled() and module.num_heads % 2 == 0


def _to_sequence_first(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook: (N, L, D) query/key/value -> one contiguous (L, N, D) tensor when the
    three are one (self-attention keeps its single packed projection)."""
    module.batch_first = True
    if len(args) < 3 or args[0].dim() != 3 or _fast_path_possible(module):
        return None
    q, k, v = args[:3]
    moved = {id(t): t.transpose(0, 1).contiguous() for t in (q, k, v)}
    module.batch_first = False
    return (moved[id(q)], moved[id(k)], moved[id(v)], *args[3:]), kwargs


def _to_batch_first(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> Any:
    """Forward hook: the (L, N, D) output back to (N, L, D), ``batch_first`` restored."""
    if module.batch_first:
        return output
    module.batch_first = True
    out, weights = output
    return out.transpose(0, 1), weights


def contiguous_attention_inputs(tower: nn.Module) -> int:
    """Install the hooks on every batch-first ``nn.MultiheadAttention`` of ``tower``; returns how
    many modules have them. Plain functions as hooks: deep copies (the EMA) keep working."""
    count = 0
    for module in tower.modules():
        if isinstance(module, nn.MultiheadAttention) and (module.batch_first or getattr(module, _FLAG, False)):
            if not getattr(module, _FLAG, False):
                module.register_forward_pre_hook(_to_sequence_first, with_kwargs=True)
                module.register_forward_hook(_to_batch_first, with_kwargs=True)
                setattr(module, _FLAG, True)
            count += 1
    return count


__all__ = ["contiguous_attention_inputs"]
