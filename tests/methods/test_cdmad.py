"""CDMAD's solid image, bias logits, debiased soft pseudo-labels and losses against hand
computations, its gradient under accumulation, its state, its config refusals, and two tiny
end-to-end runs (micro CLIP, scratch WRN).

The backbone here is an image's mean colour (3 features), the head the identity plus a bias
vector beta, K = 3: an image of constant colour f has logits f + beta, and the solid image of value v
has the bias logits b = v + beta. Every expected value is computed with ``math`` from the numbers
in this file, not with the code under test.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from by_hand import softmax
from safetensors.torch import load_file
from torch import nn

from ulfine.config import load_config
from ulfine.engine import train
from ulfine.engine.assemble import assemble_run
from ulfine.engine.checkpoint import weight_state
from ulfine.engine.runtime import make_runtime
from ulfine.errors import ConfigError
from ulfine.methods import METHODS, Batch, MethodContext
from ulfine.methods.cdmad import CDMAD, eps_cross_entropy
from ulfine.models import CachedFeatures

K = 3
BETA = [0.5, 0.0, -0.5]
X_L = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.5]]
Y_L = [0, 2]
U_W = [[1.0, 0.9, 0.0], [0.0, 0.2, -0.1]]
U_S = [[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]]
U_S2 = [[0.0, 1.0, 1.0], [2.0, 0.0, 0.0]]


class MeanColour(nn.Module):
    """Features = the image's mean colour: a backbone without batch statistics."""

    embed_dim, logit_scale = K, float("nan")

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def images(colours: list[list[float]]) -> torch.Tensor:
    """(B, 3, 2, 2) images of constant colour."""
    return torch.tensor(colours)[:, :, None, None].expand(-1, -1, 2, 2).clone()


def h_eps(z, q):  # CDMAD's -sum q log(softmax(z) + 1e-8)
    return -sum(t * math.log(p + 1e-8) for t, p in zip(q, softmax(z)))


def make(*overrides: str, steps_per_epoch: int = 1) -> CDMAD:
    cfg = load_config(None, ["method=cdmad", "head=linear", *overrides])
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor([6, 3, 1]), None, float("nan"), 10, K,
                        steps_per_epoch=steps_per_epoch)
    m = METHODS.get("cdmad").from_config(cfg, MeanColour(), ctx)
    with torch.no_grad():
        m.head.fc.weight.copy_(torch.eye(K))
        m.head.fc.bias.copy_(torch.tensor(BETA))
    return m


def batch(step: int = 0) -> Batch:
    return Batch(images(X_L), torch.tensor(Y_L), images(U_W), images(U_S), torch.tensor([4, 7]), step=step,
                 u_s2=images(U_S2))


def test_solid_image_and_bias_logits():
    m = make("cdmad.solid_value=0.25")
    s = m.solid_image(images(X_L))
    assert s.shape == (1, 3, 2, 2) and torch.equal(s, torch.full_like(s, 0.25))
    torch.testing.assert_close(m.bias_logits(images(X_L)), torch.tensor([0.25 + b for b in BETA]))
    assert make().opts.solid_value == 1.0 and make().opts.debias_from_epoch == 101  # CDMAD's defaults


@pytest.mark.parametrize("step, debiased", [(0, False), (1, False), (2, True)])
def test_soft_targets_and_losses_by_hand(step, debiased):
    """debias_from_epoch 1 with 2 steps an epoch: steps 0 and 1 use z(a(u)), step 2 z(a(u)) - b."""
    m = make("ssl.tau=0.5", "ssl.lambda_u=0.5", "cdmad.debias_from_epoch=1", steps_per_epoch=2)
    t = m.step_terms(batch(step))
    assert t.debiased == debiased
    bias = [1.0 + b for b in BETA]
    weak = [[f + b - (c if debiased else 0.0) for f, b, c in zip(u, BETA, bias)] for u in U_W]
    q = [softmax(z) for z in weak]
    mask = [max(p) >= 0.5 for p in q]
    torch.testing.assert_close(t.target, torch.tensor(q))
    assert t.mask.tolist() == mask and t.label.tolist() == [max(range(K), key=lambda k: p[k]) for p in q]
    l_x = sum(h_eps([f + b for f, b in zip(x, BETA)], [float(k == y) for k in range(K)])
              for x, y in zip(X_L, Y_L)) / 2
    strong = U_S + U_S2
    l_u = sum(h_eps([f + b for f, b in zip(s, BETA)], q[i % 2]) for i, s in enumerate(strong) if mask[i % 2]) / 4
    assert t.loss_x.item() == pytest.approx(l_x, rel=1e-5)
    assert t.loss_u.item() == pytest.approx(l_u, rel=1e-5)
    assert t.loss.item() == pytest.approx(l_x + 0.5 * l_u, rel=1e-5)


