"""ulfine's ``peft=adaptformer`` and ``peft=vpt`` against FineSSL's own model code
(Gank0078/FineSSL@76b6f48: ``model.py`` ``CLIP_ViT`` / ``ViT_Tuner`` / ``AdaptFormer`` / ``VPT`` on
``clip/model.py``'s ``VisionTransformer``; scripts/golden/make_peft.py).

The fixtures hold a tiny open_clip image tower's weights, the adapters' / prompts' values, the
input images and what FineSSL computed in eval mode. Here the same tower is built with open_clip,
wrapped in ulfine's ``CLIPBackbone``, fine-tuned with ``apply_finetune(..., "lft", peft)`` (ulfine's
defaults), given the fixture's values and run: features, the residual stream at every block's
``ln_1`` / ``ln_2`` and the adapters' outputs agree to 1e-5 (float32), on both attention paths of
``nn.MultiheadAttention`` (SDPA with grad, the fused fast path under no_grad).
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from golden_fixtures import mismatches
from safetensors.torch import load_file

from ulfine.models import apply_finetune
from ulfine.models.backbone import CLIPBackbone, PreprocessConfig
from ulfine.models.peft import peft_options

FIXTURES = Path(__file__).parent / "fixtures"
TOL = {"atol": 1e-5, "rtol": 1e-5}


def load(name: str):
    return load_file(str(FIXTURES / f"{name}.safetensors")), json.loads((FIXTURES / f"{name}.json").read_text())


AF, AF_META = load("peft_adaptformer")
VPT, VPT_META = load("peft_vpt")


def tuned(tensors, meta, peft: str, prefix: str, **opts) -> CLIPBackbone:
    """The fixture's tower in ulfine, ``peft`` applied with ``opts``, the fixture's module values loaded
    (those the options create: fewer with ``last_k_blocks`` or ``layernorm=block``)."""
    clip = open_clip.CLIP(**meta["open_clip"])
    tower = {k.removeprefix("tower."): v for k, v in tensors.items() if k.startswith("tower.")}
    clip.visual.load_state_dict(tower, strict=True)
    size = meta["open_clip"]["vision_cfg"]["image_size"]
    b = CLIPBackbone(clip, arch="golden-tiny-vit", weights_id="golden", tokenizer=None,
                     preprocess=PreprocessConfig(size, (0.5,) * 3, (0.5,) * 3),
                     embed_dim=meta["open_clip"]["embed_dim"])
    apply_finetune(b, "lft", peft, peft_options(peft, **opts))
    params = dict(b.visual.named_parameters())
    loaded = 0
    with torch.no_grad():
        for key, value in tensors.items():
            name = key.removeprefix(prefix)
            if key.startswith(prefix) and name in params:
                params[name].copy_(value)
                loaded += 1
    assert loaded and all(not p.requires_grad or n in {k.removeprefix(prefix) for k in tensors}
                          for n, p in params.items()), "a trainable module value is not in the fixture"
    return b.eval()


def run(b: CLIPBackbone, grad: bool, images: torch.Tensor = AF["input.images"]) -> dict[str, torch.Tensor]:
    """ulfine's features and per-block residual streams / adapter outputs (as the fixture names them)."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    visual = b.visual
    for i, block in enumerate(visual.transformer.resblocks):
        handles.append(block.ln_1.register_forward_pre_hook(
            lambda m, a, i=i: out.__setitem__(f"peer.block{i}.ln_1_in", a[0].detach())))
        handles.append(block.ln_2.register_forward_pre_hook(
            lambda m, a, i=i: out.__setitem__(f"peer.block{i}.ln_2_in", a[0].detach())))
        adapter = getattr(block.mlp, "adapter", None)
        if adapter is not None:
            handles.append(adapter.register_forward_hook(
                lambda m, a, o, i=i: out.__setitem__(f"peer.block{i}.adapter_out", o.detach())))
    handles.append(visual.ln_post.register_forward_hook(
        lambda m, a, o: out.__setitem__("peer.features", o[:, 0].detach())))  # ln_post before pooling
    with torch.set_grad_enabled(grad):
        out["peer.features_proj"] = b.encode_image(images).detach()
    for h in handles:
        h.remove()
    return out


def vpt_to_finessl_order(x: torch.Tensor, length: int) -> torch.Tensor:
    """ulfine's [CLS, prompts, patches] -> FineSSL's [CLS, patches, prompts] (every block has prompts)."""
    return torch.cat([x[:, :1], x[:, 1 + length:], x[:, 1:1 + length]], dim=1)


def check(ours: dict[str, torch.Tensor], peer: dict[str, torch.Tensor], keys: list[str], reorder=None) -> None:
    for key in keys:
        actual = ours[key]
        if reorder is not None and key.startswith("peer.block"):
            actual = reorder(actual)
        torch.testing.assert_close(actual, peer[key], **TOL, msg=lambda m, key=key: f"{key}: {m}")


def block_keys(tensors) -> list[str]:
    return sorted(k for k in tensors if k.startswith("peer.block"))


FEATURES = ["peer.features", "peer.features_proj"]


# ------------------------------------------------------------------------------ fixtures' provenance
def test_fixtures_are_finessl_at_the_pinned_commit_with_its_defaults():
    for meta in (AF_META, VPT_META):
        assert meta["peer"] == "finessl" and meta["commit"].startswith("76b6f48")
        assert "model.py" in meta["files"] and "clip/model.py" in meta["files"]
    fin = AF_META["finessl_options"]
    assert (fin["ffn_num"], fin["ln_opt"], fin["adapter_scalar"], fin["ffn_opt"], fin["dropout"]) == (
        64, "in", 0.1, "parallel", 0.1)
    assert not fin["scalar_learnable"] and fin["partial"] is None
    # ulfine's defaults are FineSSL's: the golden check runs ulfine as a user gets it
    assert peft_options("adaptformer").model_dump() == {**AF_META["ulfine_options"], "last_k_blocks": None}
    assert peft_options("vpt").model_dump() == {**VPT_META["ulfine_options"], "last_k_blocks": None}
    assert VPT_META["finessl_options"]["vpt_len"] == VPT_META["ulfine_options"]["length"]
    for t in (AF, VPT):
        assert (t["peer.features"] - t["peer.features"].mean()).abs().max() > 0.1


