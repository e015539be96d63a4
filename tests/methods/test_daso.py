"""DASO's mechanics: the class queue and the blend by hand, its state under gradient accumulation
and several processes, a skipped step, the checkpoint, the config on scratch backbones and tiny
end-to-end runs (micro CLIP, scratch WRN).

The equations are checked against DASO's executed code in tests/golden/test_daso_golden.py.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from ulfine.batch import Batch
from ulfine.config import load_config
from ulfine.engine import train
from ulfine.engine.assemble import assemble_run
from ulfine.engine.checkpoint import weight_state
from ulfine.engine.runtime import make_runtime
from ulfine.errors import ConfigError
from ulfine.methods import METHODS, MethodContext
from ulfine.methods.daso import DASO, ClassQueue, blend_weights, blended_pseudo_labels
from ulfine.models import CachedFeatures

K, D, N_U = 3, 4, 12


class TwoProcesses:
    """Collectives of a simulated 2-process run: the other rank's tensors are given beforehand."""

    def __init__(self, rank: int) -> None:
        self.rank, self.others = rank, []

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        other = self.others.pop(0)
        return torch.cat([t, other] if self.rank == 0 else [other, t])

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.others.pop(0)


def make(*overrides: str, collectives=None) -> DASO:
    cfg = load_config(None, ["method=daso", "head=linear", "ssl.tau=0.5", "daso.queue_size=2",
                             "daso.pretrain_steps=1", "daso.dist_update_period=1", *overrides])
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor([6, 3, 1]), None, float("nan"), N_U, D)
    if collectives is not None:
        ctx.collectives = collectives
    torch.manual_seed(0)
    return METHODS.get("daso").from_config(cfg, CachedFeatures(), ctx)


