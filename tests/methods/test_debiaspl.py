"""DebiasPL's mechanics: two steps by hand, q^ under gradient accumulation and several processes,
a skipped step, the checkpoint, the config on scratch backbones and tiny end-to-end runs.

Features are the logits (identity linear head), K = 3. Every expected value is computed with
``math`` from the numbers in this file. The equations are also checked against DebiasPL's executed
code in tests/golden/test_debiaspl_golden.py.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from by_hand import SummingPeer as TwoProcesses
from by_hand import ce, softmax
from safetensors.torch import load_file

from ulfine.batch import Batch
from ulfine.config import load_config
from ulfine.engine import train
from ulfine.engine.assemble import assemble_run
from ulfine.engine.checkpoint import weight_state
from ulfine.engine.runtime import make_runtime
from ulfine.errors import ConfigError
from ulfine.methods import METHODS, MethodContext
from ulfine.methods.debiaspl import DebiasPL, adaptive_margin_logits, moved_qhat
from ulfine.methods.losses import masked_consistency
from ulfine.models import CachedFeatures

K, N_U = 3, 10
TAU, M, T = 0.5, 0.8, 0.6  # debiasing strength, q^ momentum, threshold
X_L, Y_L = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0, 2]
U_W = [[3.0, 0.0, 0.0], [2.0, 1.95, 0.0], [0.0, 0.0, 0.5]]
U_S = [[1.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]


def make(*overrides: str, collectives=None) -> DebiasPL:
    cfg = load_config(None, ["method=debiaspl", "head=linear", f"ssl.tau={T}", "ssl.lambda_u=2.0",
                             f"debiaspl.tau={TAU}", f"debiaspl.qhat_momentum={M}", *overrides])
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor([6, 3, 1]), None, float("nan"), N_U, K)
    if collectives is not None:
        ctx.collectives = collectives
    m = METHODS.get("debiaspl").from_config(cfg, CachedFeatures(), ctx)
    with torch.no_grad():
        m.head.fc.weight.copy_(torch.eye(K))
        m.head.fc.bias.zero_()
    return m


def fixed_batch(step: int = 0) -> Batch:
    t = torch.tensor
    return Batch(t(X_L), t(Y_L), t(U_W), t(U_S), t([1, 4, 7]), step=step)


def random_batch(step: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    w = 3 * torch.randn(8, K, generator=g) + torch.tensor([2.0, 0.0, -1.0])
    return Batch(torch.randn(4, K, generator=g), torch.randint(0, K, (4,), generator=g), w,
                 w + torch.randn(8, K, generator=g), torch.randperm(N_U, generator=g)[:8], step=step)


def test_two_steps_by_hand():
    m = make()
    q, seen = [1 / 3] * 3, []
    for step in range(2):
        out = m.training_step(fixed_batch(step))
        debiased = [softmax([z - TAU * math.log(qk) for z, qk in zip(u, q)]) for u in U_W]
        labels = [max(range(K), key=p.__getitem__) for p in debiased]
        mask = [max(p) >= T for p in debiased]
        mean = [sum(softmax(u)[k] for u in U_W) / len(U_W) for k in range(K)]
        q = [M * qk + (1 - M) * mk for qk, mk in zip(q, mean)]  # moved before the loss
        l_u = sum(ce([z + TAU * math.log(qk) for z, qk in zip(s, q)], y)
                  for s, y, keep in zip(U_S, labels, mask) if keep) / len(U_S)
        l_s = sum(ce(x, y) for x, y in zip(X_L, Y_L)) / len(X_L)
        assert out.pseudo.label.tolist() == labels and out.pseudo.mask.tolist() == mask
        assert out.logs["loss_u"].item() == pytest.approx(l_u, rel=1e-6)
        assert out.loss.item() == pytest.approx(l_s + 2.0 * l_u, rel=1e-6)
        assert out.pseudo.confidence.tolist() == pytest.approx([max(p) for p in debiased], rel=1e-6)
        m.after_optimizer_step(step)
        assert m.qhat.tolist() == pytest.approx(q, rel=1e-6)
        seen.append(labels)
    assert mask == [True, False, False]
    assert seen[0][1] == 0 and seen[1][1] == 1  # sample 1 debiased from the over-predicted class 0


def test_qhat_stays_when_no_sample_was_seen():
    q = torch.tensor([0.5, 0.3, 0.2])
    assert torch.equal(moved_qhat(q, torch.zeros(3), torch.tensor(0.0), 0.9), q)
    m = make()
    m.after_optimizer_step(0)  # a skipped step: the engine restored the pending buffers to zero
    assert m.qhat.tolist() == pytest.approx([1 / 3] * 3)


def test_gradient_accumulation_gives_the_state_of_one_batch():
    whole = make()
    whole.training_step(random_batch(0, 1))
    whole.after_optimizer_step(0)
    micro = copy.deepcopy(whole)
    b = random_batch(1, 2)
    out = whole.training_step(b)
    whole.after_optimizer_step(1)
    parts = [micro.training_step(p) for p in b.split(2)]
    micro.after_optimizer_step(1)
    torch.testing.assert_close(micro.qhat, whole.qhat)
    assert not torch.allclose(whole.qhat, torch.full((K,), 1 / 3))
    # pseudo-labels use the q^ of the steps before; the last micro-batch's margin the step's q^
    assert torch.equal(torch.cat([p.pseudo.label for p in parts]), out.pseudo.label)
    p2 = b.split(2)[1]
    expect = masked_consistency(adaptive_margin_logits(p2.u_s, whole.qhat, TAU), parts[1].pseudo.label,
                                parts[1].pseudo.mask)
    assert parts[1].logs["loss_u"].item() == pytest.approx(expect.item(), rel=1e-6)


def test_two_processes_hold_the_q_of_one():
    single = make()
    b = random_batch(0, 3)
    single.training_step(b)
    single.after_optimizer_step(0)
    ranks = [make(collectives=TwoProcesses()) for _ in range(2)]
    for rank, part in zip(ranks, b.split(2)):
        rank.training_step(part)
    pending = [torch.cat([r.pending_prob_sum, r.pending_count[None]]) for r in ranks]
    for r, rank in enumerate(ranks):
        rank.ctx.collectives.other = pending[1 - r]
        rank.after_optimizer_step(0)
        torch.testing.assert_close(rank.qhat, single.qhat)


def test_q_survives_a_state_dict_round_trip():
    m = make()
    for s in range(3):
        m.training_step(random_batch(s, 10 + s))
        m.after_optimizer_step(s)
    fresh = make()
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.qhat, m.qhat) and fresh.qhat[0] > 1 / 3
    b = random_batch(3, 20)
    assert torch.equal(fresh.training_step(b).pseudo.label, m.training_step(b).pseudo.label)


def test_prediction_is_the_raw_classifier():
    m = make()
    m.qhat.copy_(torch.tensor([0.7, 0.2, 0.1]))
    x = torch.tensor(U_S)
    assert torch.equal(m.predict(x), x)


def test_options_and_heads():
    o = METHODS.options()["debiaspl"]()
    assert (o.tau, o.qhat_momentum) == (0.4, 0.999)
    scratch = ["method=debiaspl", "model.arch=wrn-28-2", "model.pretrained=none", "finetune=fft"]
    with pytest.raises(ConfigError, match="no text tower"):
        load_config(None, [*scratch, "head=prototype"])
    assert load_config(None, [*scratch, "head=linear"]).method == "debiaspl"
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor([6, 3, 1]), None, float("nan"), N_U, 8)
    torch.manual_seed(0)
    m = METHODS.get("debiaspl").from_config(load_config(None, ["method=debiaspl", "head=linear"]),
                                            CachedFeatures(), ctx)
    assert m.head.fc.weight.abs().sum() > 0  # nn.Linear's default initialisation, as the original's fc


@pytest.mark.parametrize("backbone", [
    ["head=prototype"],  # micro CLIP: the text-initialised cosine head
    ["model.arch=wrn-28-2", "model.image_size=16", "finetune=fft", "head=linear"],  # scratch WRN
], ids=["micro_clip", "scratch_wrn"])
def test_trains_end_to_end(tmp_path, backbone):
    cfg = load_config("synthetic_smoke", [
        "method=debiaspl", *backbone, f"output_dir={tmp_path / 'run'}", f"cache.dir={tmp_path / 'cache'}",
        "train.steps_per_epoch=2", "train.batch_size=4", "eval.pseudo_label_max=16", "ssl.tau=0.0",
        "debiaspl.qhat_momentum=0.5",
    ])
    init = weight_state(assemble_run(cfg, make_runtime("cpu", "fp32")).method)
    run = train(cfg)
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["steps"] == 2
    weights = load_file(str(run / "weights.safetensors"))
    assert any(not torch.equal(weights[k], init[k]) for k in weights if k.startswith("head."))
    assert not torch.allclose(weights["qhat"], init["qhat"])  # q^ moved twice
    assert weights["qhat"].sum().item() == pytest.approx(1.0, rel=1e-5)
    assert weights["pending_count"].item() == 0
