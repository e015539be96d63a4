"""ulfine's ``finessl`` against FineSSL's own ``Trainer.train`` (Gank0078/FineSSL@76b6f48).

The fixture holds two epochs of three optimiser steps of FineSSL's real training loop
(scripts/golden/make_finessl.py): its inputs (labeled, weak and two strong views, unlabeled
indices), the initial encoder stand-in and head weights, and per step what ``train`` computed
(every loss term, classwise_acc, the BaM margins, pseudo-labels, masks, conf1, the
``selected_label`` buffer, both heads' logits) and the parameters after the SGD step. ulfine's
method runs the same steps on the same inputs and weights, with the same SGD, calling the engine's
hooks (``after_optimizer_step``, ``on_epoch_end``) as the engine does; every value must agree to
1e-5, labels and masks exactly.
"""

from __future__ import annotations

import pytest
import torch
from golden_fixtures import close, load, mismatches, same
from torch import nn

from ulfine.batch import Batch
from ulfine.config import load_config
from ulfine.methods import METHODS, MethodContext
from ulfine.methods.finessl import FineSSL, margin_logits

T, META = load("finessl_train")
S, OPTS = META["sizes"], META["options"]
K, D, N_U = S["num_classes"], S["feature_dim"], S["num_unlabeled"]
SPE = S["steps_per_epoch"]
STEPS = META["steps"]
LR = META["optimizer"]["lr"]


class Encoder(nn.Module):
    """The generator's stand-in for FineSSL's tuned image encoder: a bias-free linear map."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.map = nn.Linear(D, D, bias=False)
        with torch.no_grad():
            self.map.weight.copy_(weight)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.map(x)


def build(*overrides: str) -> FineSSL:
    """ulfine's FineSSL with the fixture's options and FineSSL's initial weights."""
    cfg = load_config(None, [
        "method=finessl", f"ssl.tau={OPTS['th']}", f"ssl.mu={S['mu']}", f"finessl.alpha={OPTS['alpha']}",
        f"finessl.w_con={OPTS['w_con']}", f"finessl.smoothing={OPTS['smoothing']}",
        f"finessl.th_min={OPTS['th_min']}", *overrides])
    ctx = MethodContext(K, [f"c{i}" for i in range(K)], torch.ones(K), None, float("nan"), N_U, D,
                        steps_per_epoch=SPE)
    m = METHODS.get("finessl").from_config(cfg, Encoder(T["init.encoder"]), ctx)
    with torch.no_grad():  # FineSSL's train() starts with head1.weight <- head.weight
        m.head.weight.copy_(T["init.head.weight"])
        m.head1.weight.copy_(T["init.head.weight"])
        m.head.logit_scale.copy_(T["init.head.logit_scale"])
        m.head1.logit_scale.copy_(T["init.head1.logit_scale"])
    return m


def batch(i: int) -> Batch:
    p = f"step{i}.input."
    return Batch(T[p + "x"], T[p + "y"], T[p + "u_w"], T[p + "u_s"], T[p + "uidx"], step=i, u_s2=T[p + "u_s2"])