def make_batch(step: int, seed: int) -> Batch:
    """4 labeled and 8 unlabeled feature vectors near the class axes (4th coordinate: noise)."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.eye(K, D)
    y = torch.randint(0, K, (4,), generator=g)
    c = torch.randint(0, K, (8,), generator=g)
    w = 2 * axes[c] + 0.5 * torch.randn(8, D, generator=g)
    return Batch(2 * axes[y] + 0.3 * torch.randn(4, D, generator=g), y, w, w + 0.3 * torch.randn(8, D, generator=g),
                 torch.randperm(N_U, generator=g)[:8], step=step)


def one_step(m: DASO, b: Batch) -> None:
    m.training_step(b)
    m.after_optimizer_step(b.step)


def state(m: DASO) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("head.")}


def test_queue_keeps_each_class_last_features_by_hand():
    q = ClassQueue(2, 2, 1)
    f = torch.tensor([[1.0], [2.0], [3.0], [10.0]])
    y = torch.tensor([0, 0, 0, 1])
    # not pushed yet: class 0 would keep 2 and 3 (its last two), class 1 holds 10
    assert q.prototypes(f, y).flatten().tolist() == [2.5, 10.0]
    assert q.prototypes().flatten().tolist() == [0.0, 0.0]  # empty classes: zero prototypes
    q.push(f, y)
    assert q.prototypes().flatten().tolist() == [2.5, 10.0]
    assert q.count.tolist() == [2, 1]
    # one more of class 0 pushes out 2; two of class 1 push out 10
    f2, y2 = torch.tensor([[5.0], [20.0], [30.0]]), torch.tensor([0, 1, 1])
    assert q.prototypes(f2, y2).flatten().tolist() == [4.0, 25.0]
    q.push(f2, y2)
    assert q.prototypes().flatten().tolist() == [4.0, 25.0]
    q.push(torch.tensor([[7.0]]), torch.tensor([0]))  # the ring wraps: 5 and 7 remain
    assert q.prototypes().flatten().tolist() == [6.0, 25.0]


def test_blend_by_hand():
    counts = torch.tensor([8.0, 2.0, 0.0])
    w = blend_weights(counts, 0.5)  # d^(1/0.5) = (0.64, 0.04, 0) -> / max
    assert w.tolist() == pytest.approx([1.0, 0.0625, 0.0])
    assert blend_weights(torch.zeros(3), 1.5).tolist() == [1.0, 1.0, 1.0]  # no window yet: uniform
    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    q = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    mixed = blended_pseudo_labels(p, q, w)  # weight of each sample's linear label: 1 and 0.0625
    torch.testing.assert_close(mixed[0], q[0])
    torch.testing.assert_close(mixed[1], (1 - 0.0625) * p[1] + 0.0625 * q[1])
    torch.testing.assert_close(blended_pseudo_labels(p, q, 0.5), 0.5 * (p + q))


def test_semantic_loss_only_after_pretraining_and_gradient_through_strong_view():
    m = make("daso.pretrain_steps=2", "ssl.lambda_u=0")  # L = L_s + L_align
    out = m.training_step(make_batch(0, 1))
    assert out.logs["loss_align"].item() == 0 and "semantic_agree" not in out.logs
    m.after_optimizer_step(0)
    b = make_batch(2, 2)
    b.u_w = b.u_w.clone().requires_grad_(True)
    b.u_s = b.u_s.clone().requires_grad_(True)
    out = m.training_step(b)
    assert out.logs["loss_align"].item() > 0
    g_w, g_s = torch.autograd.grad(out.loss, [b.u_w, b.u_s], allow_unused=True)
    assert g_w is None and g_s.abs().sum() > 0  # the targets are fixed, the strong view learns


def test_distribution_is_replaced_per_window():
    m = make("daso.dist_update_period=2")
    b0, b1 = make_batch(0, 3), make_batch(1, 4)
    l0 = m.training_step(b0).pseudo.label
    m.after_optimizer_step(0)
    assert m.pl_dist.sum() == 0 and m.pl_window.sum() == 8
    l1 = m.training_step(b1).pseudo.label
    m.after_optimizer_step(1)
    expected = torch.bincount(torch.cat([l0, l1]), minlength=K).float()
    assert torch.equal(m.pl_dist, expected) and m.pl_window.sum() == 0


def test_gradient_accumulation_gives_the_state_of_one_batch():
    whole = make()
    one_step(whole, make_batch(0, 5))
    micro = copy.deepcopy(whole)
    b = make_batch(1, 6)
    out = whole.training_step(b)
    whole.after_optimizer_step(1)
    parts = b.split(2)
    micro.training_step(parts[0])
    last = micro.training_step(parts[1])
    micro.after_optimizer_step(1)
    for k, v in state(whole).items():
        torch.testing.assert_close(state(micro)[k], v, msg=k)
    # the last micro-batch sees the prototypes of every labeled feature of the step, as one batch
    assert torch.equal(last.pseudo.label, out.pseudo.label[4:])


def _two_process_run(batches: list[Batch], *overrides: str) -> list[DASO]:
    """Each step's batch cut in two, one half per simulated process."""
    ranks = [make(*overrides, collectives=TwoProcesses(r)) for r in range(2)]
    for whole in batches:
        for rank, part in zip(ranks, whole.split(2)):
            rank.training_step(part)
        feats = [torch.cat([f for f, _ in r._pending]) for r in ranks]
        labels = [torch.cat([y for _, y in r._pending]) for r in ranks]
        counts = [r.pl_pending.clone() for r in ranks]
        for r, rank in enumerate(ranks):
            rank.ctx.collectives.others = [feats[1 - r], labels[1 - r], counts[1 - r]]
            rank.after_optimizer_step(whole.step)
    return ranks


def test_two_processes_hold_the_state_of_one():
    """Pre-training steps: every process holds the single process's queue and distribution."""
    batches = [make_batch(0, 8), make_batch(1, 7)]
    single = make("daso.pretrain_steps=5")
    for b in batches:
        one_step(single, b)
    for rank in _two_process_run(batches, "daso.pretrain_steps=5"):
        for k, v in state(single).items():
            torch.testing.assert_close(state(rank)[k], v, msg=k)


