"""The ``ulfine`` method wired together: losses per branch, PAF state, switches, fixmatch parity."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ulfine.config import load_config
from ulfine.methods import METHODS, Batch, MethodContext
from ulfine.methods.losses import cross_entropy, masked_consistency, pseudo_label
from ulfine.methods.ulfine import ULFine, dlf, paf

K, D, N_U = 3, 4, 10


class TinyBackbone(nn.Module):
    """Stands in for CLIPBackbone: ``encode_image`` of (B, 3, 2, 2) images is a linear map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(12, D)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


def _ctx() -> MethodContext:
    g = torch.Generator().manual_seed(1)
    return MethodContext(
        num_classes=K,
        class_names=["a", "b", "c"],
        labeled_counts=torch.tensor([6, 3, 1]),
        text_prototypes=F.normalize(torch.randn(K, D, generator=g), dim=-1),
        logit_scale=10.0,
        num_unlabeled=N_U,
        feature_dim=D,
    )


def _batch() -> Batch:
    g = torch.Generator().manual_seed(2)
    return Batch(
        x_l=torch.randn(4, 3, 2, 2, generator=g),
        y_l=torch.tensor([0, 0, 2, 0]),
        u_w=torch.randn(6, 3, 2, 2, generator=g),
        u_s=torch.randn(6, 3, 2, 2, generator=g),
        idx_u=torch.tensor([0, 2, 4, 6, 8, 9]),
    )


def _method(name: str, *overrides: str, backbone: nn.Module | None = None):
    cfg = load_config(None, [f"method={name}", "ssl.tau=0.7", *overrides])
    return METHODS.get(name).from_config(cfg, copy.deepcopy(backbone or TinyBackbone()), _ctx())


def _nontrivial_linear_branch(m: ULFine) -> None:
    """Give the (zero-initialised) linear branch seeded weights, so that its terms count."""
    with torch.no_grad():
        m.linear_head.fc.weight.copy_(torch.randn(K, D, generator=torch.Generator().manual_seed(3)))


