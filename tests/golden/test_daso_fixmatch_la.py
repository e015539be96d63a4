"""ulfine's ``fixmatch_la`` against DASO's FixMatch + LA (ytaek-oh/daso@3541a6c).

The fixture holds one ``FixMatch.run_step`` of DASO's own code with ``ALGORITHM.LOGIT_ADJUST.APPLY``
(tau 1, threshold 0.95 of ``configs/cifar10/fixmatch.yaml``; scripts/golden/make_daso.py): the
labeled cross-entropy on z + tau log p_data, pseudo-labels and the consistency loss on the raw z.
ulfine's default ``fixmatch_la.adjust=labeled`` is that form; ``adjust=both`` is not.
"""

from __future__ import annotations

import torch
from golden_fixtures import build, close, identity_head, load, mismatches, same

from ulfine.batch import Batch
from ulfine.methods.base import StepOutput
from ulfine.methods.losses import logit_adjusted

T, META = load("daso_fixmatch_la")
OPTS = META["options"]
COUNTS = torch.tensor(OPTS["labeled_counts"])
K = len(COUNTS)


def method(*overrides: str):
    return identity_head(build("fixmatch_la", [
        "head=linear", f"ssl.tau={OPTS['conf_thres']}", f"ssl.lambda_u={OPTS['lambda_u']}",
        f"fixmatch_la.tau_la={OPTS['tau_la']}", *overrides], COUNTS, K))


def step(*overrides: str) -> StepOutput:
    return method(*overrides).training_step(Batch(T["l_images"], T["labels"], T["ul_weak"], T["ul_strong"]))


def check(out: StepOutput) -> None:
    close(out.logs["loss_s"], T["loss_cls"])
    close(out.logs["loss_u"], T["loss_cons"])
    close(out.loss, T["loss_total"])
    same(out.pseudo.label, T["pseudo_label"])
    same(out.pseudo.mask, T["mask"])
    close(out.pseudo.confidence, T["confidence"])


def test_fixture_is_daso_fixmatch_with_logit_adjustment():
    assert META["peer"] == "daso" and META["commit"].startswith("3541a6c")
    assert OPTS["with_la"] and OPTS["unlabeled_loss"] == "CrossEntropyLoss"
    assert 0 < T["mask"].sum() < len(T["mask"])
    close(T["p_data"], COUNTS / COUNTS.sum())


def test_adjusted_labeled_logits_match_daso():
    adjusted = logit_adjusted(T["l_images"], COUNTS.float(), OPTS["tau_la"])
    close(adjusted, T["l_logits_adjusted"])
    close(method().labeled_loss(T["l_images"], T["labels"]), T["loss_cls"])


def test_unadjusted_consistency_loss_matches_daso():
    m = method()
    close(m.unlabeled_loss(T["ul_strong"], T["pseudo_label"], T["mask"]), T["loss_cons"])


def test_training_step_matches_daso():
    check(step())


def test_can_fail_with_another_tau_la():
    """tau_la 1 -> 0.5: the labeled loss no longer matches DASO's."""
    assert mismatches(lambda: check(step("fixmatch_la.tau_la=0.5")))


def test_can_fail_with_the_strong_view_adjusted():
    """adjust=both (ulfine's earlier reading) also adjusts L_u, which DASO does not."""
    assert mismatches(lambda: check(step("fixmatch_la.adjust=both")))
