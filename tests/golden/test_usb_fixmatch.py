"""ulfine's ``fixmatch`` against USB's FixMatch (microsoft/Semi-supervised-learning@1ef4cbe).

The fixture holds one ``FixMatch.train_step`` of USB's own code on given logits (options of its
``fixmatch_cifar10_40_0.yaml``: p_cutoff 0.95, hard labels, lambda_u 1; scripts/golden/make_usb.py).
ulfine's method gets the same logits as features of an identity linear head.
"""

from __future__ import annotations

import torch
from golden_fixtures import build, close, identity_head, load, mismatches, same

from ulfine.batch import Batch
from ulfine.methods.base import StepOutput
from ulfine.methods.losses import pseudo_label

T, META = load("usb_fixmatch")
OPTS = META["options"]
K = OPTS["num_classes"]


def step(*overrides: str) -> StepOutput:
    """ulfine's FixMatch training step on the fixture's logits (USB's options unless overridden)."""
    method = identity_head(build("fixmatch", ["head=linear", f"ssl.tau={OPTS['p_cutoff']}",
                                              f"ssl.lambda_u={OPTS['lambda_u']}", *overrides],
                                 torch.ones(K), K))
    return method.training_step(Batch(T["x_lb"], T["y_lb"], T["x_ulb_w"], T["x_ulb_s"]))


def check(out: StepOutput) -> None:
    close(out.logs["loss_s"], T["sup_loss"])
    close(out.logs["loss_u"], T["unsup_loss"])
    close(out.loss, T["total_loss"])
    same(out.pseudo.label, T["pseudo_label"])
    same(out.pseudo.mask, T["mask"])
    close(out.pseudo.confidence, T["confidence"])


def test_fixture_is_usb_fixmatch_with_hard_labels():
    assert META["peer"] == "usb" and META["commit"].startswith("1ef4cbe")
    assert OPTS["hard_label"] and OPTS["use_cat"]
    assert 0 < T["mask"].sum() < len(T["mask"])  # some samples pass the threshold, some do not


def test_training_step_matches_usb():
    check(step())


def test_pseudo_labels_match_usb_hooks():
    label, confidence, mask = pseudo_label(T["x_ulb_w"], OPTS["p_cutoff"])
    same(label, T["pseudo_label"])
    same(mask, T["mask"])
    close(confidence, T["confidence"])


def test_can_fail_with_another_threshold():
    """tau 0.95 -> 0.9 admits samples USB masks out: the mask and L_u no longer match."""
    assert mismatches(lambda: check(step("ssl.tau=0.9")))


def test_can_fail_with_a_flipped_label():
    y = T["y_lb"].clone()
    y[0] = (y[0] + 1) % K
    method = identity_head(build("fixmatch", ["head=linear", f"ssl.tau={OPTS['p_cutoff']}"], torch.ones(K), K))
    out = method.training_step(Batch(T["x_lb"], y, T["x_ulb_w"], T["x_ulb_s"]))
    assert mismatches(lambda: check(out))
