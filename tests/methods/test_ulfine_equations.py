"""Each ULFine equation (docs/method.md section 4) pinned on small hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ulfine.methods.ulfine.dlf import class_prior, fused_logits
from ulfine.methods.ulfine.paf import (
    NO_PSEUDO_LABEL,
    angles_degrees,
    class_feature_sums,
    ema_visual_prototypes,
    fitting_momentum,
    momentum_fit,
    orthogonality_loss,
    prototype_logits,
    pseudo_label_distribution,
    update_pseudo_label_memory,
    without_modality_gap,
)


# ------------------------------------------------------------------ visual prototypes (EMA)
def update_visual_prototypes(visual, feats, labels, beta):
    """The labeled batch's EMA as ULFine runs it: per-class sums, then the EMA step."""
    sums, counts = class_feature_sums(feats, labels, visual.shape[0])
    return ema_visual_prototypes(visual, sums, counts, beta)


def test_visual_prototype_ema_moves_only_classes_in_batch():
    visual = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # two samples of class 0 (already unit and not: both normalised before the mean), none of 1,
    # one of class 2
    feats = torch.tensor([[0.0, 2.0], [0.0, 5.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 2])
    out = update_visual_prototypes(visual, feats, labels, beta=0.5)
    # class 0: 0.5*(1,0) + 0.5*(0,1) = (0.5,0.5) -> (1/sqrt2, 1/sqrt2)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(out[0], torch.tensor([r, r]))
    # class 1 absent: unchanged exactly
    assert torch.equal(out[1], visual[1])
    # class 2: 0.5*(0.6,0.8) + 0.5*(1,0) = (0.8,0.4) -> /sqrt(0.8) = (0.8944, 0.4472)
    torch.testing.assert_close(out[2], torch.tensor([0.8, 0.4]) / math.sqrt(0.8))
    # pure: the input is untouched
    assert torch.equal(visual[0], torch.tensor([1.0, 0.0]))


def test_visual_prototype_ema_beta_one_keeps_everything():
    visual = F.normalize(torch.randn(4, 3), dim=-1)
    out = update_visual_prototypes(visual, torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0]), beta=1.0)
    torch.testing.assert_close(out, visual)


# ---------------------------------------------------------------------- memory, P_u, alpha
def _memory(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n,), NO_PSEUDO_LABEL, dtype=torch.long), torch.zeros(n)


def test_alpha_is_zero_until_something_is_confident():
    lab, conf = _memory(6)
    pu = pseudo_label_distribution(lab, conf, 3)
    assert torch.equal(pu, torch.zeros(3))
    assert torch.equal(fitting_momentum(pu, 0.1), torch.zeros(3))
    # an all-unconfident batch keeps it at zero
    update_pseudo_label_memory(lab, conf, torch.tensor([0, 1]), torch.tensor([2, 2]),
                               torch.tensor([0.5, 0.6]), torch.tensor([False, False]))
    assert torch.equal(fitting_momentum(pseudo_label_distribution(lab, conf, 3), 0.1), torch.zeros(3))


def test_pu_and_alpha_hand_computed():
    lab, conf = _memory(6)
    update_pseudo_label_memory(
        lab, conf,
        idx=torch.tensor([0, 1, 2, 4, 5]),
        label=torch.tensor([0, 0, 1, 2, 0]),
        confidence=torch.tensor([0.9, 0.8, 0.75, 0.95, 0.6]),
        mask=torch.tensor([True, True, True, True, False]),
    )
    assert lab.tolist() == [0, 0, 1, NO_PSEUDO_LABEL, 2, NO_PSEUDO_LABEL]
    pu = pseudo_label_distribution(lab, conf, 3, "confidence_sum")
    torch.testing.assert_close(pu, torch.tensor([1.7, 0.75, 0.95]))
    torch.testing.assert_close(fitting_momentum(pu, 0.1), torch.tensor([0.1, 0.1 * 0.75 / 1.7, 0.1 * 0.95 / 1.7]))
    pc = pseudo_label_distribution(lab, conf, 3, "count")
    assert pc.tolist() == [2.0, 1.0, 1.0]
    torch.testing.assert_close(fitting_momentum(pc, 0.2), torch.tensor([0.2, 0.1, 0.1]))


def test_memory_overwrite_semantics():
    lab, conf = _memory(4)
    update_pseudo_label_memory(lab, conf, torch.tensor([0, 1, 2]), torch.tensor([1, 1, 2]),
                               torch.tensor([0.9, 0.8, 0.99]), torch.tensor([True, True, True]))
    # sample 0 changes its confident label: its weight moves from class 1 to class 0;
    # sample 1 becomes unconfident: cleared; sample 2 is not visited: kept.
    update_pseudo_label_memory(lab, conf, torch.tensor([0, 1]), torch.tensor([0, 1]),
                               torch.tensor([0.7, 0.5]), torch.tensor([True, False]))
    assert lab.tolist() == [0, NO_PSEUDO_LABEL, 2, NO_PSEUDO_LABEL]
    torch.testing.assert_close(conf, torch.tensor([0.7, 0.0, 0.99, 0.0]))
    torch.testing.assert_close(pseudo_label_distribution(lab, conf, 3), torch.tensor([0.7, 0.0, 0.99]))