def test_debiasing_moves_the_pseudo_labels():
    """Sample 0 (colour (1, 0.9, 0)): raw logits favour class 0 (beta_0 = 0.5); minus b = 1 + beta
    the classes 0 and 1 compare their colours alone, 1.0 vs 0.9, and the margin shrinks."""
    m = make("cdmad.debias_from_epoch=1")
    raw, debiased = m.step_terms(batch(0)), m.step_terms(batch(1))
    assert raw.confidence[0] > debiased.confidence[0]
    assert debiased.target[0, 1] > raw.target[0, 1]


def test_zero_threshold_keeps_every_sample():
    """CDMAD's default --tau 0: every unlabeled sample enters the loss."""
    assert make("ssl.tau=0.0").step_terms(batch()).mask.all()


def test_eps_cross_entropy_caps_the_loss_as_cdmads():
    z = torch.tensor([[100.0, 0.0, 0.0], [1.0, 0.5, -0.2]])
    y = torch.tensor([1, 0])
    out = eps_cross_entropy(z, y)
    assert out[0].item() == pytest.approx(-math.log(1e-8), rel=1e-6)  # 18.42, not 100
    assert out[1].item() == pytest.approx(torch.nn.functional.cross_entropy(z[1:], y[1:]).item(), rel=1e-6)


def test_prediction_subtracts_the_bias_logits():
    m = make()
    m.eval()
    x = images(U_S)
    branches = m.predict_branches(x)
    raw = torch.tensor([[f + b for f, b in zip(s, BETA)] for s in U_S])
    torch.testing.assert_close(branches["raw"], raw)
    torch.testing.assert_close(branches["decision"], raw - torch.tensor([1.0 + b for b in BETA]))
    torch.testing.assert_close(m.predict(x), branches["decision"])
    d = m.diagnostics()
    assert d["bias_logits"] == pytest.approx([1.5, 1.0, 0.5]) and d["bias_argmax"] == 0
    assert d["bias_range"] == pytest.approx(1.0)


def test_two_micro_batches_give_the_one_batch_gradient():
    g = torch.Generator().manual_seed(1)

    def rand(n: int) -> torch.Tensor:
        return torch.randn(n, 3, 2, 2, generator=g)

    full = Batch(rand(4), torch.tensor([0, 1, 2, 0]), rand(4), rand(4), torch.arange(4), step=3, u_s2=rand(4))

    def grads(parts: list[Batch]) -> list[torch.Tensor]:
        m = make("ssl.tau=0.4", "cdmad.debias_from_epoch=1")
        with torch.no_grad():
            m.head.fc.weight.copy_(torch.randn(K, K, generator=torch.Generator().manual_seed(2)) * 2)
        loss = sum(m.training_step(b).loss for b in parts) / len(parts)
        loss.backward()
        return [p.grad.clone() for p in m.parameters()]

    for a, b in zip(grads([full]), grads(full.split(2))):
        torch.testing.assert_close(a, b)


def test_head_survives_a_state_dict_round_trip():
    a = make()
    with torch.no_grad():
        a.head.fc.bias.add_(torch.tensor([0.3, -0.2, 0.1]))
    b = make()
    b.load_state_dict(a.state_dict())
    x = images(U_S)
    assert torch.equal(a.predict(x), b.predict(x))


