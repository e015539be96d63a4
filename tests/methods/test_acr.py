"""ACR's losses, targets and distribution estimate against hand computations on fixed logits.

Features are the logits (identity standard head, balanced head = 2 x identity), K = 3 classes with
labeled counts 6/3/1, so pi = (0.6, 0.3, 0.1). Every expected value below is computed with
``math`` from the numbers in this file, not with the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from by_hand import argmax, ce, softmax

from ulfine.config import load_config
from ulfine.methods import METHODS, Batch, MethodContext
from ulfine.methods.acr import adaptive_tau, anchor_distributions, symmetric_kl
from ulfine.models import CachedFeatures

K = 3
COUNTS = [6, 3, 1]
PI = [0.6, 0.3, 0.1]
LOG_PI = [math.log(p) for p in PI]
X_L = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
Y_L = [0, 2]
U_W = [[3.0, 0.0, 0.0], [0.0, 0.2, -3.0]]
U_S = [[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]]
U_S2 = [[0.0, 1.0, 1.0], [2.0, 0.0, 0.0]]
T = 0.7  # confidence threshold (ssl.tau)


def shift(z, scale):  # z + scale * log pi
    return [v + scale * lp for v, lp in zip(z, LOG_PI)]


def make(*overrides: str, steps_per_epoch: int = 1, from_labeled=None):
    cfg = load_config(None, ["method=acr", f"ssl.tau={T}", *overrides])
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor(COUNTS), None, float("nan"), 10, K,
                        steps_per_epoch=steps_per_epoch, unlabeled_from_labeled=from_labeled)
    m = METHODS.get("acr").from_config(cfg, CachedFeatures(), ctx)
    with torch.no_grad():
        m.head_standard.fc.weight.copy_(torch.eye(K))
        m.head_balanced.fc.weight.copy_(2 * torch.eye(K))
        m.head_standard.fc.bias.zero_()
        m.head_balanced.fc.bias.zero_()
    return m


def batch(step: int = 0) -> Batch:
    t = torch.tensor
    return Batch(t(X_L), t(Y_L), t(U_W), t(U_S), t([4, 7]), step=step, u_s2=t(U_S2))


def test_targets_and_loss_by_hand():
    m = make("acr.tau_balanced_targets=1.0", "acr.tau_balanced_loss=2.0", "ssl.lambda_u=0.5")
    out = m.training_step(batch())
    # labeled: standard CE on z, balanced CE on 2z + 2 log pi
    l_s = sum(ce(x, y) for x, y in zip(X_L, Y_L)) / 2
    l_sb = sum(ce(shift([2 * v for v in x], 2.0), y) for x, y in zip(X_L, Y_L)) / 2
    # standard targets: argmax(z_w - tau log pi) with tau = tau_max = 2 before any estimate;
    # mask: that confidence >= T, or the raw confidence >= T
    adj = [shift(u, -2.0) for u in U_W]
    std_label = [argmax(a) for a in adj]
    std_mask = [max(softmax(a)) >= T or max(softmax(u)) >= T for a, u in zip(adj, U_W)]
    # balanced targets: argmax(z_w - 1 * log pi); mask: conf(h_w = 2 z_w) >= T or that conf >= T
    bt = [shift(u, -1.0) for u in U_W]
    bal_label = [argmax(b) for b in bt]
    bal_mask = [max(softmax([2 * v for v in u])) >= T or max(softmax(b)) >= T for u, b in zip(U_W, bt)]
    assert std_label == [2, 1] and std_mask == [True, False]  # sample 0 kept by its raw confidence
    assert bal_label == [0, 1] and bal_mask == [True, False]
    strong = U_S + U_S2  # view 1 then view 2, the same targets for both
    l_u = sum(ce(s, std_label[i % 2]) for i, s in enumerate(strong) if std_mask[i % 2]) / 4
    l_ub = sum(ce([2 * v for v in s], bal_label[i % 2]) for i, s in enumerate(strong) if bal_mask[i % 2]) / 4
    assert out.loss.item() == pytest.approx(l_s + l_sb + 0.5 * (l_u + l_ub), rel=1e-6)
    assert out.logs["loss_u"].item() == pytest.approx(l_u, rel=1e-6)
    assert out.pseudo.label.tolist() == std_label and out.pseudo.mask.tolist() == std_mask
    assert out.pseudo.confidence[1].item() == pytest.approx(max(softmax(adj[1])), rel=1e-6)


def test_prediction_is_the_balanced_branch():
    m = make()
    x = torch.tensor(U_S)
    assert torch.equal(m.predict(x), 2 * x)
    branches = m.predict_branches(x)
    assert torch.equal(branches["standard"], x) and torch.equal(branches["decision"], 2 * x)


def test_symmetric_kl_and_anchors_by_hand():
    p, q = [0.5, 0.25, 0.25], [0.2, 0.3, 0.5]
    kl = lambda a, b: sum(x * math.log(x / y) for x, y in zip(a, b))
    assert symmetric_kl(torch.tensor(p), torch.tensor(q)).item() == pytest.approx(0.5 * (kl(p, q) + kl(q, p)))
    anchors = anchor_distributions(torch.tensor(COUNTS))
    torch.testing.assert_close(anchors, torch.tensor([PI, [1 / 3] * 3, PI[::-1]]))
    # classes not sorted by count: the most frequent class gets the rarest share, and so on
    unsorted = anchor_distributions(torch.tensor([3, 1, 6]))
    torch.testing.assert_close(unsorted[2], torch.tensor([0.3, 0.6, 0.1]))


def test_adaptive_tau_by_hand():
    d = [0.0, 1.0, 2.0]  # estimate equals the labeled prior: small tau
    expect = 2.0 * math.exp(0.0) / sum(math.exp(v) for v in d)
    assert adaptive_tau(torch.tensor(d), 2.0).item() == pytest.approx(expect)
    assert adaptive_tau(torch.tensor([2.0, 1.0, 0.0]), 2.0).item() > 1.0  # reversed: large tau


def test_distribution_estimate_and_tau_over_one_epoch():
    """Two steps of one epoch: per step the confident balanced predictions (class 0 of sample 0;
    sample 1 is not confident) move the EMA; at the epoch's end tau follows the mean KLs."""
    m = make("acr.ema_u=0.5", "acr.estimate_from_epoch=0", steps_per_epoch=2)
    u, kls = [1 / 3] * 3, []
    anchors = [PI, [1 / 3] * 3, PI[::-1]]
    for step in range(2):
        m.training_step(batch(step))
        m.after_optimizer_step(step)
        u = [0.5 * a + 0.5 * b for a, b in zip(u, [1.0, 0.0, 0.0])]
        kls.append([0.5 * sum(x * math.log(x / y) + y * math.log(y / x) for x, y in zip(u, a)) for a in anchors])
        torch.testing.assert_close(m.u_estimate, torch.tensor(u))
    assert m.tau.item() == 2.0  # tau moves only when the epoch ends
    m.on_epoch_end(1)
    mean = [(a + b) / 2 for a, b in zip(*kls)]
    expect_tau = 2.0 * math.exp(mean[0]) / sum(math.exp(v) for v in mean)
    assert m.tau.item() == pytest.approx(expect_tau, rel=1e-5)
    assert expect_tau < 1.0  # head-heavy estimate: nearest the consistent anchor, weak adjustment
    assert m.kl_sum.abs().sum().item() == 0 and m.kl_steps.item() == 0


