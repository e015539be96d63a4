"""CPE's mechanics: the class-wise branches (BatchNorm on the scratch WRN, affine on CLIP), the
class-wise weights and loss by hand, the per-expert estimates under gradient accumulation and
several processes, the checkpoint, and a tiny end-to-end run on the scratch WRN.

The equations are checked against CPE's executed code in tests/golden/test_cpe_golden.py; here,
hand computations and the invariances of the engine contract.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from by_hand import SummingPeer as TwoProcesses
from safetensors.torch import load_file
from torch import nn

from ulfine.batch import Batch
from ulfine.config import ModelConfig, load_config
from ulfine.errors import ConfigError
from ulfine.methods import METHODS, MethodContext
from ulfine.methods.cpe import CPE, branch_weights, class_ranks, classwise_consistency, resolve_classwise_norm
from ulfine.models import CachedFeatures, build_backbone

sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))
from test_train import small_test_set  # noqa: F401  (autouse fixture: 40 test images)
from tiny import initial_weights, moved, tiny_config

K, COUNTS, N_U = 6, [20, 12, 7, 4, 2, 1], 20


def make(*overrides: str, backbone: nn.Module | None = None, dim: int = K, collectives=None) -> CPE:
    cfg = load_config(None, ["method=cpe", "head=linear", "ssl.tau=0.5", "cpe.estimate_from_epoch=0", *overrides])
    ctx = MethodContext(K, [f"c{i}" for i in range(K)], torch.tensor(COUNTS), None, float("nan"), N_U, dim)
    if collectives is not None:
        ctx.collectives = collectives
    return METHODS.get("cpe").from_config(cfg, backbone or CachedFeatures(), ctx)


def make_batch(step: int = 0, seed: int = 0, n: int = 6) -> Batch:
    g = torch.Generator().manual_seed(seed)
    feats = lambda: torch.randn(n, K, generator=g) * 3
    return Batch(feats(), torch.randint(0, K, (n,), generator=g), feats(), feats(), torch.arange(n), step=step)


def test_options_are_cpes():
    o = make().opts
    assert (o.tau_1, o.tau_2, o.tau_3, o.cut1, o.cut2, o.predict_expert) == (0.0, 2.0, 4.0, 2, 4, 2)
    assert (o.ema_u, o.classwise_norm) == (0.9, "auto")
    assert METHODS.get("cpe").strong_views == 1


def test_classwise_norm_resolves_per_backbone():
    wrn = build_backbone(ModelConfig(arch="wrn-28-2", pretrained="none"))
    assert resolve_classwise_norm("auto", wrn) == "batchnorm"
    assert resolve_classwise_norm("auto", CachedFeatures()) == "affine"
    assert resolve_classwise_norm("none", wrn) == "none"
    with pytest.raises(ConfigError, match="needs a BatchNorm backbone"):
        resolve_classwise_norm("batchnorm", CachedFeatures())


def test_ranks_and_branch_weights_by_hand():
    torch.testing.assert_close(class_ranks(torch.tensor(COUNTS)), torch.arange(K))
    # classes not numbered by count: rank by count (ties by index)
    assert class_ranks(torch.tensor([1, 20, 4, 4])).tolist() == [3, 0, 1, 2]
    label, mask = torch.tensor([0, 2, 5, 4, 3]), torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])
    w = branch_weights(label, mask, torch.arange(K), 2, 4)
    assert w.tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 1, 0]]


def test_classwise_consistency_by_hand():
    z = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[0.5, 0.0], [0.0, 0.0], [3.0, 0.0]]])
    label, w = torch.tensor([1, 0]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    ce = lambda v, k: math.log(sum(math.exp(a) for a in v)) - v[k]
    expect = (ce([2, 0], 1) + ce([0, 1], 1) + ce([0.5, 0], 0) + ce([3, 0], 0)) / (4 + 1e-12)
    assert classwise_consistency(z, label, w).item() == pytest.approx(expect, rel=1e-6)
    assert classwise_consistency(z, label, torch.zeros(2, 3)).item() == 0.0  # nothing confident


def test_experts_logit_adjust_their_labeled_loss():
    """Expert e's labeled loss is CE(z_e + tau_e log pi): with equal heads, tau 0/2/4 differ."""
    m = make()
    with torch.no_grad():
        for head in m.experts:
            head.fc.weight.copy_(torch.eye(K))
            head.fc.bias.zero_()
    b = make_batch(0, seed=1)
    out = m.training_step(b)
    log_pi = torch.log(torch.tensor(COUNTS, dtype=torch.float) / sum(COUNTS))
    for e, tau in ((1, 0.0), (2, 2.0), (3, 4.0)):
        expect = torch.nn.functional.cross_entropy(b.x_l + tau * log_pi, b.y_l)
        torch.testing.assert_close(out.logs[f"loss_s_expert{e}"], expect)
    assert torch.equal(out.logs["loss_s"], out.logs["loss_s_expert2"])  # the evaluated expert's


def test_affine_branches_start_at_the_identity_and_train_apart():
    m = make()
    assert m.norm_kind == "affine"
    x = torch.randn(5, K)
    f = m.features(x)
    assert f.shape == (5, 3, K) and all(torch.equal(f[:, b], x) for b in range(3))
    out = m.training_step(make_batch(0, seed=2))
    out.loss.backward()
    g = m.classwise.weight.grad
    assert g is not None and not torch.allclose(g[0], g[2])  # head and tail branches get other losses


