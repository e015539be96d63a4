"""SimPro's mechanics: its losses by hand, the per-epoch EM estimates under gradient accumulation
and several processes, skipped steps, the checkpoint, and a tiny end-to-end run on the scratch WRN.

The equations are checked against SimPro's executed code in tests/golden/test_simpro_golden.py;
here, hand computations and the invariances of the engine contract.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from by_hand import SummingPeer as TwoProcesses
from safetensors.torch import load_file

from ulfine.batch import Batch
from ulfine.config import load_config
from ulfine.errors import ConfigError
from ulfine.methods import METHODS, MethodContext
from ulfine.methods.simpro import SimPro, em_priors, prior_adjustment
from ulfine.models import CachedFeatures

sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))
from test_train import small_test_set  # noqa: F401  (autouse fixture: 40 test images)
from tiny import initial_weights, moved, tiny_config

K, COUNTS, N_U = 3, [6, 3, 1], 20
PI = [0.6, 0.3, 0.1]


def make(*overrides: str, collectives=None, steps_per_epoch: int = 2) -> SimPro:
    cfg = load_config(None, ["method=simpro", "head=linear", "ssl.tau=0.6", "ssl.mu=2", *overrides])
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor(COUNTS), None, float("nan"), N_U, K,
                        steps_per_epoch=steps_per_epoch)
    if collectives is not None:
        ctx.collectives = collectives
    m = METHODS.get("simpro").from_config(cfg, CachedFeatures(), ctx)
    with torch.no_grad():  # features are the logits
        m.head.fc.weight.copy_(torch.eye(K))
        m.head.fc.bias.zero_()
    return m


def make_batch(step: int = 0, seed: int = 0, n: int = 4) -> Batch:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    u = lambda: torch.randn(n, K, generator=g) * 3
    return Batch(torch.randn(n, K, generator=g), y, u(), u(), torch.arange(n), step=step, u_s2=u())


def test_options_and_labeled_weight_are_simpros():
    m = make()
    assert (m.opts.tau, m.opts.ema_u, m.opts.labeled_weight) == (2.0, 0.9, None)
    assert m.labeled_weight == pytest.approx(2 * sum(COUNTS) / N_U)  # mu * N_l / N_u
    assert make("simpro.labeled_weight=0.25").labeled_weight == 0.25
    torch.testing.assert_close(m.training_prior, torch.tensor(PI))  # pi_t starts at the labeled prior
    torch.testing.assert_close(m.unlabeled_prior, torch.full((K,), 1 / K))  # pi_u starts uniform
    assert METHODS.get("simpro").strong_views == 2


def test_step_by_hand():
    """One step with pi_t = pi and pi_u uniform: every term from math on the numbers here."""
    m = make()
    x, y = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0, 2]
    u_w, u_s, u_s2 = [[4.0, 0.0, 0.0], [0.0, 0.3, 0.0]], [[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]], [[0.0, 1.0, 1.0],
                                                                                            [2.0, 0.0, 0.0]]
    t = torch.tensor
    out = m.training_step(Batch(t(x), t(y), t(u_w), t(u_s), t([0, 1]), step=0, u_s2=t(u_s2)))
    adj = [math.log(p ** 2 + 1e-12) for p in PI]

    def log_softmax(z):
        lse = math.log(sum(math.exp(v) for v in z))
        return [v - lse for v in z]

    ce = lambda z, k: -log_softmax([a + b for a, b in zip(z, adj)])[k]
    l_x = (ce(x[0], 0) + ce(x[1], 2)) / 2 * m.labeled_weight
    q = [[math.exp(v) for v in log_softmax(z)] for z in u_w]  # pi_u uniform: a constant shift
    mask = [max(r) >= 0.6 for r in q]
    assert mask == [True, False]
    strong = u_s + u_s2
    l_u = sum(-sum(qk * lk for qk, lk in zip(q[i % 2], log_softmax([a + b for a, b in zip(s, adj)])))
              for i, s in enumerate(strong) if mask[i % 2]) / 4
    assert out.logs["loss_s"].item() == pytest.approx(l_x, rel=1e-5)
    assert out.logs["loss_u"].item() == pytest.approx(l_u, rel=1e-5)
    assert out.loss.item() == pytest.approx(l_x + l_u, rel=1e-5)
    assert out.pseudo.mask.tolist() == mask and out.pseudo.label.tolist() == [0, 1]


def test_em_priors_by_hand():
    s, c = torch.tensor([3.0, 1.0, 0.0]), torch.tensor([2.0, 2.0, 2.0])
    new_u, new_t = em_priors(torch.full((3,), 1 / 3), torch.tensor(PI), s, c, 0.5)
    torch.testing.assert_close(new_u, 0.5 * torch.full((3,), 1 / 3) + 0.5 * s / 5)  # / (sum S + 1)
    torch.testing.assert_close(new_t, 0.5 * torch.tensor(PI) + 0.5 * torch.tensor([5.0, 3.0, 2.0]) / 10)
    assert prior_adjustment(torch.tensor([0.0]), 2.0).item() == pytest.approx(math.log(1e-12))


def test_priors_move_only_at_the_epoch_end():
    m = make()
    for s in range(2):
        m.training_step(make_batch(s, seed=s))
        m.after_optimizer_step(s)
    assert m.epoch_labeled_counts.sum().item() == 8 and m.epoch_soft_sum.sum() > 0
    torch.testing.assert_close(m.training_prior, torch.tensor(PI))
    before = m.adjustments()[1].clone()
    m.on_epoch_end(1)
    assert not torch.allclose(m.unlabeled_prior, torch.full((K,), 1 / K))
    assert not torch.allclose(m.adjustments()[1], before)
    assert m.epoch_soft_sum.sum() == 0 and m.epoch_labeled_counts.sum() == 0


def test_gradient_accumulation_gives_the_same_estimates():
    whole, micro = make(), make()
    b = make_batch(0, seed=3)
    whole.training_step(b)
    for part in b.split(2):
        micro.training_step(part)
    for m in (whole, micro):
        m.after_optimizer_step(0)
        m.on_epoch_end(1)
    torch.testing.assert_close(micro.unlabeled_prior, whole.unlabeled_prior)
    torch.testing.assert_close(micro.training_prior, whole.training_prior)


def test_two_processes_hold_the_estimates_of_one():
    single = make()
    b = make_batch(0, seed=4)
    single.training_step(b)
    single.after_optimizer_step(0)
    single.on_epoch_end(1)
    ranks = [make(collectives=TwoProcesses()) for _ in range(2)]
    for rank, part in zip(ranks, b.split(2)):
        rank.training_step(part)
    pending = [r.pending_stats.clone() for r in ranks]
    for r, rank in enumerate(ranks):
        rank.ctx.collectives.other = pending[1 - r]
        rank.after_optimizer_step(0)
        rank.on_epoch_end(1)
        torch.testing.assert_close(rank.unlabeled_prior, single.unlabeled_prior)
        torch.testing.assert_close(rank.training_prior, single.training_prior)


def test_a_skipped_step_leaves_no_statistics():
    m, clean = make(), make()
    m.training_step(make_batch(0, seed=5))  # step 0 is skipped: no after_optimizer_step
    for x in (m, clean):
        x.training_step(make_batch(1, seed=6))
        x.after_optimizer_step(1)
    torch.testing.assert_close(m.epoch_soft_sum, clean.epoch_soft_sum)
    torch.testing.assert_close(m.epoch_labeled_counts, clean.epoch_labeled_counts)


def test_state_survives_a_state_dict_round_trip():
    m = make()
    m.training_step(make_batch(0, seed=7))
    m.after_optimizer_step(0)
    m.on_epoch_end(1)
    m.training_step(make_batch(1, seed=8))
    m.after_optimizer_step(1)  # mid-epoch: the epoch's sums are part of the state
    state = m.state_dict()
    assert {"training_prior", "unlabeled_prior", "epoch_soft_sum", "epoch_labeled_counts"} <= set(state)
    assert "pending_stats" not in state
    fresh = make()
    fresh.load_state_dict(state)
    for name in ("training_prior", "unlabeled_prior", "epoch_soft_sum", "epoch_labeled_counts"):
        assert torch.equal(getattr(fresh, name), getattr(m, name)), name
    a, b = copy.deepcopy(m), fresh
    for x in (a, b):
        x.on_epoch_end(2)
    torch.testing.assert_close(a.unlabeled_prior, b.unlabeled_prior)


def test_prototype_head_is_refused_on_scratch():
    with pytest.raises(ConfigError, match="no text tower"):
        load_config(None, ["method=simpro", "model.arch=wrn-28-2", "model.pretrained=none", "finetune=fft"])


def test_scratch_wrn_trains_end_to_end(tmp_path):
    """2 steps of 1 epoch on the scratch WRN (16 px): the weights move and the epoch's M-step
    moved both priors."""
    args = ("method=simpro", "model.arch=wrn-28-2", "model.image_size=16", "finetune=fft", "head=linear",
            "ssl.tau=0.0")
    cfg = tiny_config(tmp_path, *args)
    init = initial_weights(cfg)
    from ulfine.engine import train
    run = train(cfg)
    assert moved(run, init) > 1e-4
    final = load_file(str(run / "weights.safetensors"))
    assert not torch.allclose(final["unlabeled_prior"], init["unlabeled_prior"])
    assert not torch.allclose(final["training_prior"], init["training_prior"])
