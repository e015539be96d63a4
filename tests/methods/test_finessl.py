"""FineSSL's method mechanics: the learning-status buffer under gradient accumulation and several
processes, its checkpoint, the epoch reset, the detached auxiliary head and the learnable scale.

The equations themselves are checked against FineSSL's executed code in
tests/golden/test_finessl_golden.py; here, hand computations and invariances of the engine contract.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ulfine.batch import Batch
from ulfine.config import load_config
from ulfine.errors import ConfigError
from ulfine.methods import METHODS, MethodContext
from ulfine.methods.finessl import FineSSL, FineSSLOptions, balanced_margins, learning_status, margin_logits
from ulfine.methods.losses import off_target_smoothed_targets

K, D, N_U = 3, 3, 10


class Encoder(nn.Module):
    """A trainable linear "backbone" (identity at start), so gradients into features are visible."""

    def __init__(self) -> None:
        super().__init__()
        self.map = nn.Linear(D, D, bias=False)
        nn.init.eye_(self.map.weight)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.map(x)


class TwoProcesses:
    """all_gather of a simulated 2-process run: the other rank's tensor is given beforehand."""

    def __init__(self, rank: int) -> None:
        self.rank, self.other = rank, None

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, self.other] if self.rank == 0 else [self.other, t])

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.other


def make(*overrides: str, prototypes: torch.Tensor | None = None, collectives=None, axes: bool = True) -> FineSSL:
    cfg = load_config(None, ["method=finessl", "ssl.tau=0.7", *overrides])
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor([6, 3, 1]), prototypes, float("nan"), N_U, D)
    if collectives is not None:
        ctx.collectives = collectives
    m = METHODS.get("finessl").from_config(cfg, Encoder(), ctx)
    if axes:
        with torch.no_grad():  # class rows = the axes: features near an axis are confident
            m.head.weight.copy_(torch.eye(K))
            m.head1.weight.copy_(torch.eye(K))
    return m


