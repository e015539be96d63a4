"""Fine-tuning strategies on the tiny ViT: identity at init, what trains, counts, kernels."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from modelfakes import EMBED, LAYERS, MLP, PATCH, TOKENS, WIDTH
from open_clip.transformer import ResidualAttentionBlock
from torch import nn
from torch.nn.utils import parametrize

from ulfine.config.schema import ModelConfig
from ulfine.errors import ConfigError
from ulfine.models import PEFT_MODULES, LinearHead, apply_finetune, build_backbone
from ulfine.models.peft import peft_options
from ulfine.models.peft.adaptformer import AdaptFormerMLP, pass_residual_input
from ulfine.models.peft.lora import LoRAWeight

W, L = WIDTH, LAYERS
# hand-computed parameter counts of ulfine-micro-vit's image tower
PER_BLOCK = (2 * W) + (3 * W * W + 3 * W) + (W * W + W) + (2 * W) + (W * MLP + MLP) + (MLP * W + W)
TOWER = 3 * W * PATCH * PATCH + W + TOKENS * W + 2 * W + L * PER_BLOCK + 2 * W + W * EMBED
ADAPTFORMER = L * ((W * 64 + 64) + (64 * W + W) + 2 * W)  # down + up (bottleneck 64) + own LN
VPT = L * 10 * W  # 10 prompt tokens of width W per block
LORA_QKV = L * 8 * (W + 3 * W)  # A (8, W) + B (3W, 8)
LORA_OUT = L * 8 * (W + W)
BITFIT_BLOCK = W + 3 * W + W + W + MLP + W  # ln_1, in_proj, out_proj, ln_2, c_fc, c_proj biases
BITFIT = L * BITFIT_BLOCK + 2 * W  # + ln_pre, ln_post biases (conv1 has none)

EXPECTED = {
    ("lp", "adaptformer", None): (0, TOWER),
    ("fft", "adaptformer", None): (TOWER, TOWER),
    ("lft", "adaptformer", None): (ADAPTFORMER, TOWER + ADAPTFORMER),
    ("lft", "vpt", None): (VPT, TOWER + VPT),
    ("lft", "lora", None): (LORA_QKV, TOWER + LORA_QKV),
    ("lft", "bitfit", None): (BITFIT, TOWER),
    ("lft", "adaptformer", 2): (ADAPTFORMER // 2, TOWER + ADAPTFORMER // 2),
    ("lft", "vpt", 2): (VPT // 2, TOWER + VPT // 2),
    ("lft", "lora", 2): (LORA_QKV // 2, TOWER + LORA_QKV // 2),
    ("lft", "bitfit", 2): (2 * BITFIT_BLOCK, TOWER),
}


def test_registry_lists_the_four_modules():
    assert PEFT_MODULES.names() == ["adaptformer", "bitfit", "lora", "vpt"]
    assert TOWER == 816_384  # the arithmetic above, pinned


@pytest.mark.parametrize("finetune,peft,last_k", list(EXPECTED))
def test_parameter_counts_match_hand_computed_values(make_tiny, finetune, peft, last_k):
    b = make_tiny()
    s = apply_finetune(b, finetune, peft, peft_options(peft, last_k_blocks=last_k))
    assert (s.trainable, s.total) == EXPECTED[(finetune, peft, last_k)]
    assert s.trainable == sum(p.numel() for p in b.parameters() if p.requires_grad)


def test_lora_out_target_count(make_tiny):
    s = apply_finetune(make_tiny(), "lft", "lora", peft_options("lora", targets=["qkv", "out"]))
    assert s.trainable == LORA_QKV + LORA_OUT


@pytest.mark.parametrize(
    "peft,opts",
    [("adaptformer", {}), ("adaptformer", {"layernorm": "block"}), ("lora", {"targets": ["qkv", "out"]}),
     ("bitfit", {})],
)
def test_identity_modules_leave_features_unchanged_at_init(make_tiny, images, peft, opts):
    ref_model = make_tiny()
    b = make_tiny()
    apply_finetune(b, "lft", peft, peft_options(peft, **opts))
    for train in (True, False):  # SDPA path (train) and MHA fast path (eval, no grad)
        ref_model.train(train), b.train(train)
        with torch.set_grad_enabled(train):
            torch.testing.assert_close(b.encode_image(images), ref_model.encode_image(images), rtol=1e-5, atol=1e-5)


def _two_sgd_steps(b, images):
    params = [p for p in b.parameters() if p.requires_grad]
    head = LinearHead(EMBED, 5, zero_init=False)
    opt = torch.optim.SGD(params + list(head.parameters()), lr=0.5)
    target = torch.tensor([0, 1, 2])
    for _ in range(2):  # two steps: B/up are zero at init, so A/down only move on the second
        opt.zero_grad()
        F.cross_entropy(head(b.encode_image(images)), target).backward()
        opt.step()
    return head


@pytest.mark.parametrize("finetune,peft", [("lft", "adaptformer"), ("lft", "vpt"), ("lft", "lora"), ("lft", "bitfit"), ("fft", "-")])
def test_only_intended_parameters_change_and_gradients_reach_them(make_tiny, images, finetune, peft):
    b = make_tiny()
    apply_finetune(b, finetune, peft)
    b.train()
    before = {n: p.detach().clone() for n, p in b.named_parameters()}
    _two_sgd_steps(b, images)
    for n, p in b.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == p.requires_grad, f"{n}: changed={changed} trainable={p.requires_grad}"
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
    trainable = {n for n, p in b.named_parameters() if p.requires_grad}
    injected = {
        "adaptformer": lambda n: ".mlp.adapter." in n,
        "vpt": lambda n: n.endswith(".vpt.prompts"),
        "lora": lambda n: ".lora_" in n,
        "bitfit": lambda n: n.endswith("bias"),
        "-": lambda n: True,
    }[peft]
    assert trainable and all(injected(n) for n in trainable)
    assert not any(p.requires_grad for p in b.clip.parameters() if all(p is not q for q in b.parameters()))


def test_lp_keeps_no_activations_and_no_grad_through_the_tower(make_tiny, images):
    b = make_tiny()
    s = apply_finetune(b, "lp", "adaptformer")
    assert s.trainable == 0
    b.train()
    assert not b.visual.training  # stays in eval even when the method is put in train mode
    feats = b.encode_image(images)
    assert not feats.requires_grad and feats.grad_fn is None  # computed under no_grad
    assert not torch.is_inference(feats)  # not inference_mode: the head can still backprop
    head = LinearHead(EMBED, 5)
    F.cross_entropy(head(feats), torch.tensor([0, 1, 2])).backward()
    assert head.fc.weight.grad is not None and head.fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in b.parameters())


def test_apply_finetune_twice_or_unknown_mode_is_a_config_error(make_tiny):
    b = make_tiny()
    with pytest.raises(ConfigError, match="finetune=xx"):
        apply_finetune(b, "xx", "adaptformer")
    with pytest.raises(ConfigError, match="unknown PEFT module"):
        apply_finetune(make_tiny(), "lft", "prefix")
    apply_finetune(b, "lft", "lora")
    with pytest.raises(ConfigError, match="already applied"):
        apply_finetune(b, "fft", "-")
    with pytest.raises(ConfigError, match="last_k_blocks=9"):
        apply_finetune(make_tiny(), "lft", "lora", peft_options("lora", last_k_blocks=9))


@pytest.mark.parametrize("peft", ["adaptformer", "vpt", "lora", "bitfit"])
def test_last_k_blocks_is_respected(make_tiny, peft):
    b = make_tiny()
    apply_finetune(b, "lft", peft, peft_options(peft, last_k_blocks=1))
    blocks = b.visual.transformer.resblocks
    for i, block in enumerate(blocks):
        n_trainable = sum(p.numel() for p in block.parameters() if p.requires_grad)
        assert (n_trainable > 0) == (i == LAYERS - 1), (i, n_trainable)
    outside = [n for n, p in b.visual.named_parameters() if p.requires_grad and not n.startswith(f"transformer.resblocks.{LAYERS - 1}.")]
    assert outside == []


def test_lora_rank_and_parametrisation_is_what_runs(make_tiny, images):
    b = make_tiny()
    apply_finetune(b, "lft", "lora", peft_options("lora", rank=4, alpha=8.0))
    attn = b.visual.transformer.resblocks[0].attn
    assert parametrize.is_parametrized(attn, "in_proj_weight")
    lora = attn.parametrizations.in_proj_weight[0]
    assert isinstance(lora, LoRAWeight) and lora.lora_A.shape == (4, W) and lora.lora_B.shape == (3 * W, 4)
    assert lora.scaling == 2.0
    with torch.no_grad():
        lora.lora_B.normal_()
    w0 = attn.parametrizations.in_proj_weight.original
    torch.testing.assert_close(attn.in_proj_weight, w0 + 2.0 * lora.lora_B @ lora.lora_A)
    before = b.encode_image(images)
    with torch.no_grad():
        lora.lora_B.zero_()
    assert not torch.allclose(before, b.encode_image(images))  # the LoRA weight is in the forward


def test_adaptformer_wraps_the_mlp_with_a_zero_up_projection(make_tiny):
    b = make_tiny()
    original = b.visual.transformer.resblocks[0].mlp
    apply_finetune(b, "lft", "adaptformer")
    block = b.visual.transformer.resblocks[0]
    wrapped = block.mlp
    assert isinstance(wrapped, AdaptFormerMLP) and wrapped.mlp is original
    assert list(block.ln_2._forward_hooks.values()) == [pass_residual_input]
    a = wrapped.adapter
    assert a.down.weight.shape == (64, W) and a.up.weight.shape == (W, 64) and a.scale == 0.1
    assert isinstance(a.ln, nn.LayerNorm) and a.ln.weight.requires_grad and a.dropout.p == 0.1
    assert torch.count_nonzero(a.up.weight) == 0 and torch.count_nonzero(a.down.weight) > 0
    h, x = torch.randn(2, 5, W), torch.randn(2, 5, W)
    with torch.no_grad():
        a.up.weight.normal_()
        a.ln.weight.uniform_(0.5, 1.5)
        a.eval()
        expected = original(h) + 0.1 * a.up(torch.relu(a.down(F.layer_norm(x, (W,), a.ln.weight, a.ln.bias))))
        torch.testing.assert_close(wrapped((h, x)), expected)
    with pytest.raises(RuntimeError, match="pass_residual_input"):
        wrapped(h)  # the own form never silently falls back to the ln_2 output


def test_adaptformer_block_form_reads_the_ln_2_output(make_tiny):
    b = make_tiny()
    apply_finetune(b, "lft", "adaptformer", peft_options("adaptformer", layernorm="block", dropout=0.0))
    block = b.visual.transformer.resblocks[0]
    assert not block.ln_2._forward_hooks
    a = block.mlp.adapter
    assert a.ln is None
    h = torch.randn(2, 5, W)
    with torch.no_grad():
        a.up.weight.normal_()
        torch.testing.assert_close(block.mlp(h), block.mlp.mlp(h) + 0.1 * a.up(torch.relu(a.down(h))))
    assert sum(p.numel() for p in b.parameters() if p.requires_grad) == ADAPTFORMER - L * 2 * W


def _adapter_reference(frozen, adapters, images):
    """The published form written out: x + attn(ln_1(x)), then + mlp(ln_2(x)) + adapter(x)."""
    x = frozen._embeds(images)
    for blk, a in zip(frozen.transformer.resblocks, adapters):
        x = x + blk.attention(q_x=blk.ln_1(x))
        x = x + blk.mlp(blk.ln_2(x)) + a(x)
    pooled, _ = frozen._pool(x)
    return pooled @ frozen.proj


def _randomise_adapters(b, seed=0):
    """Seeded non-zero adapter weights; down/up draw from their own stream, so both forms get the
    same down/up weights whether or not an own LayerNorm exists."""
    g, g_ln = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(b.visual.named_parameters()):
            if ".mlp.adapter.ln." in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn(p.shape, generator=g_ln))
            elif ".mlp.adapter." in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def test_adaptformer_own_form_matches_a_written_out_forward(make_tiny, images):
    b = make_tiny()
    frozen = copy.deepcopy(b.visual)
    apply_finetune(b, "lft", "adaptformer")
    _randomise_adapters(b)
    b.eval()
    adapters = [blk.mlp.adapter for blk in b.visual.transformer.resblocks]
    with torch.no_grad():
        out = b.encode_image(images)
        reference = _adapter_reference(frozen, adapters, images)
        assert not torch.allclose(out, frozen(images), atol=1e-3)  # the adapters are in the forward
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_adaptformer_own_and_block_forms_differ_once_trained(make_tiny, images):
    own, block = make_tiny(), make_tiny()
    apply_finetune(own, "lft", "adaptformer")
    apply_finetune(block, "lft", "adaptformer", peft_options("adaptformer", layernorm="block"))
    _randomise_adapters(own), _randomise_adapters(block)  # same down/up weights in both
    for a, c in zip(own.visual.transformer.resblocks, block.visual.transformer.resblocks):
        torch.testing.assert_close(a.mlp.adapter.up.weight, c.mlp.adapter.up.weight)
    own.eval(), block.eval()
    with torch.no_grad():
        assert not torch.allclose(own.encode_image(images), block.encode_image(images), atol=1e-3)


def test_adaptformer_dropout_only_in_train_mode(make_tiny, images):
    b = make_tiny()
    apply_finetune(b, "lft", "adaptformer", peft_options("adaptformer", scale=1.0))
    _randomise_adapters(b)
    b.eval()
    with torch.no_grad():
        ref = b.encode_image(images)
        torch.testing.assert_close(b.encode_image(images), ref, rtol=0, atol=0)
        b.train()
        torch.manual_seed(0)
        first = b.encode_image(images)
        torch.manual_seed(1)
        second = b.encode_image(images)
    assert not torch.allclose(first, ref, atol=1e-4) and not torch.allclose(first, second, atol=1e-4)
    nodrop = make_tiny()
    apply_finetune(nodrop, "lft", "adaptformer", peft_options("adaptformer", scale=1.0, dropout=0.0))
    _randomise_adapters(nodrop)
    nodrop.train()
    with torch.no_grad():
        torch.testing.assert_close(nodrop.encode_image(images), ref, rtol=1e-5, atol=1e-5)


def test_vpt_prompts_shape_count_and_reference_computation(make_tiny, images):
    b = make_tiny()
    frozen = copy.deepcopy(b.visual)  # the same open_clip blocks, without hooks
    apply_finetune(b, "lft", "vpt", peft_options("vpt", length=10))
    blocks = b.visual.transformer.resblocks
    prompts = [blk.vpt.prompts for blk in blocks]
    assert all(p.shape == (10, W) for p in prompts)
    seen = []
    for blk in blocks:
        blk.ln_1.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    out = b.encode_image(images)
    assert out.shape == (3, EMBED)
    assert seen == [TOKENS + 10] * LAYERS  # 65 image tokens + 10 prompts inside each block

    with torch.no_grad():
        x = frozen._embeds(images)
        for i, blk in enumerate(frozen.transformer.resblocks):
            p = prompts[i].unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], p, x[:, 1:] if i == 0 else x[:, 11:]], dim=1)
            x = blk(x)
        x = torch.cat([x[:, :1], x[:, 11:]], dim=1)
        pooled, _ = frozen._pool(x)
        reference = pooled @ frozen.proj
    torch.testing.assert_close(out.detach(), reference, rtol=1e-5, atol=1e-5)
    # prompts take part in attention: VPT is not identity at init (documented)
    assert not torch.allclose(out.detach(), frozen(images).detach(), atol=1e-4)


def test_vpt_last_k_inserts_at_the_first_prompted_block(make_tiny, images):
    b = make_tiny()
    apply_finetune(b, "lft", "vpt", peft_options("vpt", length=3, last_k_blocks=2))
    seen = []
    for blk in b.visual.transformer.resblocks:
        blk.ln_1.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    assert b.encode_image(images).shape == (3, EMBED)
    assert seen == [TOKENS, TOKENS, TOKENS + 3, TOKENS + 3]


@pytest.mark.parametrize("peft", ["adaptformer", "vpt", "lora"])
def test_deepcopy_for_ema_keeps_hooks_pointing_at_the_copy(make_tiny, images, peft):
    b = make_tiny()
    apply_finetune(b, "lft", peft)
    twin = copy.deepcopy(b)
    ref = b.encode_image(images).detach()
    torch.testing.assert_close(twin.encode_image(images), ref)
    with torch.no_grad():
        for p in twin.parameters():
            if p.requires_grad:
                p.add_(0.5)
    assert not torch.allclose(twin.encode_image(images), ref)  # the copy uses its own modules
    torch.testing.assert_close(b.encode_image(images), ref)  # and the original is untouched


@pytest.mark.parametrize("peft", ["adaptformer", "vpt", "lora", "bitfit"])
def test_open_clip_attention_and_fused_kernel_are_kept(make_tiny, images, monkeypatch, peft):
    b = make_tiny()
    apply_finetune(b, "lft", peft, peft_options(peft, **({"targets": ["qkv", "out"]} if peft == "lora" else {})))
    for block in b.visual.transformer.resblocks:
        assert type(block).forward is ResidualAttentionBlock.forward and "forward" not in vars(block)
        assert isinstance(block.attn, nn.MultiheadAttention)
        assert type(block.attn).forward is nn.MultiheadAttention.forward and "forward" not in vars(block.attn)
    calls = {"sdpa": 0, "native_mha": 0}
    sdpa, native = F.scaled_dot_product_attention, torch._native_multi_head_attention

    def count_sdpa(*a, **k):
        calls["sdpa"] += 1
        return sdpa(*a, **k)

    def count_native(*a, **k):
        calls["native_mha"] += 1
        return native(*a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", count_sdpa)
    monkeypatch.setattr(torch, "_native_multi_head_attention", count_native)
    b.train()
    b.encode_image(images).sum().backward()  # training: MHA -> F.scaled_dot_product_attention
    assert calls == {"sdpa": LAYERS, "native_mha": 0}
    b.eval()
    calls.update(sdpa=0, native_mha=0)
    with torch.no_grad():
        b.encode_image(images)  # inference: one fused kernel per block, whichever MHA picks
    assert calls["sdpa"] + calls["native_mha"] == LAYERS


def test_lft_on_a_resnet_tower_is_a_clear_config_error():
    b = build_backbone(ModelConfig(arch="RN50", pretrained="none"), device="meta")
    with pytest.raises(ConfigError, match="VisionTransformer.*finetune=lp or finetune=fft"):
        apply_finetune(b, "lft", "adaptformer")
    b = build_backbone(ModelConfig(arch="RN50", pretrained="none"), device="meta")
    s = apply_finetune(b, "fft", "-")
    assert s.trainable == s.total > 0


@pytest.mark.parametrize("finetune", ["lft", "fft"])
def test_attention_gets_one_contiguous_sequence_first_tensor_and_the_same_features(make_tiny, images, finetune):
    """In training every MHA receives one contiguous (L, N, D) tensor (query = key = value, so its
    packed projection stays one matmul) with batch_first off for the call, and the features and
    gradients equal those of open_clip's own transposed-view path (LP runs its frozen tower in
    inference: the next test)."""
    from ulfine.models.attention_layout import _to_batch_first, _to_sequence_first

    b = make_tiny()
    apply_finetune(b, finetune, "adaptformer", None)
    seen = []
    for block in b.visual.transformer.resblocks:
        block.attn.register_forward_pre_hook(
            lambda m, a, k: seen.append((a[0].is_contiguous(), a[0] is a[1] is a[2], m.batch_first, a[0].shape[0])),
            with_kwargs=True)
    b.train()
    x = images.clone().requires_grad_(True)
    ours = b.encode_image(x)
    ours.sum().backward()
    grad_ours = x.grad.clone()
    tokens = b.visual.positional_embedding.shape[0]
    assert seen and all(s == (True, True, False, tokens) for s in seen), seen[:2]
    assert all(blk.attn.batch_first for blk in b.visual.transformer.resblocks)  # restored after each call
    for block in b.visual.transformer.resblocks:  # open_clip's own path: no layout hooks
        for hooks, fn in ((block.attn._forward_pre_hooks, _to_sequence_first), (block.attn._forward_hooks, _to_batch_first)):
            for key in [k for k, h in hooks.items() if h is fn]:
                del hooks[key]
    x.grad = None
    theirs = b.encode_image(x)
    theirs.sum().backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, x.grad, rtol=1e-4, atol=1e-6)


def test_inference_keeps_the_fused_fast_path_layout(make_tiny, images):
    """Under no_grad in eval mode (evaluation, LP's frozen tower) the module keeps batch_first, so
    torch's fused inference path stays available, and nothing is moved."""
    b = make_tiny()
    apply_finetune(b, "lft", "adaptformer", None)
    b.eval()
    seen = []
    for block in b.visual.transformer.resblocks:
        block.attn.register_forward_pre_hook(lambda m, a, k: seen.append((m.batch_first, a[0].shape[0])),
                                             with_kwargs=True)
    with torch.no_grad():
        b.encode_image(images)
    assert seen and all(s == (True, images.shape[0]) for s in seen)