# ------------------------------------------------------------------------- momentum fitting
def test_momentum_fit_and_renormalisation():
    text = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # row 0 not unit: normalised first
    visual = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    alpha = torch.tensor([0.5, 0.0, 0.1])
    out = momentum_fit(text, visual, alpha)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(out[0], torch.tensor([r, r]))  # (0.5,0.5) renormalised
    torch.testing.assert_close(out[1], torch.tensor([0.0, 1.0]))  # alpha 0: unchanged
    torch.testing.assert_close(out[2], torch.tensor([0.9, 0.1]) / math.hypot(0.9, 0.1))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_modality_gap_removal_hand_computed():
    """c_v - mean(c_v) + mean(t), renormalised: two image prototypes in a narrow cone around
    (0, 0, 1) and two text prototypes around (1, 0, 0) land around (1, 0, 0), apart as they were."""
    visual = torch.tensor([[0.6, 0.0, 0.8], [0.0, 0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0]])
    out = without_modality_gap(visual, text)
    shift = torch.tensor([0.9 - 0.3, 0.3 - 0.3, 0.0 - 0.8])  # mean(t) - mean(c_v)
    torch.testing.assert_close(out, F.normalize(visual + shift, dim=-1))
    torch.testing.assert_close(out[0], torch.tensor([1.2, 0.0, 0.0]).div(1.2))
    torch.testing.assert_close(out[1], torch.tensor([0.6, 0.6, 0.0]).div(math.hypot(0.6, 0.6)))
    # an offset that every visual prototype shares (what all images have in common) is removed
    assert torch.allclose(without_modality_gap(visual + 5.0, text), out, atol=1e-6)


def test_angles_from_anchor():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    torch.testing.assert_close(angles_degrees(p, a), torch.tensor([45.0, 0.0]))


# ------------------------------------------------------------------------------ orthogonality
def test_orthogonality_loss_two_prototypes_value_and_gradient():
    theta = 0.3
    c = torch.tensor([[1.0, 0.0], [math.cos(theta), math.sin(theta)]], requires_grad=True)
    loss = orthogonality_loss(c)
    torch.testing.assert_close(loss, torch.tensor(math.cos(theta) ** 2))
    loss.backward()
    # dL/dc1 = (I - c1 c1^T) * 2 cos(t) c2 = (0, 2 cos t sin t) = (0, sin 2t)
    torch.testing.assert_close(c.grad[0], torch.tensor([0.0, math.sin(2 * theta)]))
    # by symmetry dL/dc2 = 2 cos(t) (c1 - cos(t) c2)
    c1, c2 = torch.tensor([1.0, 0.0]), torch.tensor([math.cos(theta), math.sin(theta)])
    torch.testing.assert_close(c.grad[1], 2 * math.cos(theta) * (c1 - math.cos(theta) * c2))


def test_orthogonality_loss_three_prototypes_and_scale_invariance():
    c = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    # normalised dots: (1,2)=0, (1,3)=1/sqrt2, (2,3)=1/sqrt2 -> squares 0, .5, .5 ; 6 ordered pairs
    torch.testing.assert_close(orthogonality_loss(c), torch.tensor(2 * (0.5 + 0.5) / 6))
    assert orthogonality_loss(torch.eye(3)).item() == 0.0
    torch.testing.assert_close(orthogonality_loss(5 * c), orthogonality_loss(c))


# ----------------------------------------------------------------------------------- logits
def test_prototype_logits_use_normalised_features_and_scale():
    f = torch.tensor([[3.0, 4.0]])
    protos = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(prototype_logits(f, protos, 100.0), torch.tensor([[60.0, 80.0]]))


def test_class_prior_options():
    torch.testing.assert_close(class_prior(torch.tensor([6, 3, 1])), torch.tensor([0.6, 0.3, 0.1]))
    torch.testing.assert_close(
        class_prior(torch.tensor([6, 3, 1]), torch.tensor([4, 0, 6])), torch.tensor([0.5, 0.15, 0.35])
    )


def test_fused_logits_and_prediction():
    z_l = torch.tensor([[2.0, 1.0, 0.0]])
    z_t = torch.tensor([[0.0, 0.5, 0.2]])
    prior = torch.tensor([0.5, 0.25, 0.25])
    out = fused_logits(z_l, z_t, prior, tau_la=1.0, w_dlf=2.0)
    expected = torch.tensor([[2.0 - math.log(0.5), 1.0 - math.log(0.25) + 1.0, math.log(4) + 0.4]])
    torch.testing.assert_close(out, expected)
    assert out.argmax(-1).item() == 1  # the linear branch alone says class 0: fusion changes the call
    # tau_la=0, w_dlf=0: the plain linear logits
    torch.testing.assert_close(fused_logits(z_l, z_t, prior, 0.0, 0.0), z_l)


@pytest.mark.parametrize("k", [1])
def test_orthogonality_single_class_is_zero(k):
    assert orthogonality_loss(torch.randn(k, 4)).item() == 0.0


def test_fused_logits_are_float32_under_low_precision_inputs():
    z_l = torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16)
    z_t = torch.tensor([[100.0, 100.5]], dtype=torch.bfloat16)
    out = fused_logits(z_l, z_t, torch.tensor([0.5, 0.5]), 1.0, 1.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[101.0, 102.5]]) + math.log(2))  # bf16: 103.0