def test_prediction_is_the_chosen_expert():
    m = make("cpe.predict_expert=3")
    x = torch.randn(4, K)
    branches = m.predict_branches(x)
    assert set(branches) == {"decision", "expert1", "expert2", "expert3"}
    assert torch.equal(m.predict(x), branches["expert3"]) and torch.equal(branches["decision"], branches["expert3"])


def test_classwise_batchnorm_on_the_scratch_wrn():
    """The hook gives three pooled BN branches of the WRN's last map; the backbone is otherwise
    untouched (its own BN and pooled features are those of a plain forward)."""
    wrn = build_backbone(ModelConfig(arch="wrn-28-2", pretrained="none", image_size=16))
    m = make(backbone=wrn, dim=wrn.embed_dim)
    assert m.norm_kind == "batchnorm"
    with torch.no_grad():
        for b, norm in enumerate(m.classwise.norms):
            norm.weight.fill_(1.0 + b)
    x = torch.randn(4, 3, 16, 16)
    f = m.features(x)
    assert f.shape == (4, 3, wrn.embed_dim)
    fmap = wrn.visual.head_act(wrn.visual.blocks(wrn.visual.stem(x)))
    mean, var = fmap.mean(dim=(0, 2, 3)), fmap.var(dim=(0, 2, 3), unbiased=False)
    normed = ((fmap - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-5)).mean(dim=(2, 3))
    for b in range(3):
        torch.testing.assert_close(f[:, b], (1.0 + b) * normed, rtol=1e-4, atol=1e-4)


def test_gradient_accumulation_gives_the_same_estimates():
    whole, micro = make(), make()
    micro.load_state_dict(whole.state_dict())
    b = make_batch(0, seed=3)
    whole.training_step(b)
    for part in b.split(2):
        micro.training_step(part)
    whole.after_optimizer_step(0)
    micro.after_optimizer_step(0)
    assert not torch.allclose(whole.u_estimate, torch.full((3, K), 1 / K))
    torch.testing.assert_close(micro.u_estimate, whole.u_estimate)


def test_two_processes_hold_the_estimates_of_one():
    single = make()
    b = make_batch(0, seed=4)
    single.training_step(b)
    single.after_optimizer_step(0)
    ranks = [make(collectives=TwoProcesses()) for _ in range(2)]
    for rank in ranks:
        rank.load_state_dict(single.state_dict() | {"u_estimate": torch.full((3, K), 1 / K)})
    for rank, part in zip(ranks, b.split(2)):
        rank.training_step(part)
    pending = [r.pending_counts.clone() for r in ranks]
    for r, rank in enumerate(ranks):
        rank.ctx.collectives.other = pending[1 - r]
        rank.after_optimizer_step(0)
        torch.testing.assert_close(rank.u_estimate, single.u_estimate)


def test_no_estimate_before_its_epoch_and_skipped_steps_dropped():
    m = make("cpe.estimate_from_epoch=1")
    m.training_step(make_batch(0, seed=5))
    m.after_optimizer_step(0)  # epoch 0 (one step per epoch): nothing estimated
    torch.testing.assert_close(m.u_estimate, torch.full((3, K), 1 / K))
    m, clean = make(), make()
    clean.load_state_dict(m.state_dict())
    m.training_step(make_batch(0, seed=6))  # skipped: no after_optimizer_step
    for x in (m, clean):
        x.training_step(make_batch(1, seed=7))
        x.after_optimizer_step(1)
    torch.testing.assert_close(m.u_estimate, clean.u_estimate)


def test_state_survives_a_state_dict_round_trip():
    wrn = build_backbone(ModelConfig(arch="wrn-28-2", pretrained="none", image_size=16))
    m = make(backbone=wrn, dim=wrn.embed_dim)
    x = torch.randn(4, 3, 16, 16)
    m.features(x)  # train mode: the branches' running statistics move
    state = m.state_dict()
    assert "classwise.norms.2.running_mean" in state and "u_estimate" in state and "pending_counts" not in state
    fresh = make(backbone=build_backbone(ModelConfig(arch="wrn-28-2", pretrained="none", image_size=16)),
                 dim=wrn.embed_dim)
    fresh.load_state_dict(state)
    m.eval()
    fresh.eval()
    torch.testing.assert_close(fresh.predict(x), m.predict(x))


def test_prototype_head_is_refused_on_scratch():
    with pytest.raises(ConfigError, match="no text tower"):
        load_config(None, ["method=cpe", "model.arch=wrn-28-2", "model.pretrained=none", "finetune=fft"])


def test_scratch_wrn_trains_end_to_end(tmp_path):
    """2 steps on the scratch WRN (16 px) with CPE's class-wise BatchNorm: every part trains
    (backbone, experts, the three branches' affines, whose statistics move) and the estimates move."""
    args = ("method=cpe", "model.arch=wrn-28-2", "model.image_size=16", "finetune=fft", "head=linear",
            "ssl.tau=0.0", "cpe.estimate_from_epoch=0")
    cfg = tiny_config(tmp_path, *args)
    init = initial_weights(cfg)
    from ulfine.engine import train
    run = train(cfg)
    assert moved(run, init) > 1e-4
    final = load_file(str(run / "weights.safetensors"))
    for key in ("classwise.norms.0.weight", "classwise.norms.2.bias", "classwise.norms.1.running_mean",
                "experts.2.fc.weight", "backbone.visual.stem.weight", "u_estimate"):
        assert not torch.equal(final[key], init[key]), key
