"""The benchmark's naive reference is a fair comparison: same function as open_clip, same FLOPs,
and the attention-kernel counter tells the fused path (ulfine, every mode) from the naive one."""

from __future__ import annotations

import torch
from _attention import AttentionKernelCounter
from naive_reference import NaiveViT

from ulfine.config.schema import ModelConfig
from ulfine.models import apply_finetune, build_backbone


def _backbone(finetune: str | None = None):
    torch.manual_seed(0)
    bb = build_backbone(ModelConfig(arch="ulfine-micro-vit", pretrained="none", text_cache_dir=None))
    if finetune:
        apply_finetune(bb, finetune, "adaptformer", None)
    return bb


def test_naive_forward_matches_open_clip() -> None:
    visual = _backbone().visual.train()
    with torch.no_grad():  # make every weight matter (random init leaves some at 0/1)
        for p in visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    naive = NaiveViT.from_open_clip(visual, adapter_bottleneck=None).train()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref, out = visual(x), naive(x)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_naive_copies_ulfine_adaptformer() -> None:
    bb = _backbone("lft")
    with torch.no_grad():  # non-zero adapters, so the adapter path is really compared
        for name, p in bb.visual.named_parameters():
            if ".adapter." in name:
                p.normal_(0, 0.2)
    naive = NaiveViT.from_open_clip(bb.visual).freeze_backbone().eval()
    bb.visual.eval()  # the adapters' dropout off in both
    x = torch.randn(2, 3, 32, 32)
    ref, out = bb.encode_image(x), naive(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    trainable = {n for n, p in naive.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n for n in trainable)
    assert sum(p.numel() for p in naive.parameters() if p.requires_grad) == sum(
        p.numel() for p in bb.parameters() if p.requires_grad)


def test_attention_counter_separates_fused_from_naive() -> None:
    bb = _backbone("lft")
    naive = NaiveViT.from_open_clip(bb.visual).freeze_backbone()
    x = torch.randn(2, 3, 32, 32)
    with AttentionKernelCounter() as ours:
        bb.encode_image(x).sum().backward()
    with AttentionKernelCounter() as ref:
        naive(x).sum().backward()
    # block 1's attention runs before the first adapter: autograd needs no gradient through it
    assert ours.fused_forward == 4 and ours.fused_backward == 3 and ours.attention_softmax == 0
    assert ref.fused_forward == 0 and ref.attention_softmax == 4


def test_every_finetune_mode_keeps_fused_attention() -> None:
    from _train import FINETUNE_MODES, fused_attention_by_mode

    res = fused_attention_by_mode(torch.device("cpu"))
    assert len(res) == len(FINETUNE_MODES)
    for mode, r in res.items():
        assert r["fused_forward"] == r["blocks"] == 4, mode
        assert r["explicit_attention_softmax"] == 0, mode
    assert res["lp"]["fused_backward"] == 0  # lp: frozen features, nothing to backprop
    assert res["fft"]["fused_backward"] == 4


def test_steps_do_the_same_work() -> None:
    """Equal batch => FLOPs of ulfine's step and the naive step agree within 5%."""
    from _flops import count_step_flops
    from _train import build_steps, make_batch

    batch = make_batch(torch.device("cpu"), 2, 1, 32)
    ours, ref = build_steps("ulfine-micro-vit", torch.device("cpu"), batch)
    f_ours, f_ref = count_step_flops(ours.step)["flops"], count_step_flops(ref.step)["flops"]
    assert abs(f_ours - f_ref) / f_ref < 0.05