# ------------------------------------------------------------------------------ AdaptFormer
@pytest.mark.parametrize("grad", [False, True], ids=["fused-no-grad", "sdpa-grad"])
def test_adaptformer_matches_finessl(grad):
    b = tuned(AF, AF_META, "adaptformer", "adapter.")
    check(run(b, grad), AF, FEATURES + block_keys(AF))


def test_adaptformer_module_matches_finessl_on_given_tokens():
    adapter = tuned(AF, AF_META, "adaptformer", "adapter.").visual.transformer.resblocks[0].mlp.adapter
    with torch.no_grad():
        torch.testing.assert_close(adapter(AF["probe.tokens"]), AF["probe.adapter_out"], **TOL)


def test_adaptformer_last_k_blocks_matches_finessl_partial():
    b = tuned(AF, AF_META, "adaptformer", "adapter.", last_k_blocks=1)
    assert getattr(b.visual.transformer.resblocks[0].mlp, "adapter", None) is None
    ours = run(b, grad=False)
    torch.testing.assert_close(ours["peer.features"], AF["peer.partial1.features"], **TOL)
    assert mismatches(lambda: check(ours, AF, ["peer.features"]))


def test_adaptformer_can_fail_with_another_scale():
    """scale 0.1 -> 0.2: the adapters' share doubles, the features leave FineSSL's."""
    b = tuned(AF, AF_META, "adaptformer", "adapter.", scale=0.2)
    assert mismatches(lambda: check(run(b, grad=False), AF, ["peer.features"]))


def test_adaptformer_can_fail_with_the_block_layernorm_form():
    """layernorm=block (the adapter reads ln_2's output, no LN of its own) is not FineSSL's form."""
    b = tuned(AF, AF_META, "adaptformer", "adapter.", layernorm="block")
    ours = run(b, grad=False)
    assert mismatches(lambda: check(ours, AF, ["peer.features"]))
    assert mismatches(lambda: check(ours, AF, ["peer.block0.adapter_out"]))
    check(ours, AF, ["peer.block0.ln_1_in", "peer.block0.ln_2_in"])  # up to the first adapter all agree


def test_adaptformer_can_fail_in_train_mode():
    """Dropout (p=0.1, FineSSL's) is on in training: the fixture is FineSSL's eval-mode forward."""
    b = tuned(AF, AF_META, "adaptformer", "adapter.").train()
    torch.manual_seed(0)
    assert mismatches(lambda: check(run(b, grad=False), AF, ["peer.features"]))


# ------------------------------------------------------------------------------ VPT-deep
def vpt_reorder(length: int):
    return lambda x: vpt_to_finessl_order(x, length)


@pytest.mark.parametrize("grad", [False, True], ids=["fused-no-grad", "sdpa-grad"])
def test_vpt_deep_matches_finessl(grad):
    length = VPT_META["ulfine_options"]["length"]
    b = tuned(VPT, VPT_META, "vpt", "vpt.", length=length)
    check(run(b, grad), VPT, FEATURES + block_keys(VPT), reorder=vpt_reorder(length))


def test_vpt_last_k_blocks_matches_finessl_partial():
    length = VPT_META["ulfine_options"]["length"]
    b = tuned(VPT, VPT_META, "vpt", "vpt.", length=length, last_k_blocks=1)
    ours = run(b, grad=False)
    torch.testing.assert_close(ours["peer.features"], VPT["peer.partial1.features"], **TOL)
    assert mismatches(lambda: check(ours, VPT, ["peer.features"]))


def test_vpt_can_fail_with_a_perturbed_prompt():
    length = VPT_META["ulfine_options"]["length"]
    b = tuned(VPT, VPT_META, "vpt", "vpt.", length=length)
    with torch.no_grad():
        b.visual.transformer.resblocks[1].vpt.prompts[3, 5] += 0.05
    ours = run(b, grad=False)
    assert mismatches(lambda: check(ours, VPT, ["peer.features"]))
    check(ours, VPT, ["peer.block0.ln_2_in"], reorder=vpt_reorder(length))  # block 0 is untouched


def test_vpt_can_fail_when_earlier_prompts_are_kept():
    """FineSSL replaces a block's prompts with the next block's (x[:, :seq_len] then append); keeping
    block 0's output prompts beside block 1's new ones changes the features."""
    length = VPT_META["ulfine_options"]["length"]
    b = tuned(VPT, VPT_META, "vpt", "vpt.", length=length)
    b.visual.transformer.resblocks[1].vpt.insert = True
    assert mismatches(lambda: check(run(b, grad=False), VPT, ["peer.features"]))


def test_vpt_can_fail_with_fewer_prompts():
    """length 10 -> 9 (the fixture's first 9 prompts of each block): not FineSSL's forward."""
    length = VPT_META["ulfine_options"]["length"] - 1
    trimmed = {k: (v[:length] if k.startswith("vpt.") else v) for k, v in VPT.items()}
    b = tuned(trimmed, VPT_META, "vpt", "vpt.", length=length)
    assert mismatches(lambda: check(run(b, grad=False), VPT, ["peer.features"]))
