"""ulfine's ``debiaspl`` against DebiasPL's own code (frank-xwang/debiased-pseudo-labeling@3d68ccb).

The fixture holds 5 steps of the real ``train()`` of main_DebiasPL.py (one epoch; ``--tau 0.4
--threshold 0.7 --lambda-u 10 --qhat_m 0.9``, the real ``FixMatch`` model on an identity backbone,
learning rate 0; scripts/golden/make_debiaspl.py): per step the debiased pseudo-label
distribution, its labels, confidences and masks, the estimate q^ before and after the step, the
margin-adjusted strong logits and the loss terms. ulfine's DebiasPL runs the same steps through
``training_step`` and ``after_optimizer_step``.
"""

from __future__ import annotations

import torch
from golden_fixtures import build, close, load, mismatches, same

from ulfine.batch import Batch
from ulfine.methods.debiaspl import DebiasPL, adaptive_margin_logits, debiased_pseudo_labels, log_qhat

T, META = load("debiaspl")
OPTS = META["options"]
STEPS, B_U, D = T["inputs_u_w"].shape
K = OPTS["num_classes"]


def make(*overrides: str) -> DebiasPL:
    """ulfine's DebiasPL with DebiasPL's options and classifier (``fc``)."""
    m = build("debiaspl", ["head=linear", f"ssl.tau={OPTS['threshold']}", f"ssl.lambda_u={OPTS['lambda_u']}",
                           f"debiaspl.tau={OPTS['tau']}", f"debiaspl.qhat_momentum={OPTS['qhat_m']}", *overrides],
              torch.ones(K, dtype=torch.long), D, num_unlabeled=B_U)
    with torch.no_grad():
        m.head.fc.weight.copy_(T["fc.weight"])
        m.head.fc.bias.copy_(T["fc.bias"])
    return m


def batch(s: int, u_w: torch.Tensor | None = None) -> Batch:
    return Batch(T["inputs_x"][s], T["targets_x"][s], T["inputs_u_w"][s] if u_w is None else u_w,
                 T["inputs_u_s"][s], idx_u=torch.arange(B_U), step=s)


def check_step(m: DebiasPL, s: int, u_w: torch.Tensor | None = None) -> None:
    """One step of ulfine against DebiasPL's step s, then q^ after it."""
    close(m.qhat, T["qhat_before"][s])
    b = batch(s, u_w)
    z_w = m.logits(b.u_w)
    close(z_w, T["logits_u_w"][s])
    close(torch.softmax(z_w - m.opts.tau * log_qhat(m.qhat), -1), T["pseudo_label"][s])
    out = m.training_step(b)
    close(out.logs["loss_s"], T["loss_x"][s])
    close(out.logs["loss_u"], T["loss_u"][s])
    close(out.loss, T["loss"][s])
    same(out.pseudo.label, T["pseudo_targets_u"][s])
    same(out.pseudo.mask, T["mask"][s])
    close(out.pseudo.confidence, T["max_probs"][s])
    m.after_optimizer_step(s)
    close(m.qhat, T["qhat"][s])
    # the margin of step s uses the q^ moved by step s itself
    close(adaptive_margin_logits(m.logits(b.u_s), m.qhat, m.opts.tau), T["logits_u_s"][s])


def run(m: DebiasPL, weak: dict[int, torch.Tensor] | None = None) -> None:
    for s in range(STEPS):
        check_step(m, s, (weak or {}).get(s))


def test_fixture_is_debiaspl_with_its_parts_active():
    assert META["peer"] == "debiaspl" and META["commit"].startswith("3d68ccb")
    assert not (OPTS["eman"] or OPTS["multiviews"] or OPTS["cld"] or OPTS["masked_qhat"])
    assert OPTS["tau"] == 0.4 and OPTS["threshold"] == 0.7 and OPTS["lambda_u"] == 10
    assert 0 < T["mask"].sum() < T["mask"].numel()
    assert (T["logits_u_w"].argmax(-1) != T["pseudo_targets_u"]).any()  # debiasing moved a label
    close(T["qhat_before"][0], torch.full((K,), 1.0 / K))  # initial_qhat
    assert T["qhat"][-1].max() > 1.5 / K  # q^ learned the classifier's bias towards the first classes


def test_qhat_is_the_per_class_mean_not_a_scalar():
    """q^ moves by the mean over samples (dim 0), a K-vector: USB's port averages every element."""
    probs = torch.softmax(T["logits_u_w"][0], -1)
    m = OPTS["qhat_m"]
    close(T["qhat"][0], m * T["qhat_before"][0] + (1 - m) * probs.mean(0))
    assert mismatches(lambda: close(T["qhat"][0], m * T["qhat_before"][0] + (1 - m) * probs.mean()))


def test_every_step_matches_debiaspl():
    run(make())


def test_pure_functions_match_a_step():
    s = 2
    label, conf, mask = debiased_pseudo_labels(T["logits_u_w"][s], T["qhat_before"][s], OPTS["tau"],
                                               OPTS["threshold"])
    same(label, T["pseudo_targets_u"][s])
    same(mask, T["mask"][s])
    close(conf, T["max_probs"][s])


def test_can_fail_with_another_tau():
    assert mismatches(lambda: run(make("debiaspl.tau=1.0")))


def test_can_fail_with_another_threshold():
    assert mismatches(lambda: run(make("ssl.tau=0.8")))


def test_can_fail_with_another_momentum():
    assert mismatches(lambda: run(make("debiaspl.qhat_momentum=0.99")))


def test_can_fail_with_another_loss_weight():
    assert mismatches(lambda: run(make("ssl.lambda_u=1.0")))


def test_can_fail_with_a_weak_view_changed():
    """One weak view of step 1 changed: another q^ from then on, other labels and margins."""
    w = T["inputs_u_w"][1].clone()
    w[0] = -w[0]
    assert mismatches(lambda: run(make(), {1: w}))
