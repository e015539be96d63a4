"""Each baseline's loss equals a hand computation on fixed logits (features = logits, identity head)."""

from __future__ import annotations

import math

import pytest
import torch

from ulfine.config import load_config
from ulfine.engine.meter import step_logs
from ulfine.errors import ConfigError
from ulfine.methods import METHODS, Batch, MethodContext
from ulfine.methods.loft import confidence_regimes
from ulfine.methods.losses import masked_consistency, moved_distribution, pseudo_label, smoothed_targets
from ulfine.models import CachedFeatures

K = 3
COUNTS = [6, 3, 1]
X_L = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
Y_L = torch.tensor([0, 2])
U_W = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]])  # confident (0.909) / not (0.452)
U_S = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])


def lse(z):
    return math.log(sum(math.exp(v) for v in z))


def ce(z, y):
    return lse(z) - z[y]


def make(method: str, *overrides: str):
    cfg = load_config(None, [f"method={method}", "head=linear", *overrides])
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor(COUNTS), torch.eye(K), 100.0, 10, K)
    m = METHODS.get(method).from_config(cfg, CachedFeatures(), ctx)
    with torch.no_grad():  # identity classifier: the 2-D "features" are the logits
        m.head.fc.weight.copy_(torch.eye(K))
        m.head.fc.bias.zero_()
    return m


def batch():
    return Batch(X_L, Y_L, U_W, U_S, torch.tensor([4, 7]))


def test_pseudo_label_threshold_and_no_grad():
    z = U_W.clone().requires_grad_(True)
    label, conf, mask = pseudo_label(z, 0.7)
    assert label.tolist() == [0, 1]
    assert conf[0].item() == pytest.approx(math.exp(3) / (math.exp(3) + 2))
    assert mask.tolist() == [1.0, 0.0]
    assert not conf.requires_grad


def test_fixmatch_loss_by_hand():
    out = make("fixmatch", "ssl.tau=0.7", "ssl.lambda_u=2.0").training_step(batch())
    l_s = (ce([2, 0, 0], 0) + ce([0, 1, 0], 2)) / 2
    l_u = (ce([1, 2, 0], 0) * 1 + 0.0) / 2  # mean over all unlabeled samples, masked
    assert out.loss.item() == pytest.approx(l_s + 2.0 * l_u, rel=1e-6)
    assert out.pseudo.mask.tolist() == [True, False]
    assert out.pseudo.idx.tolist() == [4, 7]
    assert float(step_logs(out.loss, out)["mask_rate"]) == 0.5  # what the engine logs


@pytest.mark.parametrize("adjust", ["labeled", "both"])
def test_fixmatch_la_loss_by_hand(adjust):
    m = make("fixmatch_la", "fixmatch_la.tau_la=1.0", "ssl.tau=0.7", f"fixmatch_la.adjust={adjust}")
    out = m.training_step(batch())
    lp = [math.log(c / sum(COUNTS)) for c in COUNTS]
    adj = lambda z: [v + p for v, p in zip(z, lp)]
    l_s = (ce(adj([2, 0, 0]), 0) + ce(adj([0, 1, 0]), 2)) / 2
    # pseudo-labels come from the raw (balanced) logits: [3,0,0] -> class 0, confident; DASO's
    # form (the default) leaves the strong-view loss unadjusted
    l_u = ce(adj([1, 2, 0]) if adjust == "both" else [1, 2, 0], 0) / 2
    assert out.loss.item() == pytest.approx(l_s + l_u, rel=1e-6)
    # prediction = raw z (the adjusted training logits minus tau*log pi)
    assert torch.equal(m.predict(U_S), U_S)


def test_fixmatch_la_smooth_loss_by_hand():
    m = make("fixmatch_la_smooth", "fixmatch_la_smooth.margin_scale=0.5", "fixmatch_la_smooth.label_smoothing=0.3",
             "ssl.tau=0.7")
    out = m.training_step(batch())
    lp = [0.5 * math.log(c / sum(COUNTS)) for c in COUNTS]
    adj = lambda z: [v + p for v, p in zip(z, lp)]
    l_s = (ce(adj([2, 0, 0]), 0) + ce(adj([0, 1, 0]), 2)) / 2
    t = [0.7 + 0.1, 0.1, 0.1]  # (1 - eps) onehot(0) + eps / K
    z = adj([1, 2, 0])
    l_u = sum(-ti * (zi - lse(z)) for ti, zi in zip(t, z)) / 2
    assert out.loss.item() == pytest.approx(l_s + l_u, rel=1e-6)


def test_supervised_ignores_unlabeled_and_zeroshot_scores():
    out = make("supervised").training_step(Batch(X_L, Y_L))
    assert out.loss.item() == pytest.approx((ce([2, 0, 0], 0) + ce([0, 1, 0], 2)) / 2, rel=1e-6)
    cfg = load_config(None, ["method=zeroshot"])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ctx = MethodContext(3, ["a", "b", "c"], torch.tensor(COUNTS), protos, 50.0, 0, 2)
    zs = METHODS.get("zeroshot").from_config(cfg, CachedFeatures(), ctx)
    z = zs.predict(torch.tensor([[3.0, 4.0]]))  # normalised -> [0.6, 0.8]
    assert z.tolist()[0] == pytest.approx([30.0, 40.0, 50.0], rel=1e-6)


