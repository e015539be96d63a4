"""Section (d): FLOPs of one training step (torch.utils.flop_counter) and matmul peak FLOP/s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args,
                       out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA SDPA kernels but not the CPU flash kernel: same formula.
CPU_SDPA = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def count_step_flops(step: Callable[[], Any]) -> dict[str, Any]:
    """Total FLOPs of one call of ``step`` (forward, backward, optimiser), by operator."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_SDPA)
    with counter:
        step()
    by_op = {str(op).split(".")[-1] if "." in str(op) else str(op): int(n)
             for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(counter.get_total_flops()), "by_op": by_op}


def fraction(step_flops: int, step_seconds: float, matmul_flops_per_s: float) -> dict[str, float]:
    """Achieved FLOP/s of a step and its fraction of the matmul peak."""
    achieved = step_flops / step_seconds
    return {"achieved_flops_per_s": achieved, "fraction_of_matmul": achieved / matmul_flops_per_s}