def make_batch(step: int = 0, seed: int = 0) -> Batch:
    """4 labeled, 6 unlabeled images (indices into N_U = 10) whose weak views are mostly confident."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (4,), generator=g)
    c = torch.tensor([0, 0, 1, 2, 1, 0])
    strength = torch.tensor([1.0, 0.3, 1.0, 1.0, 0.2, 1.0])

    def views(classes, a, noise):
        return a[:, None] * torch.eye(K)[classes] + noise * torch.randn(len(classes), D, generator=g)

    x = views(y, torch.ones(4), 0.3)
    idx = torch.randperm(N_U, generator=g)[:6]
    return Batch(x, y, views(c, strength, 0.1), views(c, strength, 0.5), idx, step=step,
                 u_s2=views(c, strength, 0.5))


def one_step(m: FineSSL, b: Batch, step: int) -> None:
    m.training_step(b)
    m.after_optimizer_step(step)


def test_options_are_finessl_defaults():
    o = FineSSLOptions()
    assert (o.alpha, o.w_con, o.smoothing, o.th_min, o.select_threshold) == (8.0, 3.0, 0.5, 0.0, 0.7)
    assert o.head_scale_init == pytest.approx(1 / 0.07) and o.head_init == "random"
    assert FineSSL.strong_views == 2


def test_learning_status_and_margins_by_hand():
    prev = torch.tensor([0.1, 0.2, 0.3])
    status = learning_status(torch.tensor([-1, -1, 0, 0, 1]), K, prev)
    assert status.tolist() == [1.0, 0.5, 0.0]  # n = (2, 1, 0) / max n
    # nothing selected, or every sample the same class: the status keeps its previous value
    assert torch.equal(learning_status(torch.full((5,), -1), K, prev), prev)
    assert torch.equal(learning_status(torch.zeros(5, dtype=torch.long), K, prev), prev)
    # Delta_c = alpha (max a - min a) (1 - a_c) / (1 + a_c)
    margins = balanced_margins(status, 8.0)
    assert margins.tolist() == pytest.approx([0.0, 8.0 * 0.5 / 1.5, 8.0])
    z = torch.zeros(2, K)
    expected = torch.tensor([[8.0, 8.0, 0.0], [8.0 / 3, 0.0, 8.0 / 3]])  # Delta_y on every k != y
    torch.testing.assert_close(margin_logits(z, torch.tensor([2, 1]), margins), expected)
    t = off_target_smoothed_targets(torch.tensor([1]), 4, 0.3)
    assert t.tolist()[0] == pytest.approx([0.1, 0.7, 0.1, 0.1])


def test_head_is_a_cosine_head_with_a_raw_learnable_scale():
    m = make()
    assert m.head.logit_scale.requires_grad and m.head.logit_scale.item() == pytest.approx(1 / 0.07)
    f = torch.tensor([[3.0, 4.0, 0.0]])
    assert m.head(f).tolist()[0] == pytest.approx([0.6 / 0.07, 0.8 / 0.07, 0.0], rel=1e-6)
    assert torch.equal(m.predict(f), m.head(f))  # prediction: the main head's raw logits


def test_random_init_unit_rows_and_head1_a_copy():
    torch.manual_seed(0)
    cfg = load_config(None, ["method=finessl"])
    ctx = MethodContext(K, ["a", "b", "c"], torch.ones(K), None, float("nan"), N_U, 8)
    m = METHODS.get("finessl").from_config(cfg, Encoder(), ctx)
    assert m.head.weight.norm(dim=-1).tolist() == pytest.approx([1.0] * K)
    assert torch.equal(m.head.weight, m.head1.weight) and m.head.weight.data_ptr() != m.head1.weight.data_ptr()


def test_head_choices():
    protos = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    m = make("finessl.head_init=text", prototypes=protos, axes=False)
    assert torch.equal(m.head.weight.detach(), protos) and torch.equal(m.head1.weight.detach(), protos)
    with pytest.raises(ConfigError, match="head=prototype"):
        make("head=linear")
    with pytest.raises(ConfigError, match="text prototypes"):
        make("finessl.head_init=text")


def test_selection_applied_after_the_step_and_reset_each_epoch():
    m = make()
    b = make_batch()
    m.training_step(b)
    assert (m.selected_label == -1).all()  # pending until the optimiser step is taken
    m.after_optimizer_step(0)
    picked = m.selected_label[b.idx_u]
    assert (picked >= 0).sum() >= 3 and m.classwise_acc.max() == 1.0
    assert m.margins().max() > 0
    m.on_epoch_end(1)
    assert (m.selected_label == -1).all() and (m.classwise_acc == 0).all() and (m.margins() == 0).all()


def test_gradient_accumulation_gives_the_same_margin_and_buffer():
    whole = make()
    one_step(whole, make_batch(0, seed=1), 0)
    micro = copy.deepcopy(whole)
    b = make_batch(1, seed=2)
    margins = whole.margins().clone()
    assert margins.max() > 0  # the step is taken with a non-trivial margin
    whole.training_step(b)
    whole.after_optimizer_step(1)
    for part in b.split(2):
        assert torch.equal(micro.margins(), margins)  # every micro-batch sees the step's margin
        micro.training_step(part)
    micro.after_optimizer_step(1)
    assert torch.equal(micro.selected_label, whole.selected_label)
    assert torch.equal(micro.classwise_acc, whole.classwise_acc)


def test_two_processes_hold_the_buffer_of_one():
    single = make()
    b = make_batch(0, seed=3)
    one_step(single, b, 0)
    ranks = [make(collectives=TwoProcesses(r)) for r in range(2)]
    for rank, part in zip(ranks, b.split(2)):
        rank.training_step(part)
    pending = [r.pending_label.clone() for r in ranks]
    for r, rank in enumerate(ranks):
        rank.ctx.collectives.other = pending[1 - r]
        rank.after_optimizer_step(0)
        assert torch.equal(rank.selected_label, single.selected_label)
        assert torch.equal(rank.classwise_acc, single.classwise_acc)


def test_buffers_survive_a_state_dict_round_trip():
    m = make()
    one_step(m, make_batch(0, seed=4), 0)
    state = m.state_dict()
    assert "selected_label" in state and "classwise_acc" in state and "pending_label" not in state
    fresh = make()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.selected_label, m.selected_label) and (fresh.selected_label >= 0).any()
    assert torch.equal(fresh.margins(), m.margins())


def test_auxiliary_head_sends_no_gradient_into_the_backbone():
    m = make()
    one_step(m, make_batch(0, seed=5), 0)  # a non-zero margin, some masks set
    t = m.step_terms(make_batch(1, seed=6))
    backbone = list(m.backbone.parameters())
    aux = torch.autograd.grad(t.loss_x1 + t.loss_u1, backbone + [m.head1.weight, m.head.weight],
                              allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in aux[:len(backbone)])  # detached features
    assert aux[-2] is not None and aux[-2].abs().sum() > 0 and aux[-1] is None
    main = torch.autograd.grad(t.loss_x + t.loss_u, backbone)
    assert all(g.abs().sum() > 0 for g in main)


def test_the_learnable_scales_train():
    m = make()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    out = m.training_step(make_batch(0, seed=7))
    out.loss.backward()
    assert m.head.logit_scale.grad.abs() > 0 and m.head1.logit_scale.grad.abs() > 0
    opt.step()
    assert m.head.logit_scale.item() != pytest.approx(1 / 0.07)
    assert m.head1.logit_scale.item() != pytest.approx(1 / 0.07)
    assert math.isfinite(out.logs["loss_u_aux"].item()) and out.pseudo.mask.dtype == torch.bool