def test_refusals():
    cfg = load_config(None, ["method=cdmad", "head=linear"])
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor([6, 3, 1]), None, float("nan"), 10, K)
    with pytest.raises(ConfigError, match="solid image"):
        METHODS.get("cdmad").from_config(cfg, CachedFeatures(), ctx)
    scratch = ["method=cdmad", "model.arch=wrn-28-2", "model.pretrained=none", "finetune=fft"]
    with pytest.raises(ConfigError, match="no text tower"):
        load_config(None, [*scratch, "head=prototype"])
    assert load_config(None, [*scratch, "head=linear"]).method == "cdmad"


def test_solid_pass_enters_batchnorm_statistics_in_training_only():
    """On a BatchNorm backbone the solid image goes through the training-mode network alone, as in
    CDMAD (its running statistics see it); in evaluation mode it leaves them unchanged."""
    bn = nn.BatchNorm2d(3)

    class Normed(MeanColour):
        def __init__(self) -> None:
            super().__init__()
            self.bn = bn

        def encode_image(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(x).mean(dim=(2, 3))

    cfg = load_config(None, ["method=cdmad", "head=linear", "cdmad.solid_value=3.0"])
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor([6, 3, 1]), None, float("nan"), 10, K)
    m = METHODS.get("cdmad").from_config(cfg, Normed(), ctx)
    m.eval()
    m.bias_logits(images(X_L))
    assert torch.equal(bn.running_mean, torch.zeros(3))
    m.train()
    m.bias_logits(images(X_L))
    torch.testing.assert_close(bn.running_mean, torch.full((3,), 0.3))  # 0.9 * 0 + 0.1 * 3


def test_batchnorm_backbone_sees_each_view_alone_as_cdmad():
    """On a batch-statistics backbone CDMAD's passes are separate (solid, weak, x, strong, strong:
    five BatchNorm updates a step, fixmatchcdmad.py:232-252), so each view is normalised with its
    own statistics; the joint pass of the other methods would give one update and other features."""

    class Normed(MeanColour):
        batch_statistics = True

        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(3)

        def encode_image(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(x).mean(dim=(2, 3))

    m = make()
    m.backbone = Normed()
    m.train()
    b = batch()
    f = m.view_features(b)
    assert int(m.backbone.bn.num_batches_tracked) == 4
    alone = nn.BatchNorm2d(3).train()
    for name in ("x_l", "u_w", "u_s", "u_s2"):
        torch.testing.assert_close(f[name], alone(getattr(b, name)).mean(dim=(2, 3)))
    joint = torch.cat([b.x_l, b.u_w, b.u_s, b.u_s2])
    assert not torch.allclose(f["x_l"], alone(joint).mean(dim=(2, 3))[:2])
    m.training_step(b)
    assert int(m.backbone.bn.num_batches_tracked) == 4 + 5


@pytest.mark.parametrize("backbone", [
    ["head=prototype"],  # micro CLIP: text-initialised cosine head
    ["model.arch=wrn-28-2", "model.image_size=16", "finetune=fft", "head=linear"],  # scratch WRN
], ids=["micro_clip", "scratch_wrn"])
def test_trains_end_to_end(tmp_path, backbone):
    cfg = load_config("synthetic_smoke", [
        "method=cdmad", *backbone, f"output_dir={tmp_path / 'run'}", f"cache.dir={tmp_path / 'cache'}",
        "train.steps_per_epoch=2", "train.batch_size=4", "eval.pseudo_label_max=16", "ssl.tau=0.0",
        "cdmad.debias_from_epoch=0",
    ])
    init = weight_state(assemble_run(cfg, make_runtime("cpu", "fp32")).method)
    run = train(cfg)
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["steps"] == 2 and final["images_seen"]["unlabeled"] == 8
    weights = load_file(str(run / "weights.safetensors"))
    assert any(not torch.equal(weights[k], init[k]) for k in weights if k.startswith("head."))
    assert max(float((weights[k].float() - init[k].float()).abs().max()) for k in weights) > 1e-4
    diag = final["method_diagnostics"]
    assert len(diag["bias_logits"]) == 10 and diag["bias_range"] > 0
    assert "raw" in final.get("branch_acc", {})
