"""Text prototypes (ensemble, cache) and the heads / zero-shot logits built on them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from modelfakes import EMBED

from ulfine.config import SSLConfig
from ulfine.methods import METHODS, MethodContext, MethodOptions
from ulfine.models import LinearHead, PrototypeHead, text_prototypes
from ulfine.models.text import prototype_cache_key

CLASSES = ["air_plane", "cat", "sea_turtle"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}.", "{}"]


def test_prototypes_are_the_renormalised_mean_of_normalised_template_features(make_tiny):
    b = make_tiny()
    protos = text_prototypes(b, CLASSES, TEMPLATES)
    assert protos.shape == (3, EMBED) and protos.dtype == torch.float32
    torch.testing.assert_close(protos.norm(dim=-1), torch.ones(3))
    for k, name in enumerate(["air plane", "cat", "sea turtle"]):  # underscores -> spaces
        f = F.normalize(b.encode_text([t.format(name) for t in TEMPLATES]), dim=-1)
        torch.testing.assert_close(protos[k], F.normalize(f.mean(0), dim=0))
    # with one template the prototype is that prompt's normalised feature
    one = text_prototypes(b, ["sea_turtle"], ["a photo of a {}."])
    torch.testing.assert_close(one[0], b.encode_text(["a photo of a sea turtle."])[0])


def test_prompts_sent_to_the_text_encoder(make_tiny, monkeypatch):
    b = make_tiny()
    sent = []
    real = b.encode_text
    monkeypatch.setattr(b, "encode_text", lambda texts: sent.extend(texts) or real(texts))
    text_prototypes(b, ["air_plane", "cat"], ["a photo of a {}.", "art of {}"])
    assert sent == ["a photo of a air plane.", "art of air plane", "a photo of a cat.", "art of cat"]


def test_cache_hit_does_not_call_the_text_encoder(make_tiny, tmp_path, monkeypatch):
    b = make_tiny()
    first = text_prototypes(b, CLASSES, TEMPLATES, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    b2 = make_tiny()  # a new run with the same weights
    monkeypatch.setattr(b2, "encode_text", lambda texts: pytest.fail("text encoder called on a cache hit"))
    second = text_prototypes(b2, CLASSES, TEMPLATES, cache_dir=tmp_path)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_cache_key_depends_on_weights_classes_and_templates(make_tiny):
    a, same, other = make_tiny(0), make_tiny(0), make_tiny(1)
    key = prototype_cache_key(a, CLASSES, TEMPLATES)
    assert prototype_cache_key(same, CLASSES, TEMPLATES) == key
    assert prototype_cache_key(other, CLASSES, TEMPLATES) != key  # random weights differ per seed
    assert prototype_cache_key(a, CLASSES[:2], TEMPLATES) != key
    assert prototype_cache_key(a, CLASSES, TEMPLATES[:1]) != key
    assert prototype_cache_key(a, list(reversed(CLASSES)), TEMPLATES) != key


def test_linear_head_zero_init():
    head = LinearHead(4, 3)
    assert torch.equal(head(torch.randn(5, 4)), torch.zeros(5, 3))
    assert torch.count_nonzero(LinearHead(4, 3, zero_init=False).fc.weight) > 0


def test_prototype_head_hand_computed():
    protos = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # normalised: (0.6, 0.8), (0, 1)
    head = PrototypeHead(protos, logit_scale=10.0)
    logits = head(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
    s = 2 ** -0.5
    expected = 10.0 * torch.tensor([[0.6, 0.0], [s * 1.4, s]])
    torch.testing.assert_close(logits, expected)
    assert isinstance(head.prototypes, torch.nn.Parameter)
    logits.sum().backward()
    assert head.prototypes.grad is not None
    fixed = PrototypeHead(protos, 10.0, learnable=False)
    assert "prototypes" in dict(fixed.named_buffers()) and not list(fixed.parameters())
    torch.testing.assert_close(fixed(torch.tensor([[2.0, 0.0]])), expected[:1])


def test_prototype_head_logits_stay_float32_under_bf16_autocast():
    """Regression: under autocast the cosine matmul ran in bf16, rounding logits at scale 100."""
    torch.manual_seed(0)
    head = PrototypeHead(torch.randn(5, 16), logit_scale=100.0)
    f = torch.randn(8, 16)
    ref = head(f)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = head(f)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, ref, rtol=0, atol=1e-4)  # bf16 was off by up to ~0.1


def test_zero_shot_logits_match_manual(make_tiny, images):
    b = make_tiny()
    protos = text_prototypes(b, CLASSES, TEMPLATES)
    ctx = MethodContext(3, CLASSES, torch.ones(3, dtype=torch.long), protos, b.logit_scale, 0, b.embed_dim)
    logits = METHODS.get("zeroshot")(b, ctx, MethodOptions(SSLConfig())).predict(images)
    manual = b.logit_scale * F.normalize(b.encode_image(images), dim=-1) @ protos.t()
    assert logits.shape == (3, 3)
    torch.testing.assert_close(logits, manual)
    torch.testing.assert_close(logits, PrototypeHead(protos, b.logit_scale)(b.encode_image(images)))
