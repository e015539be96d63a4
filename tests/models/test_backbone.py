"""Backbone construction: tiny arch, preprocessing, weights from files/folders/tags, offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import open_clip
import pytest
import torch
from modelfakes import EMBED, IMAGE
from safetensors.torch import save_file

from ulfine.config.schema import ModelConfig
from ulfine.errors import ConfigError, WeightsError
from ulfine.models import MICRO_ARCH, build_backbone, resolve_weights
from ulfine.models import weights as weights_mod


def test_micro_arch_registered_with_the_specified_dims(make_tiny):
    assert MICRO_ARCH in open_clip.list_models()
    b = make_tiny()
    v = b.visual
    assert v.image_size == (IMAGE, IMAGE) and v.patch_size == (4, 4)
    assert len(v.transformer.resblocks) == 4 and v.transformer.width == 128
    assert v.transformer.resblocks[0].attn.num_heads == 4  # width 128 / head_width 32
    clip = b.clip
    assert clip.context_length == 32 and clip.vocab_size == 49408
    assert clip.transformer.width == 64 and len(clip.transformer.resblocks) == 4
    assert clip.transformer.resblocks[0].attn.num_heads == 2
    assert b.embed_dim == EMBED
    assert b.preprocess.size == IMAGE
    assert b.preprocess.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert b.preprocess.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    assert b.preprocess.interpolation == "bicubic"
    assert b.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's init, exp'ed
    assert b.tokenizer(["a cat"]).shape == (1, 32)


def test_same_seed_same_weights_and_everything_frozen_until_finetune(make_tiny, images):
    a, b = make_tiny(0), make_tiny(0)
    torch.testing.assert_close(a.encode_image(images), b.encode_image(images))
    assert a.encode_image(images).shape == (3, EMBED)
    assert not any(p.requires_grad for p in a.clip.parameters())


def test_text_tower_is_not_a_submodule_and_text_features_are_normalised(make_tiny):
    b = make_tiny()
    names = [n for n, _ in b.named_parameters()]
    assert names and all(n.startswith("visual.") for n in names)
    assert not any(k.startswith("transformer.") or "token_embedding" in k for k in b.state_dict())
    t = b.encode_text(["a photo of a cat.", "a photo of a dog.", "x"])
    assert t.shape == (3, EMBED) and t.dtype == torch.float32
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))
    assert not t.requires_grad


def test_pretrained_none_must_be_explicit_unknown_values_fail():
    with pytest.raises(ConfigError, match="not an open_clip architecture"):
        build_backbone(ModelConfig(arch="ViT-Q-99", pretrained="none"))
    with pytest.raises(ConfigError, match="neither a pretrained tag"):
        build_backbone(ModelConfig(arch=MICRO_ARCH, pretrained="laion_bogus"))
    with pytest.raises(WeightsError, match="no such file"):
        build_backbone(ModelConfig(arch=MICRO_ARCH, pretrained="/nonexistent/w.safetensors"))


def test_micro_tag_missing_file_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setattr(weights_mod, "MICRO_WEIGHTS", tmp_path / "micro_clip.safetensors")
    with pytest.raises(WeightsError, match="ulfine pretrain-micro"):
        build_backbone(ModelConfig(arch=MICRO_ARCH, pretrained="micro"))
    with pytest.raises(ConfigError, match="micro"):
        build_backbone(ModelConfig(arch="ViT-B-32", pretrained="micro"))


def test_micro_tag_resolves_to_the_shipped_file(monkeypatch, tmp_path, make_tiny, images):
    src = make_tiny(seed=3)
    f = tmp_path / "micro_clip.safetensors"
    save_file({k: v.contiguous() for k, v in src.clip.state_dict().items()}, str(f))
    monkeypatch.setattr(weights_mod, "MICRO_WEIGHTS", f)
    b = build_backbone(ModelConfig(arch=MICRO_ARCH, pretrained="micro"))
    torch.testing.assert_close(b.encode_image(images), src.encode_image(images), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_weights_file_through_the_user_path_gives_identical_outputs(make_tiny, images, tmp_path, suffix):
    src = make_tiny(seed=7)
    state = {k: v.contiguous() for k, v in src.clip.state_dict().items()}
    f = tmp_path / f"tiny{suffix}"
    save_file(state, str(f)) if suffix == ".safetensors" else torch.save(state, f)
    torch.manual_seed(999)  # a different seed must not matter once weights are loaded
    b = build_backbone(ModelConfig(arch=MICRO_ARCH, pretrained=str(f)))
    torch.testing.assert_close(b.encode_image(images), src.encode_image(images), rtol=0, atol=0)
    torch.testing.assert_close(b.encode_text(["a cat"]), src.encode_text(["a cat"]), rtol=0, atol=0)
    assert b.weights_id.startswith("file:") and str(f.resolve()) in b.weights_id


def test_open_clip_folder_with_its_own_config_and_preprocess(make_tiny, images, tmp_path):
    src = make_tiny(seed=5)
    folder = tmp_path / "my_clip"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in src.clip.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    model_cfg = open_clip.get_model_config(MICRO_ARCH)
    pp = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pp}))
    b = build_backbone(ModelConfig(arch="ViT-B-16", pretrained=str(folder)))  # folder's config wins
    assert b.embed_dim == EMBED
    assert b.preprocess.mean == (0.5, 0.5, 0.5) and b.preprocess.interpolation == "bilinear"
    torch.testing.assert_close(b.encode_image(images), src.encode_image(images), rtol=0, atol=0)
    (folder / "open_clip_config.json").unlink()
    with pytest.raises(WeightsError, match="open_clip_config.json"):
        build_backbone(ModelConfig(arch=MICRO_ARCH, pretrained=str(folder)))


def test_mismatched_weights_file_is_a_weights_error(make_tiny, tmp_path):
    f = tmp_path / "wrong.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(f))
    with pytest.raises(WeightsError, match="model.arch"):
        build_backbone(ModelConfig(arch=MICRO_ARCH, pretrained=str(f)))


def test_tag_weights_get_the_tags_preprocess_and_quick_gelu(make_tiny, images, tmp_path, monkeypatch):
    """A tag's own preprocessing is used and OpenAI-style QuickGELU tags get QuickGELU."""
    src = make_tiny(seed=1)
    f = tmp_path / "tag.safetensors"
    save_file({k: v.contiguous() for k, v in src.clip.state_dict().items()}, str(f))
    tag_cfg = {"file": str(f), "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6), "interpolation": "bilinear", "quick_gelu": True}
    monkeypatch.setattr(weights_mod, "get_pretrained_cfg", lambda arch, tag: tag_cfg if tag == "faketag" else {})
    b = build_backbone(ModelConfig(arch=MICRO_ARCH, pretrained="faketag"))
    assert b.preprocess.mean == (0.1, 0.2, 0.3) and b.preprocess.std == (0.4, 0.5, 0.6)
    assert isinstance(b.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert b.weights_id == f"tag:{MICRO_ARCH}:faketag"
    assert not torch.allclose(b.encode_image(images), src.encode_image(images))  # activation differs


def test_tag_found_in_the_hugging_face_cache_without_network(tmp_path, monkeypatch):
    snap = tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(weights_mod, "network_reachable", lambda *a, **k: pytest.fail("probed the network"))
    src = resolve_weights("ViT-B-32", "openai", cache_dir=tmp_path)
    assert src.kind == "tag" and Path(src.path) == snap / "open_clip_model.safetensors"
    assert src.tag_cfg["quick_gelu"] is True


@pytest.mark.parametrize("arch,tag", [("ViT-B-32", "openai"), ("ViT-B-16", "laion2b_s34b_b88k")])
def test_offline_uncached_tag_fails_fast_with_the_local_file_option(tmp_path, monkeypatch, arch, tag):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights_mod, "download_pretrained", lambda *a, **k: pytest.fail("download started"))
    t0 = time.monotonic()
    with pytest.raises(WeightsError) as err:
        build_backbone(ModelConfig(arch=arch, pretrained=tag, cache_dir=tmp_path))
    assert time.monotonic() - t0 < 5.0
    msg = str(err.value)
    assert "\n" not in msg and arch in msg and tag in msg and "HF_HUB_OFFLINE" in msg
    assert "model.pretrained=/path/to/open_clip_pytorch_model.bin" in msg and ".safetensors" in msg


def test_unreachable_network_fails_fast_when_not_explicitly_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(weights_mod, "is_offline", lambda: False)
    probes = []
    monkeypatch.setattr(weights_mod, "network_reachable", lambda host, *a, **k: probes.append(host) or False)
    monkeypatch.setattr(weights_mod, "download_pretrained", lambda *a, **k: pytest.fail("download started"))
    with pytest.raises(WeightsError, match="cannot be reached.*model.pretrained=/path/to"):
        build_backbone(ModelConfig(arch="ViT-B-16", pretrained="openai", cache_dir=tmp_path))
    assert probes == ["huggingface.co"]


def test_network_probe_times_out_quickly():
    t0 = time.monotonic()
    weights_mod.network_reachable("10.255.255.1", 9, timeout=0.5)  # unroutable: must not hang
    assert time.monotonic() - t0 < 3.0