def run(m: FineSSL, steps: int = STEPS) -> None:
    """The fixture's steps through ``m``, checking each against FineSSL's (AssertionError on a miss)."""
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=LR)
    for i in range(steps):
        peer = {k.removeprefix(f"step{i}.peer."): v for k, v in T.items() if k.startswith(f"step{i}.peer.")}
        b = batch(i)
        close(m.classwise_acc, peer["classwise_acc"])  # the status this step's margin reads
        t = m.step_terms(b)
        close(t.margins, peer["alpha"].squeeze(1))
        z = torch.cat([t.logits[n] for n in ("z_x_l", "z_u_w", "z_u_s", "z_u_s2")])
        z1 = torch.cat([t.logits[n] for n in ("z1_x_l", "z1_u_w", "z1_u_s", "z1_u_s2")])
        close(z, peer["z"])
        close(z1, peer["z1"])
        close(margin_logits(t.logits["z_x_l"], b.y_l, t.margins), peer["output_x"])
        label2 = t.label.repeat(2)
        z_s = torch.cat([t.logits["z_u_s"], t.logits["z_u_s2"]])
        close(margin_logits(z_s, label2, t.margins), peer["output_u_s_twice"])
        same(t.label, peer["targets_u"])
        close(t.confidence, peer["conf"])
        same(t.mask, peer["mask"])
        close(t.confidence_aux, peer["conf1"])
        same(t.mask_aux, peer["mask1"])
        same(t.select, peer["select"])
        for ours, theirs in ((t.loss_x, "Lx"), (t.loss_x1, "Lx1"), (t.loss_u, "Lu"), (t.loss_u1, "Lu1"),
                             (t.loss, "loss")):
            close(ours, peer[theirs])
        opt.zero_grad()
        t.loss.backward()
        opt.step()
        m.after_optimizer_step(i)
        same(m.selected_label, peer["selected_label"])
        after = f"step{i}.after."
        close(m.backbone.map.weight, T[after + "encoder"])
        close(m.head.weight, T[after + "head.weight"])
        close(m.head.logit_scale, T[after + "head.logit_scale"])
        close(m.head1.weight, T[after + "head1.weight"])
        close(m.head1.logit_scale, T[after + "head1.logit_scale"])
        if (i + 1) % SPE == 0:
            m.on_epoch_end((i + 1) // SPE)


def test_fixture_is_finessl_train_and_exercises_every_branch():
    assert META["peer"] == "finessl" and META["commit"].startswith("76b6f48")
    assert META["function"] == "trainer.Trainer.train" and STEPS == S["epochs"] * SPE == 6
    masks = {n: torch.cat([T[f"step{i}.peer.{n}"] for i in range(STEPS)]) for n in ("mask", "mask1", "select")}
    for name, mask in masks.items():  # each threshold passes some samples and stops others
        assert 0 < int(mask.sum()) < len(mask), name
    assert not torch.equal(masks["mask"], masks["select"])  # th (0.8) and the fixed 0.7 differ here
    # the status: zero at each epoch's first step (the reset), non-zero later in the epoch
    for i in range(STEPS):
        status = T[f"step{i}.peer.classwise_acc"]
        assert (status.abs().sum() == 0) == (i % SPE == 0), (i, status)
    buffers = [T[f"step{i}.peer.selected_label"] for i in range(STEPS)]
    assert (buffers[SPE] >= 0).sum() < (buffers[SPE - 1] >= 0).sum()  # the buffer was reset
    scales = [float(T[f"step{i}.after.head.logit_scale"]) for i in range(STEPS)]
    assert len(set(scales)) == STEPS  # the learnable scale moved at every step


def test_every_step_matches_finessl():
    run(build())


def test_training_step_output_matches_first_step():
    m = build()
    out = m.training_step(batch(0))
    close(out.loss, T["step0.peer.loss"])
    close(out.logs["loss_s"], T["step0.peer.Lx"])
    close(out.logs["loss_s_aux"], T["step0.peer.Lx1"])
    close(out.logs["loss_u"], T["step0.peer.Lu"])
    close(out.logs["loss_u_aux"], T["step0.peer.Lu1"])
    same(out.pseudo.label, T["step0.peer.targets_u"])
    same(out.pseudo.mask, T["step0.peer.mask"])
    same(out.pseudo.idx, T["step0.input.uidx"])


def _no_epoch_reset(m: FineSSL) -> FineSSL:
    m.on_epoch_end = lambda epoch: None
    return m


def _scale(m: FineSSL) -> FineSSL:
    with torch.no_grad():
        m.head.logit_scale.fill_(1 / 0.05)
    return m


def _label(m: FineSSL) -> FineSSL:
    y = T["step0.input.y"]
    T["step0.input.y"] = (y + 1) % K  # restored by the test
    return m


@pytest.mark.parametrize("overrides, perturb", [
    (["finessl.select_threshold=0.75"], None),  # which pseudo-labels enter the buffer
    (["ssl.tau=0.7"], None),  # th: the mask of L_u1
    (["finessl.th_min=0.0"], None),  # the mask of L_u (FineSSL's default, not this fixture's)
    (["finessl.smoothing=0.4"], None),
    (["finessl.alpha=4.0"], None),
    ([], _no_epoch_reset),
    ([], _scale),
    ([], _label),
], ids=["select_threshold", "th", "th_min", "smoothing", "alpha", "no_epoch_reset", "scale", "label"])
def test_can_fail_when_perturbed(overrides, perturb):
    """Each perturbation of a threshold, the scale, a label or the reset breaks the agreement."""
    y0 = T["step0.input.y"].clone()
    try:
        m = build(*overrides)
        if perturb is not None:
            m = perturb(m)
        assert mismatches(lambda: run(m))
    finally:
        T["step0.input.y"] = y0