@pytest.mark.parametrize(("counts", "n"), [("samples", [2 / 3, 1 / 3, 0.0]), ("last_per_class", [0.0, 1.0, 0.0])])
def test_estimate_counts_every_sample_or_each_class_last_prediction(counts, n):
    """Weak views predicted 0 (confident), 0 (confident), 1 (confident), 0 (not confident, balanced
    softmax of (0.6, 0, 0) = 0.48 < 0.7): 'samples' counts 2, 1, 0 [R]; 'last_per_class' keeps each
    class's last view, as ACR's indexed add on the CPU: class 0's is not confident, so 0, 1, 0."""
    m = make("acr.ema_u=0.5", "acr.estimate_from_epoch=0", f"acr.estimate_counts={counts}")
    t = torch.tensor
    u_w = t([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.3, 0.0, 0.0]])
    m.training_step(Batch(t(X_L), t(Y_L), u_w, u_w.flip(0), t([1, 2, 3, 5]), step=0, u_s2=u_w))
    m.after_optimizer_step(0)
    torch.testing.assert_close(m.u_estimate, torch.tensor([0.5 / 3 + 0.5 * v for v in n]))


def test_no_estimate_before_its_epoch_and_labeled_copies_excluded():
    m = make("acr.estimate_from_epoch=1", steps_per_epoch=1)
    m.training_step(batch(0))
    m.after_optimizer_step(0)
    torch.testing.assert_close(m.u_estimate, torch.full((K,), 1 / 3))  # epoch 0: nothing estimated
    # sample 0 (unlabeled index 4) is a labeled image: its confident prediction is not counted, so
    # the step moves nothing and the epoch keeps tau = tau_max
    copies = torch.zeros(10, dtype=torch.bool)
    copies[4] = True
    m = make("acr.estimate_from_epoch=0", steps_per_epoch=1, from_labeled=copies)
    m.training_step(batch(0))
    m.after_optimizer_step(0)
    m.on_epoch_end(1)
    torch.testing.assert_close(m.u_estimate, torch.full((K,), 1 / 3))
    assert m.tau.item() == 2.0


def test_acr_needs_no_text():
    assert METHODS.get("acr").text_need("prototype") is None
    assert METHODS.get("acr").strong_views == 2