def test_helpers():
    assert smoothed_targets(torch.tensor([1]), 4, 0.2).tolist()[0] == pytest.approx([0.05, 0.85, 0.05, 0.05])
    z = torch.tensor([[0.0, 0.0]])
    assert masked_consistency(z, torch.tensor([0]), torch.tensor([0.0])).item() == 0.0
    assert masked_consistency(z, torch.tensor([0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    est, counts = torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([[3.0, 1.0], [0.0, 0.0]])
    moved = moved_distribution(est, counts, counts.sum(dim=1, keepdim=True), 0.5)
    assert moved.tolist() == [[0.625, 0.375], [0.5, 0.5]]  # an empty row stays put


# LoFT: three unlabeled samples, one per confidence regime at ssl.tau=0.6, loft.tau_ood=0.4
LOFT_U_W = torch.tensor([[3.0, 0.0, 0.0],   # max q = 0.909 >= 0.6: hard label 0
                         [0.0, 1.0, 0.0],   # 0.576: soft, between the thresholds
                         [0.0, 0.2, 0.0]])  # 0.379 <= 0.4: out of distribution, no loss
LOFT_U_S = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0], [2.0, 0.0, 1.0]])


def softmax(z):
    return [math.exp(v - lse(z)) for v in z]


def test_loft_loss_by_hand_in_each_confidence_regime():
    m = make("loft", "ssl.tau=0.6", "loft.tau_ood=0.4", "loft.tau_la=1.0", "ssl.lambda_u=2.0",
             "loft.lambda_soft=0.5")
    out = m.training_step(Batch(X_L, Y_L, LOFT_U_W, LOFT_U_S, torch.tensor([0, 1, 2])))
    lp = [math.log(c / sum(COUNTS)) for c in COUNTS]
    adj = lambda z: [v + p for v, p in zip(z, lp)]
    l_s = (ce(adj([2, 0, 0]), 0) + ce(adj([0, 1, 0]), 2)) / 2  # logit-adjusted labeled loss
    l_hard = ce([1, 2, 0], 0) / 3  # raw strong logits against the hard label; mean over all 3
    q = softmax([0, 1, 0])  # the whole weak distribution is the soft target
    l_soft = sum(-qi * (zi - lse([0, 0, 1])) for qi, zi in zip(q, [0, 0, 1])) / 3
    assert out.loss.item() == pytest.approx(l_s + 2.0 * l_hard + 0.5 * l_soft, rel=1e-6)
    assert out.logs["loss_u"].item() == pytest.approx(l_hard, rel=1e-6)
    assert out.logs["loss_u_soft"].item() == pytest.approx(l_soft, rel=1e-6)
    assert out.logs["soft_rate"].item() == pytest.approx(1 / 3)
    assert out.logs["ood_rate"].item() == pytest.approx(1 / 3)
    assert out.pseudo.mask.tolist() == [True, False, False]
    # the OOD sample's strong view does not enter the loss at all
    moved = LOFT_U_S.clone()
    moved[2] = torch.tensor([-5.0, 9.0, 3.0])
    again = m.training_step(Batch(X_L, Y_L, LOFT_U_W, moved, torch.tensor([0, 1, 2])))
    assert again.loss.item() == out.loss.item()
    # prediction = raw z (no post-hoc correction: the adjustment lives in the loss only)
    assert torch.equal(m.predict(U_S), U_S)


def test_loft_regime_boundaries_and_reduction_to_fixmatch():
    z = torch.tensor([[1.0, 0.0, 0.0]])
    c = torch.softmax(z, -1).max().item()  # exactly representable as the float32 confidence
    _, soft, ood = confidence_regimes(z, tau=c, tau_ood=0.1)  # max q == tau: hard, not soft
    assert (soft.item(), ood.item()) == (0.0, 0.0)
    _, soft, ood = confidence_regimes(z, tau=0.99, tau_ood=c)  # max q == tau_ood: OOD
    assert (soft.item(), ood.item()) == (0.0, 1.0)
    # no adjustment, no soft term: exactly FixMatch's loss on the same batch
    loft = make("loft", "ssl.tau=0.7", "loft.tau_la=0", "loft.lambda_soft=0").training_step(batch())
    fixmatch = make("fixmatch", "ssl.tau=0.7").training_step(batch())
    assert loft.loss.item() == fixmatch.loss.item()


def test_loft_head_scale_and_threshold_order():
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor(COUNTS), torch.eye(K), 100.0, 10, K)

    def build(*overrides):
        return METHODS.get("loft").from_config(load_config(None, ["method=loft", *overrides]), CachedFeatures(), ctx)

    f = torch.tensor([[3.0, 4.0, 0.0]])  # cosine with the text prototypes: [0.6, 0.8, 0]
    assert build().predict(f).tolist()[0] == pytest.approx([15.0, 20.0, 0.0])  # LoFT's scale 25
    assert build("loft.head_scale=null").predict(f).tolist()[0] == pytest.approx([60.0, 80.0, 0.0])
    with pytest.raises(ConfigError, match="loft.tau_ood"):
        build("ssl.tau=0.3", "loft.tau_ood=0.3")