def _grads(m: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_registered():
    assert METHODS.get("ulfine") is ULFine


def test_all_switches_off_reproduces_fixmatch_exactly():
    bb = TinyBackbone()
    fm = _method("fixmatch", "head=prototype", backbone=bb)
    ul = _method("ulfine", "ulfine.paf=false", "ulfine.orth=false", "ulfine.dlf=false", backbone=bb)
    assert ul.linear_head is None
    opt_f = torch.optim.SGD(fm.parameters(), lr=0.5, momentum=0.9)
    opt_u = torch.optim.SGD(ul.parameters(), lr=0.5, momentum=0.9)
    batch = _batch()
    masked = []
    for _ in range(3):  # three steps: identical losses, gradients, parameters and pseudo-labels
        out_f, out_u = fm.training_step(batch), ul.training_step(batch)
        assert torch.equal(out_f.loss, out_u.loss)
        assert torch.equal(out_f.logs["loss_s"], out_u.logs["loss_s"])
        assert torch.equal(out_f.logs["loss_u"], out_u.logs["loss_u"])
        assert torch.equal(out_f.pseudo.label, out_u.pseudo.label)
        assert torch.equal(out_f.pseudo.mask, out_u.pseudo.mask)
        masked.append(int(out_u.pseudo.mask.sum()))
        opt_f.zero_grad(), opt_u.zero_grad()
        out_f.loss.backward(), out_u.loss.backward()
        g_f, g_u = _grads(fm), _grads(ul)
        assert g_f.keys() == {"backbone.proj.weight", "backbone.proj.bias", "head.prototypes"}
        for name in ("backbone.proj.weight", "backbone.proj.bias"):
            assert torch.equal(g_f[name], g_u[name])
        assert torch.equal(g_f["head.prototypes"], g_u["prototype_head.prototypes"])
        opt_f.step(), opt_u.step()
        fm.after_optimizer_step(0), ul.after_optimizer_step(0)
    assert any(0 < n < 6 for n in masked), masked  # the mask really selected samples
    x = torch.randn(5, 3, 2, 2)
    assert torch.equal(fm.predict(x), ul.predict(x))


def test_full_loss_is_the_sum_of_branch_terms():
    m = _method("ulfine", "ssl.lambda_u=0.5", "ulfine.lambda_orth=0.3", "ulfine.tau_la=0.7",
                "ulfine.w_dlf=2.0", "ulfine.fusion=sum", "ulfine.prior=labeled")
    _nontrivial_linear_branch(m)
    batch = _batch()
    out = m.training_step(batch)
    f = m.backbone.encode_image
    f_l, f_w, f_s = f(batch.x_l), f(batch.u_w), f(batch.u_s)
    zt = lambda x: paf.prototype_logits(x, m.prototypes, 10.0)
    zl = m.linear_head
    prior = torch.tensor([0.6, 0.3, 0.1])
    fused_w = dlf.fused_logits(zl(f_w), zt(f_w), prior, 0.7, 2.0)
    label, conf, mask = pseudo_label(fused_w, 0.7)
    expected = (
        cross_entropy(zl(f_l), batch.y_l) + cross_entropy(zt(f_l), batch.y_l)
        + 0.5 * (masked_consistency(zl(f_s), label, mask) + masked_consistency(zt(f_s), label, mask))
        + 0.3 * paf.orthogonality_loss(m.prototypes)
    )
    torch.testing.assert_close(out.loss, expected)
    assert torch.equal(out.pseudo.label, label)
    torch.testing.assert_close(out.pseudo.confidence, conf)
    # prediction = argmax of the fused logits
    x = torch.randn(7, 3, 2, 2)
    fx = f(x)
    torch.testing.assert_close(m.predict(x), dlf.fused_logits(zl(fx), zt(fx), prior, 0.7, 2.0))
    branches = m.predict_branches(x)
    assert set(branches) == {"linear", "prototype", "fused", "decision"}


def test_dlf_off_uses_prototype_branch_only():
    m = _method("ulfine", "ulfine.dlf=false", "ulfine.paf=false")
    fm = _method("fixmatch", "head=prototype")
    batch = _batch()
    out, ref = m.training_step(batch), fm.training_step(batch)
    orth = paf.orthogonality_loss(m.prototypes)
    torch.testing.assert_close(out.loss, ref.loss + 0.1 * orth)
    assert [n for n, _ in m.named_parameters() if not n.startswith("backbone")] == [
        "prototype_head.prototypes"
    ]


def test_training_step_updates_visual_prototypes_and_memory():
    m = _method("ulfine", "ulfine.beta=0.5")
    before = m.visual_prototypes.clone()
    batch = _batch()
    out = m.training_step(batch)
    assert torch.equal(m.visual_prototypes, before)  # C_v moves after the optimiser step
    m.after_optimizer_step(0)
    f_l = F.normalize(m.backbone.encode_image(batch.x_l), dim=-1).detach()
    # class 0: samples 0, 1, 3; class 2: sample 2; class 1 absent -> unchanged
    exp0 = F.normalize(0.5 * before[0] + 0.5 * f_l[[0, 1, 3]].mean(0), dim=0)
    torch.testing.assert_close(m.visual_prototypes[0], exp0)
    torch.testing.assert_close(m.visual_prototypes[2], F.normalize(0.5 * before[2] + 0.5 * f_l[2], dim=0))
    assert torch.equal(m.visual_prototypes[1], before[1])
    # memory: visited confident samples hold (label, confidence), the rest are empty
    p = out.pseudo
    exp_label = torch.full((N_U,), -1)
    exp_conf = torch.zeros(N_U)
    exp_label[batch.idx_u[p.mask]] = p.label[p.mask]
    exp_conf[batch.idx_u[p.mask]] = p.confidence[p.mask]
    assert torch.equal(m.memory_label, exp_label)
    torch.testing.assert_close(m.memory_conf, exp_conf)
    assert p.mask.any()


def test_after_optimizer_step_momentum_fit():
    m = _method("ulfine", "ulfine.mu_paf=0.5", "ulfine.paf_gap=false")
    c0 = m.prototypes.detach().clone()
    m.after_optimizer_step(0)  # nothing confident yet: alpha = 0, prototypes untouched
    assert torch.equal(m.alpha, torch.zeros(K)) and torch.equal(m.prototypes.detach(), c0)
    visual = F.normalize(torch.randn(K, D), dim=-1)
    m.visual_prototypes.copy_(visual)
    m.memory_label[:3] = torch.tensor([0, 0, 2])
    m.memory_conf[:3] = torch.tensor([0.8, 0.8, 0.4])
    m.after_optimizer_step(0)
    torch.testing.assert_close(m.alpha, torch.tensor([0.5, 0.0, 0.125]))
    exp = F.normalize((1 - m.alpha[:, None]) * F.normalize(c0, dim=-1) + m.alpha[:, None] * visual, dim=-1)
    torch.testing.assert_close(m.prototypes.detach(), exp)
    assert isinstance(m.prototypes, nn.Parameter)  # fitted in place, still the optimiser's tensor
    # paf=false: never fitted
    off = _method("ulfine", "ulfine.paf=false")
    off.memory_label[:3] = torch.tensor([0, 0, 2])
    off.memory_conf[:3] = 0.9
    c1 = off.prototypes.detach().clone()
    off.after_optimizer_step(0)
    assert torch.equal(off.prototypes.detach(), c1)


def test_logit_adjusted_branch_losses_and_mean_fusion():
    """loss_linear/loss_prototype=la train each branch on z + tau_la log pi; an la-trained linear
    branch enters DLF unadjusted; fusion=mean halves the fused logits."""
    m = _method("ulfine", "ssl.lambda_u=0.5", "ulfine.orth=false", "ulfine.tau_la=0.7",
                "ulfine.loss_linear=la", "ulfine.loss_prototype=la", "ulfine.fusion=mean", "ulfine.w_dlf=1")
    _nontrivial_linear_branch(m)
    batch = _batch()
    out = m.training_step(batch)
    f = m.backbone.encode_image
    f_l, f_w, f_s = f(batch.x_l), f(batch.u_w), f(batch.u_s)
    zt = lambda x: paf.prototype_logits(x, m.prototypes, 10.0)
    zl = m.linear_head
    log_pi = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    la = lambda z: z + 0.7 * log_pi
    fused_w = (zl(f_w) + zt(f_w)) / 2  # no post-hoc term: the linear branch learnt balanced scores
    label, _, mask = pseudo_label(fused_w, 0.7)
    expected = (
        cross_entropy(la(zl(f_l)), batch.y_l) + cross_entropy(la(zt(f_l)), batch.y_l)
        + 0.5 * (masked_consistency(la(zl(f_s)), label, mask) + masked_consistency(la(zt(f_s)), label, mask))
    )
    torch.testing.assert_close(out.loss, expected)
    x = torch.randn(5, 3, 2, 2)
    torch.testing.assert_close(m.predict(x), (zl(f(x)) + zt(f(x))) / 2)


def test_pseudo_labels_from_the_prototype_branch():
    """pseudo_labels=prototype: the weak views are labelled (and P_u's memory filled) by z^t alone
    while the prediction stays fused; with a trained linear branch the two disagree here."""
    m = _method("ulfine", "ulfine.pseudo_labels=prototype", "ssl.tau=0.0")
    fused = _method("ulfine", "ssl.tau=0.0")
    for method in (m, fused):
        _nontrivial_linear_branch(method)
    batch = _batch()
    out, ref = m.training_step(batch), fused.training_step(batch)
    f = m.backbone.encode_image
    zt = paf.prototype_logits(f(batch.u_w), m.prototypes, 10.0)
    label, conf, _ = pseudo_label(zt, 0.0)
    assert torch.equal(out.pseudo.label, label) and not torch.equal(ref.pseudo.label, label)
    torch.testing.assert_close(out.pseudo.confidence, conf)
    assert torch.equal(m.memory_label[batch.idx_u], label)
    x = torch.randn(5, 3, 2, 2)
    torch.testing.assert_close(m.predict(x), fused.predict(x))


def test_text_anchored_fitting_does_not_compound():
    """paf_anchor=text: c_k = normalise((1 - alpha_k) t_k + alpha_k c_v) whatever c_k was before,
    so two fittings with the same alpha give the same prototypes (the default compounds)."""
    anchored = _method("ulfine", "ulfine.paf_anchor=text", "ulfine.paf_gap=false")
    compounding = _method("ulfine", "ulfine.paf_gap=false")
    visual = F.normalize(torch.randn(K, D, generator=torch.Generator().manual_seed(4)), dim=-1)
    for m in (anchored, compounding):
        m.visual_prototypes.copy_(visual)
        m.memory_label[:2], m.memory_conf[:2] = torch.tensor([0, 1]), torch.tensor([0.9, 0.45])
        m.after_optimizer_step(0)
    text = anchored.text_anchor
    exp = F.normalize((1 - anchored.alpha[:, None]) * text + anchored.alpha[:, None] * visual, dim=-1)
    torch.testing.assert_close(anchored.prototypes.detach(), exp)
    once = compounding.prototypes.detach().clone()
    anchored.after_optimizer_step(0)
    compounding.after_optimizer_step(0)
    torch.testing.assert_close(anchored.prototypes.detach(), exp)
    assert not torch.allclose(compounding.prototypes.detach(), once)


def test_gap_removed_fitting_targets_the_shifted_visual_prototypes():
    """paf_gap=true: the momentum fit moves C_t toward without_modality_gap(C_v, t), not C_v."""
    gap, plain = _method("ulfine", "ulfine.paf_gap=true"), _method("ulfine", "ulfine.paf_gap=false")
    visual = F.normalize(torch.randn(K, D, generator=torch.Generator().manual_seed(4)) + 3.0, dim=-1)
    for m in (gap, plain):
        m.visual_prototypes.copy_(visual)
        m.memory_label[:2], m.memory_conf[:2] = torch.tensor([0, 1]), torch.tensor([0.9, 0.45])
    start = gap.prototypes.detach().clone()
    gap.after_optimizer_step(0)
    plain.after_optimizer_step(0)
    target = paf.without_modality_gap(visual, gap.text_anchor)
    torch.testing.assert_close(gap.prototypes.detach(), paf.momentum_fit(start, target, gap.alpha))
    torch.testing.assert_close(plain.prototypes.detach(), paf.momentum_fit(start, visual, plain.alpha))
    assert not torch.allclose(gap.prototypes.detach(), plain.prototypes.detach())


def test_fixed_prototypes_are_a_buffer_still_fitted():
    m = _method("ulfine", "ulfine.learnable_prototypes=false")
    assert "prototype_head.prototypes" not in dict(m.named_parameters())
    assert "prototype_head.prototypes" in m.state_dict()
    m.memory_label[0], m.memory_conf[0] = 1, 0.9
    m.visual_prototypes[1] = F.normalize(torch.ones(D), dim=0)
    c0 = m.prototypes.clone()
    m.after_optimizer_step(0)
    assert not torch.allclose(m.prototypes[1], c0[1]) and torch.equal(m.prototypes[0], c0[0])


def test_prior_labeled_plus_pseudo():
    m = _method("ulfine", "ulfine.prior=labeled+pseudo", "ulfine.paf=false")
    m.memory_label[:5] = torch.tensor([1, 1, 2, 2, 2])
    m.memory_conf[:5] = 0.9
    # the prior reads the memory as of the last optimiser step: unchanged within a step, so that
    # every accumulation micro-batch sees the same prior
    torch.testing.assert_close(m.prior(), torch.tensor([0.6, 0.3, 0.1]))
    m.after_optimizer_step(0)
    torch.testing.assert_close(m.prior(), torch.tensor([6.0, 5.0, 4.0]) / 15)
    assert torch.allclose(_method("ulfine", "ulfine.prior=labeled").prior(), torch.tensor([0.6, 0.3, 0.1]))


def test_state_is_checkpointed_and_diagnostics():
    m = _method("ulfine")
    batch = _batch()
    m.training_step(batch)
    d0 = m.diagnostics()
    assert d0["alpha"] == [0.0] * K and d0["angle_deg"] == [0.0] * K  # nothing moved yet
    m.after_optimizer_step(0)
    sd = m.state_dict()
    for key in ("visual_prototypes", "memory_label", "memory_conf", "alpha", "text_anchor", "prior_pseudo_counts"):
        assert key in sd
    twin = _method("ulfine")
    twin.load_state_dict(sd)
    # the prior read at the last step comes back too (it counts the confident pseudo-labels)
    assert torch.equal(twin.prior(), m.prior()) and not torch.allclose(m.prior(), torch.tensor([0.6, 0.3, 0.1]))
    d1, d2 = m.diagnostics(), twin.diagnostics()
    assert d1 == d2
    json.dumps(d1)  # serialisable
    counts = torch.bincount(m.memory_label[m.memory_label >= 0], minlength=K).tolist()
    assert d1["pseudo_label_counts"] == counts and sum(counts) > 0
    assert max(d1["alpha"]) == pytest.approx(0.1)  # mu_paf for the class with the largest P_u
    assert d1["angle_deg_max"] > 0.0  # PAF moved a prototype away from its text anchor


def test_all_switches_off_reproduces_fixmatch_on_micro_clip_with_adaptformer():
    """The same parity on the real tiny CLIP with AdaptFormer (gradients reach the adapters)."""
    from ulfine.models import apply_finetune, build_backbone, text_prototypes

    base = load_config("synthetic_smoke", ["ssl.tau=0.3"])
    bb = build_backbone(base.model)
    apply_finetune(bb, "lft", "adaptformer", base.options_for("adaptformer"))
    names = ["red", "green", "blue"]
    with torch.no_grad():
        protos = text_prototypes(bb, names, base.model.templates, cache_dir=None)
    ctx = MethodContext(3, names, torch.tensor([5, 2, 1]), protos, float(bb.logit_scale), 8,
                        int(bb.embed_dim))
    methods = []
    for name, extra in [("fixmatch", []), ("ulfine", ["ulfine.paf=false", "ulfine.orth=false",
                                                      "ulfine.dlf=false"])]:
        cfg = load_config("synthetic_smoke", [f"method={name}", "ssl.tau=0.3", *extra])
        methods.append(METHODS.get(name).from_config(cfg, copy.deepcopy(bb), ctx))
    g = torch.Generator().manual_seed(5)
    batch = Batch(torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 1, 2]),
                     torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g),
                     torch.arange(4))
    outs = []
    for m in methods:
        torch.manual_seed(0)
        out = m.training_step(batch)
        out.loss.backward()
        outs.append((out, _grads(m)))
    (o_f, g_f), (o_u, g_u) = outs
    assert torch.equal(o_f.loss, o_u.loss) and torch.equal(o_f.pseudo.mask, o_u.pseudo.mask)
    adapters = [n for n in g_f if n.startswith("backbone.")]
    assert adapters  # AdaptFormer parameters received gradients
    for n in adapters:
        assert torch.equal(g_f[n], g_u[n]), n
    assert torch.equal(g_f["head.prototypes"], g_u["prototype_head.prototypes"])


