"""ulfine's ``daso`` against DASO's own code (ytaek-oh/daso@3541a6c).

The fixture holds 6 steps of DASO's real ``train()`` loop (``DASO.run_step`` ->
``DASOModel.forward_train``) with ``configs/cifar10/fixmatch_daso.yaml``, a 3-feature class queue,
2 pre-training steps and a pseudo-label window of 2 steps, on an identity encoder with learning
rate 0 (scripts/golden/make_daso_method.py): per step the prototypes, the semantic soft targets,
the blend weights, the final pseudo-labels, confidences and masks, the three loss terms and their
sum, then the queue's prototypes and the pseudo-label distribution after the step. ulfine's DASO
runs the same steps through ``training_step`` and ``after_optimizer_step``.

(Named ``test_daso_golden.py``; ``test_daso_fixmatch_la.py`` checks DASO's FixMatch + LA baseline.)
"""

from __future__ import annotations

import torch
from golden_fixtures import build, close, load, mismatches, same

from ulfine.batch import Batch
from ulfine.methods.daso import DASO, blend_weights, semantic_scores

T, META = load("daso_method")
OPTS = META["options"]
COUNTS = torch.tensor(OPTS["labeled_counts"])
STEPS, B_U, D = T["ul_weak"].shape
K = OPTS["num_classes"]


def make(*overrides: str) -> DASO:
    """ulfine's DASO with DASO's options and classifier."""
    m = build("daso", ["head=linear", f"ssl.tau={OPTS['conf_thres']}", f"ssl.lambda_u={OPTS['lambda_u']}",
                       f"daso.queue_size={OPTS['queue_size']}", f"daso.proto_temp={OPTS['proto_temp']}",
                       f"daso.dist_temp={OPTS['dist_temp']}", f"daso.dist_aware={OPTS['dist_aware']}",
                       f"daso.interp_alpha={OPTS['interp_alpha']}", f"daso.align_weight={OPTS['psa_loss_weight']}",
                       f"daso.pretrain_steps={OPTS['pretrain_steps']}",
                       f"daso.dist_update_period={OPTS['pl_dist_update_period']}", *overrides], COUNTS, D,
              num_unlabeled=B_U)
    with torch.no_grad():
        m.head.fc.weight.copy_(T["classifier.weight"])
        m.head.fc.bias.copy_(T["classifier.bias"])
    return m


def batch(s: int, labels: dict[int, torch.Tensor] | None = None) -> Batch:
    y = (labels or {}).get(s, T["labels"][s])
    return Batch(T["l_images"][s], y, T["ul_weak"][s], T["ul_strong"][s], idx_u=torch.arange(B_U), step=s)


def check_step(m: DASO, s: int, labels: dict[int, torch.Tensor] | None = None) -> None:
    """One step of ulfine against DASO's step s, then the state after it."""
    semantic = bool(T["semantic"][s])
    assert m.semantic_active(s) == semantic
    b = batch(s, labels)
    if semantic:
        prototypes = m.queue.prototypes(b.x_l, b.y_l)  # this step's labeled features pushed first
        close(prototypes, T["prototypes"][s])
        scores = semantic_scores(b.u_w, prototypes, m.opts.proto_temp)
        close(scores, T["sim_weak"][s])
        close(torch.softmax(scores, -1), T["soft_target"][s])
        same(scores.argmax(-1), T["assignment"][s])
        close(blend_weights(m.pl_dist, m.opts.dist_temp), T["current_pl_dist"][s])
    out = m.training_step(b)
    close(out.logs["loss_s"], T["loss_cls"][s])
    close(out.logs["loss_u"], T["loss_cons"][s])
    close(out.logs["loss_align"], T["loss_assign"][s])
    close(out.loss, T["losses"][s])
    same(out.pseudo.label, T["pred_class"][s])
    same(out.pseudo.mask, T["loss_weight"][s])
    close(out.pseudo.confidence, T["confidence"][s])
    m.after_optimizer_step(s)
    close(m.queue.prototypes(), T["prototypes_after"][s])
    if s + 1 < OPTS["max_iter"]:  # DASO skips the window's update after its very last step
        close(m.pl_dist, T["pl_dist_after"][s])


def run(m: DASO, labels: dict[int, torch.Tensor] | None = None) -> None:
    for s in range(STEPS):
        check_step(m, s, labels)


def test_fixture_is_daso_with_every_part_active():
    assert META["peer"] == "daso" and META["commit"].startswith("3541a6c")
    assert not OPTS["with_la"] and not OPTS["with_abc"] and OPTS["unlabeled_loss"] == "CrossEntropyLoss"
    assert OPTS["dist_aware"] and OPTS["dist_temp"] == 1.5 and OPTS["proto_temp"] == 0.05
    sem = T["semantic"]
    assert sem.tolist() == [s >= OPTS["pretrain_steps"] for s in range(STEPS)]
    mask = T["loss_weight"][sem]
    assert 0 < mask.sum() < mask.numel()  # confident and unconfident pseudo-labels
    assert (T["linear_pl"][sem] != T["pred_class"][sem]).any()  # the blend changed labels
    w = T["pred_to_dist"][sem]
    assert ((w > 0.05) & (w < 0.95)).any() and (w == 1).any()  # partial and full blends
    # a queue overflowed: some class had more than queue_size labeled images before step 2
    seen = torch.bincount(T["labels"][:3].flatten(), minlength=K)
    assert (seen > OPTS["queue_size"]).any()
    assert (T["prototypes"][2].abs().sum(-1) == 0).any()  # and a class still has no prototype


def test_every_step_matches_daso():
    run(make())


def test_linear_scores_and_prediction():
    m = make()
    x = T["ul_weak"][0]
    close(m.predict(x), x @ T["classifier.weight"].t() + T["classifier.bias"])
    assert set(m.predict_branches(x)) == {"decision", "semantic"}


def test_can_fail_with_another_dist_temp():
    """T_dist 1.5 -> 0.3: other blend weights, other pseudo-labels."""
    assert mismatches(lambda: run(make("daso.dist_temp=0.3")))


def test_can_fail_with_another_proto_temp():
    """T_proto 0.05 -> 0.1: other semantic targets and alignment loss."""
    assert mismatches(lambda: run(make("daso.proto_temp=0.1")))


def test_can_fail_with_another_threshold():
    assert mismatches(lambda: run(make("ssl.tau=0.9")))


def test_can_fail_with_another_queue_size():
    """4 features per class instead of 3: other prototypes once a queue overflows."""
    assert mismatches(lambda: run(make("daso.queue_size=4")))


def test_can_fail_with_another_schedule():
    assert mismatches(lambda: run(make("daso.pretrain_steps=3")))
    assert mismatches(lambda: run(make("daso.dist_update_period=3")))


def test_can_fail_with_the_alignment_loss_weighted_otherwise():
    assert mismatches(lambda: run(make("daso.align_weight=0.5")))


def test_can_fail_with_a_labeled_label_changed():
    """One labeled image of step 0 filed under another class: another queue, other prototypes."""
    y = T["labels"][0].clone()
    y[0] = (y[0] + 1) % K
    assert mismatches(lambda: run(make(), {0: y}))
