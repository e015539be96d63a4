"""Count which attention kernels a forward/backward really runs (fused SDPA vs explicit softmax).

A ``TorchDispatchMode`` sees every ATen op after autograd; fused attention shows up as one of the
SDPA kernels below (or as ``_native_multi_head_attention``, nn.MultiheadAttention's inference
fast path, which calls SDPA inside), while a hand-written attention shows up as ``_softmax`` on a
(B, H, L, L) tensor (counted as ``explicit_attention_softmax``). This is how the harness and the
tests verify that every fine-tuning mode keeps open_clip's fused attention.
"""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

FUSED_FORWARD = {
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "_native_multi_head_attention",
}


class AttentionKernelCounter(TorchDispatchMode):
    """Counts fused attention kernels (forward and backward) and explicit attention softmaxes."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.attention_softmax = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name in ("_softmax", "softmax") and args and getattr(args[0], "ndim", 0) == 4:
            self.attention_softmax += 1  # softmax over a (B, H, L, L) score matrix
        return func(*args, **(kwargs or {}))

    @property
    def fused_forward(self) -> int:
        return sum(n for op, n in self.ops.items() if op in FUSED_FORWARD)

    @property
    def fused_backward(self) -> int:
        return sum(n for op, n in self.ops.items()
                   if op.endswith("_backward") and op.removesuffix("_backward") in FUSED_FORWARD)

    def summary(self) -> dict[str, int | list[str]]:
        """JSON-friendly counts plus the names of the fused kernels seen."""
        kernels = sorted(op for op in self.ops
                         if op in FUSED_FORWARD or op.removesuffix("_backward") in FUSED_FORWARD)
        return {"fused_forward": self.fused_forward, "fused_backward": self.fused_backward,
                "explicit_attention_softmax": self.attention_softmax, "kernels": kernels}