def test_finessl_prototype_scale_is_learnable_from_its_init():
    """``prototype_scale=finessl``: the prototype branch's scale is a parameter starting at 1/0.07
    (FineSSL's head), trained by the loss and checkpointed; the default stays CLIP's fixed scale."""
    fixed = _method("ulfine", "ulfine.paf=false")
    assert "prototype_head.logit_scale" not in dict(fixed.named_parameters())
    m = _method("ulfine", "ulfine.prototype_scale=finessl", "ulfine.paf=false")
    scale = dict(m.named_parameters())["prototype_head.logit_scale"]
    assert scale.item() == pytest.approx(1 / 0.07)
    f = torch.randn(5, D, generator=torch.Generator().manual_seed(4))
    expected = (1 / 0.07) * F.normalize(f, dim=-1) @ F.normalize(m.prototypes, dim=-1).t()
    torch.testing.assert_close(m.branch_logits(f)["prototype"], expected.detach())
    m.training_step(_batch()).loss.backward()
    assert scale.grad is not None and scale.grad.abs().item() > 0
    with torch.no_grad():
        scale.mul_(0.5)
    twin = _method("ulfine", "ulfine.prototype_scale=finessl", "ulfine.paf=false")
    twin.load_state_dict(m.state_dict())
    assert twin.diagnostics()["prototype_logit_scale"] == pytest.approx(0.5 / 0.07)
