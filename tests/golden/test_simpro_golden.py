"""ulfine's ``simpro`` against SimPro's own ``SimPro/train.py`` (LeapLabTHU/SimPro@aa2425d).

The fixture holds every step of a real 3-epoch x 2-step run of SimPro's ``main()``/``train()``
with the CIFAR-10 values of ``sh/SimPro.sh`` (tau 2, threshold 0.95, ema_u 0.9), mu 2 and a fixed
linear head (scripts/golden/make_simpro.py): the soft pseudo-labels, their confidence and mask,
L_x, L_u, the total, both adjustments of each epoch, the epoch's statistics after each step and
both priors after each epoch's M-step. ulfine's SimPro runs the same steps through
``training_step``, ``after_optimizer_step`` and ``on_epoch_end``.

The fixture's labeled weak and strong views are the same vector (ulfine has one labeled view,
docs/method.md: SimPro), and its sets divide into whole batches, so SimPro's 1/scale_ratio is
ulfine's mu * N_l / N_u.
"""

from __future__ import annotations

import torch
from golden_fixtures import build, close, load, mismatches, same

from ulfine.batch import Batch
from ulfine.methods.simpro import SimPro, prior_adjustment

T, META = load("simpro")
OPTS = META["options"]
COUNTS = torch.tensor(OPTS["labeled_counts"])
K, STEPS, EVAL_STEP = OPTS["num_classes"], len(T["epoch"]), OPTS["eval_step"]


def make(*overrides: str) -> SimPro:
    """ulfine's SimPro with SimPro's options and head."""
    m = build("simpro", ["head=linear", f"ssl.tau={OPTS['threshold']}", f"ssl.mu={OPTS['mu']}", "ssl.lambda_u=1.0",
                         f"simpro.tau={OPTS['tau']}", f"simpro.ema_u={OPTS['ema_u']}", *overrides],
              COUNTS, T["fc.weight"].shape[1], num_unlabeled=OPTS["num_unlabeled"], steps_per_epoch=EVAL_STEP)
    with torch.no_grad():
        m.head.fc.weight.copy_(T["fc.weight"])
        m.head.fc.bias.copy_(T["fc.bias"])
    return m


def batch(s: int, y: torch.Tensor | None = None) -> Batch:
    b = T["inputs_u_w"].shape[1]
    return Batch(T["inputs_l_w"][s], T["l_real"][s] if y is None else y, T["inputs_u_w"][s], T["inputs_u_s"][s],
                 idx_u=torch.arange(s * b, (s + 1) * b), step=s, u_s2=T["inputs_u_s1"][s])


def check_step(m: SimPro, s: int, y: torch.Tensor | None = None) -> None:
    """One step against SimPro's step s: adjustments, targets, losses, then the epoch's sums."""
    adj_t, adj_u = m.adjustments()
    close(adj_t, T["adjustment"][s])
    close(adj_u, T["adjustment_u"][s])
    out = m.training_step(batch(s, y))
    close(out.logs["loss_s"], T["Lx"][s])
    close(out.logs["loss_u"], T["Lu"][s])
    close(out.loss, T["loss"][s])
    same(out.pseudo.mask, T["mask"][s])
    close(out.pseudo.confidence, T["max_probs"][s])
    same(out.pseudo.label, T["pseudo_label"][s].argmax(-1))
    m.after_optimizer_step(s)
    close(m.epoch_soft_sum, T["dis_unlabeled"][s])
    close(m.epoch_labeled_counts, T["count_labeled_dataset"][s])


def run(m: SimPro, labels: dict[int, torch.Tensor] | None = None) -> None:
    """Every step of the fixture, epoch by epoch, as the engine calls the hooks."""
    for s in range(STEPS):
        if s % EVAL_STEP == 0:  # the priors SimPro's epoch starts from
            close(m.unlabeled_prior, T["estimated_dis"][s])
            close(m.training_prior, T["adapt_dis"][s])
        check_step(m, s, (labels or {}).get(s))
        if s % EVAL_STEP == EVAL_STEP - 1:
            m.on_epoch_end(int(T["epoch"][s]) + 1)
    close(m.unlabeled_prior, T["final_estimated_dis"])
    close(m.training_prior, T["final_adapt_dis"])


def test_fixture_is_simpro_with_its_cifar10_recipe():
    assert META["peer"] == "simpro" and META["commit"].startswith("aa2425d")
    assert (OPTS["tau"], OPTS["threshold"], OPTS["ema_u"]) == (2.0, 0.95, 0.9)
    assert STEPS == OPTS["epochs"] * EVAL_STEP == 6
    assert torch.equal(T["inputs_l_w"], T["inputs_l_s"])  # one labeled view, as ulfine's batch
    assert all(0 < int(m.sum()) < m.numel() for m in T["mask"])  # the threshold stops some, not all
    assert not torch.allclose(T["adjustment_u"][-1], T["adjustment_u"][-1].mean())  # pi_u moved
    assert not torch.allclose(T["adapt_dis"][-1], T["py_l"])  # pi_t moved


def test_labeled_weight_is_simpros_inverse_scale_ratio():
    m = make()
    assert abs(m.labeled_weight - 1.0 / OPTS["scale_ratio"]) < 1e-6
    assert abs(m.labeled_weight * OPTS["num_unlabeled"] - OPTS["mu"] * int(COUNTS.sum())) < 1e-4


def test_adjustment_matches_simpro():
    close(prior_adjustment(T["py_l"], OPTS["tau"]), T["adjustment"][0])
    close(prior_adjustment(torch.full((K,), 1.0 / K), OPTS["tau"]), T["adjustment_u"][0])


def test_soft_targets_match_simpro():
    """L_u is the soft cross-entropy against q itself (not its argmax)."""
    from ulfine.methods.simpro import simpro_targets
    for s in range(STEPS):
        t = simpro_targets(torch.nn.functional.linear(T["inputs_u_w"][s], T["fc.weight"], T["fc.bias"]),
                           T["adjustment_u"][s], OPTS["threshold"])
        close(t.probs, T["pseudo_label"][s])


def test_every_step_and_both_priors_match_simpro():
    run(make())


def test_can_fail_with_another_tau():
    """tau 2 -> 1: the labeled loss's adjustment no longer matches."""
    assert mismatches(lambda: run(make("simpro.tau=1.0")))


def test_can_fail_with_another_threshold():
    """threshold 0.95 -> 0.85: three samples (confidence 0.86-0.89) pass, the mask and L_u no
    longer match."""
    assert mismatches(lambda: run(make("ssl.tau=0.85")))


def test_can_fail_with_another_labeled_weight():
    """w_x = 1 instead of SimPro's 1/scale_ratio = 3: L_x no longer matches."""
    assert mismatches(lambda: run(make("simpro.labeled_weight=1.0")))


def test_can_fail_with_another_momentum():
    """ema_u 0.9 -> 0.5: the priors after the first epoch no longer match."""
    assert mismatches(lambda: run(make("simpro.ema_u=0.5")))


def test_can_fail_with_a_flipped_label():
    y = T["l_real"][0].clone()
    y[0] = (y[0] + 1) % K
    assert mismatches(lambda: run(make(), {0: y}))
