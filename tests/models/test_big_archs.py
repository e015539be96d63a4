"""Real CLIP ViT sizes with random weights: injection works, counts and shapes are right."""

from __future__ import annotations

import pytest
import torch

from ulfine.config.schema import ModelConfig
from ulfine.models import apply_finetune, build_backbone

# (width, layers, embed_dim, patch) from open_clip's model configs
# Each case at 224 px takes ~5-20 s on 2 shared cores. The fast suite keeps B/32 with
# AdaptFormer (default) and VPT (changes the token count); `make test-all` runs the rest.
SLOW = {("ViT-B-16", p) for p in ("adaptformer", "vpt", "lora", "bitfit")} | {
    ("ViT-B-32", "lora"),
    ("ViT-B-32", "bitfit"),
}
ARCHS = {"ViT-B-16": (768, 12, 512, 16), "ViT-B-32": (768, 12, 512, 32), "ViT-L-14": (1024, 24, 768, 14)}


def expected_trainable(arch: str, peft: str) -> int:
    w, n, _, _ = ARCHS[arch]
    return {
        "adaptformer": n * ((w * 64 + 64) + (64 * w + w) + 2 * w),  # down, up, own LayerNorm
        "vpt": n * 10 * w,
        "lora": n * 8 * (w + 3 * w),
        "bitfit": n * (w + 3 * w + w + w + 4 * w + w) + 2 * w,
    }[peft]


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("peft", ["adaptformer", "vpt", "lora", "bitfit"])
def test_injection_counts_on_the_meta_device(arch, peft):
    b = build_backbone(ModelConfig(arch=arch, pretrained="none"), device="meta")
    total = sum(p.numel() for p in b.parameters())
    s = apply_finetune(b, "lft", peft, None)
    assert s.trainable == expected_trainable(arch, peft)
    assert s.total == total + (0 if peft == "bitfit" else s.trainable)
    assert b.embed_dim == ARCHS[arch][2] and b.preprocess.size == 224


FORWARD_CASES = [
    pytest.param(arch, peft, marks=[pytest.mark.slow] if (arch, peft) in SLOW else [])
    for arch in ("ViT-B-16", "ViT-B-32")
    for peft in ("adaptformer", "vpt", "lora", "bitfit")
]


@pytest.mark.parametrize("arch,peft", FORWARD_CASES)
def test_forward_and_backward_with_every_module(arch, peft):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    b = build_backbone(ModelConfig(arch=arch, pretrained="none"))
    apply_finetune(b, "lft", peft)
    b.train()
    out = b.encode_image(x)
    assert out.shape == (1, ARCHS[arch][2])
    out.pow(2).sum().backward()
    grads = [p.grad for p in b.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads[-4:]) > 0  # the last block's module learns
    assert all(p.grad is None for p in b.parameters() if not p.requires_grad)