def test_two_processes_agree_in_semantic_steps():
    """With semantic pseudo-labels (each process's prototypes include only its own labeled
    features of the step) the processes still hold one queue and one distribution."""
    batches = [make_batch(s, 30 + s) for s in range(3)]
    a, b = _two_process_run(batches)
    assert a.semantic_active(2) and a.pl_dist.sum() == 8
    for k, v in state(a).items():
        assert torch.equal(state(b)[k], v), k


def test_a_skipped_step_leaves_no_features_behind():
    m = make()
    ref = copy.deepcopy(m)
    m.training_step(make_batch(0, 9))  # the engine skips this step: no after_optimizer_step
    m.pl_pending.zero_()  # (the engine restores the buffers the forward changed)
    one_step(m, make_batch(1, 10))
    one_step(ref, make_batch(1, 10))
    for k, v in state(ref).items():
        torch.testing.assert_close(state(m)[k], v, msg=k)


def test_state_survives_a_state_dict_round_trip():
    m = make()
    for s in range(3):
        one_step(m, make_batch(s, 11 + s))
    saved = m.state_dict()
    assert {"queue.bank", "queue.count", "queue.ptr", "pl_dist", "pl_window"} <= set(saved)
    fresh = make()
    fresh.load_state_dict(saved)
    torch.testing.assert_close(fresh.queue.prototypes(), m.queue.prototypes())
    assert fresh.queue.count.sum() > 0 and torch.equal(fresh.pl_dist, m.pl_dist)
    b = make_batch(3, 20)
    a, c = m.training_step(b), fresh.training_step(b)
    assert torch.equal(a.pseudo.label, c.pseudo.label) and a.loss.item() == pytest.approx(c.loss.item())


def test_linear_head_is_xavier_and_prototype_head_needs_text():
    m = make()
    assert m.head.fc.weight.abs().sum() > 0 and m.head.fc.bias.abs().sum() == 0
    scratch = ["method=daso", "model.arch=wrn-28-2", "model.pretrained=none", "finetune=fft"]
    with pytest.raises(ConfigError, match="no text tower"):
        load_config(None, [*scratch, "head=prototype"])
    assert load_config(None, [*scratch, "head=linear"]).method == "daso"


def test_defaults_are_dasos():
    o = make().opts
    assert (o.queue_size, o.proto_temp, o.dist_temp, o.pretrain_steps, o.dist_update_period) == (2, 0.05, 1.5, 1, 1)
    o = METHODS.options()["daso"]()
    assert (o.queue_size, o.pretrain_steps, o.dist_update_period, o.align_weight) == (256, 5000, 100, 1.0)


@pytest.mark.parametrize("backbone", [
    ["head=prototype"],  # micro CLIP: the text-initialised cosine head
    ["model.arch=wrn-28-2", "model.image_size=16", "finetune=fft", "head=linear"],  # scratch WRN
], ids=["micro_clip", "scratch_wrn"])
def test_trains_end_to_end(tmp_path, backbone):
    cfg = load_config("synthetic_smoke", [
        "method=daso", *backbone, f"output_dir={tmp_path / 'run'}", f"cache.dir={tmp_path / 'cache'}",
        "train.steps_per_epoch=2", "train.batch_size=4", "eval.pseudo_label_max=16", "ssl.tau=0.0",
        "daso.pretrain_steps=1", "daso.dist_update_period=1", "daso.queue_size=4",
    ])
    init = weight_state(assemble_run(cfg, make_runtime("cpu", "fp32")).method)
    run = train(cfg)
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["steps"] == 2
    weights = load_file(str(run / "weights.safetensors"))
    assert any(not torch.equal(weights[k], init[k]) for k in weights if k.startswith("head."))
    assert weights["queue.count"].sum() == 8  # 2 steps x 4 labeled images, none dropped
    assert weights["pl_dist"].sum() == 4  # the second step's pseudo-labels (window of 1 step)
    diag = final["method_diagnostics"]
    assert math.isclose(sum(diag["pl_distribution"]), 1.0, rel_tol=1e-5)
