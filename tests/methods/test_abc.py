"""ABC's keep probabilities, schedule and losses against hand computations, its gradient under
accumulation, its state, its config refusals, and two tiny end-to-end runs (micro CLIP, scratch WRN).

Features are the logits (identity FixMatch head, balanced head = 2 x identity), K = 3 classes with
labeled counts 6/3/1; the Bernoulli draws are fixed through ``ABC.bernoulli_mask``. Every expected
value below is computed with ``math`` from the numbers in this file, not with the code under test.
"""

from __future__ import annotations

import json

import pytest
import torch
from by_hand import ce, soft_ce, softmax
from safetensors.torch import load_file

from ulfine.config import load_config
from ulfine.engine import train
from ulfine.engine.assemble import assemble_run
from ulfine.engine.checkpoint import weight_state
from ulfine.engine.runtime import make_runtime
from ulfine.errors import ConfigError
from ulfine.methods import METHODS, Batch, MethodContext
from ulfine.methods.abc import ABC, keep_probabilities, scheduled_probabilities
from ulfine.models import CachedFeatures

K = 3
COUNTS = [6, 3, 1]
X_L = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.5]]
Y_L = [0, 2]
U_W = [[3.0, 0.0, 0.0], [0.0, 0.2, -0.1]]
U_S = [[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]]
U_S2 = [[0.0, 1.0, 1.0], [2.0, 0.0, 0.0]]
T = 0.7  # ssl.tau, and the balanced threshold unless set


def twice(z):
    return [2 * v for v in z]


def make(*overrides: str, steps_per_epoch: int = 1) -> ABC:
    cfg = load_config(None, ["method=abc", "head=linear", f"ssl.tau={T}", *overrides])
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor(COUNTS), None, float("nan"), 10, K,
                        steps_per_epoch=steps_per_epoch)
    m = METHODS.get("abc").from_config(cfg, CachedFeatures(), ctx)
    with torch.no_grad():
        m.head.fc.weight.copy_(torch.eye(K))
        m.head_balanced.fc.weight.copy_(2 * torch.eye(K))
        m.head.fc.bias.zero_()
        m.head_balanced.fc.bias.zero_()
    return m


def batch(step: int = 0) -> Batch:
    t = torch.tensor
    return Batch(t(X_L), t(Y_L), t(U_W), t(U_S), t([4, 7]), step=step, u_s2=t(U_S2))


def fixed_draws(*draws: list[float]):
    """A ``bernoulli_mask`` returning ``draws`` in turn and recording the probabilities asked for."""
    seen: list[torch.Tensor] = []
    queue = iter(draws)

    def bernoulli_mask(p: torch.Tensor) -> torch.Tensor:
        seen.append(p.clone())
        return torch.tensor(next(queue), dtype=p.dtype)

    return bernoulli_mask, seen


def test_keep_probabilities_and_schedule_by_hand():
    torch.testing.assert_close(keep_probabilities(torch.tensor(COUNTS)), torch.tensor([1 / 6, 1 / 3, 1.0]))
    # unsorted counts: the rarest class wherever it is; an empty class counts as 1
    torch.testing.assert_close(keep_probabilities(torch.tensor([2, 8, 4])), torch.tensor([1.0, 0.25, 0.5]))
    torch.testing.assert_close(keep_probabilities(torch.tensor([0, 4])), torch.tensor([1.0, 0.25]))
    keep = torch.tensor([0.2, 1.0])
    torch.testing.assert_close(scheduled_probabilities(keep, 0, 500), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(scheduled_probabilities(keep, 250, 500), torch.tensor([0.6, 1.0]))
    torch.testing.assert_close(scheduled_probabilities(keep, 500, 500), keep)
    torch.testing.assert_close(scheduled_probabilities(keep, 900, 500), keep)  # capped at E


def test_losses_by_hand_with_fixed_draws():
    """Epoch 250 of E = 500 (steps_per_epoch 2, step 501); labeled draws (1, 0), unlabeled (1, 1)."""
    m = make("ssl.lambda_u=0.5", "abc.loss_weight=2.0", "abc.balanced_threshold=0.9", steps_per_epoch=2)
    m.bernoulli_mask, seen = fixed_draws([1.0, 0.0], [1.0, 1.0])
    out = m.training_step(batch(step=501))
    # FixMatch head: hard pseudo-labels of the weak view, mask max softmax >= 0.7
    label = [max(range(K), key=lambda k: u[k]) for u in U_W]
    mask = [max(softmax(u)) >= T for u in U_W]
    assert label == [0, 1] and mask == [True, False]
    l_x = (ce(X_L[0], 0) + ce(X_L[1], 2)) / 2
    strong = U_S + U_S2
    l_u = sum(ce(s, label[i % 2]) for i, s in enumerate(strong) if mask[i % 2]) / 4
    # balanced head: labeled CE of 2x masked by the draws; soft targets q = softmax(2 u_w)
    l_bx = (1.0 * ce(twice(X_L[0]), 0) + 0.0 * ce(twice(X_L[1]), 2)) / 2
    q = [softmax(twice(u)) for u in U_W]
    mask_b = [max(p) >= 0.9 for p in q]
    assert mask_b == [True, False]
    l_bu = [sum(soft_ce(twice(s), q[i]) for i, s in enumerate(view) if mask_b[i]) / 2 for view in (U_S, U_S2)]
    assert out.loss.item() == pytest.approx(l_x + 0.5 * l_u + 2.0 * (l_bx + sum(l_bu)), rel=1e-5, abs=1e-6)
    assert out.logs["loss_u"].item() == pytest.approx(l_u, rel=1e-5, abs=1e-6)
    assert out.logs["loss_s_balanced"].item() == pytest.approx(l_bx, rel=1e-5, abs=1e-6)
    assert out.logs["loss_u_balanced"].item() == pytest.approx(sum(l_bu), rel=1e-5, abs=1e-6)
    assert out.pseudo.label.tolist() == label and out.pseudo.mask.tolist() == mask
    # the probabilities asked for: p_y of the labels (0, 2), then p(250) of the balanced argmax (0, 1)
    torch.testing.assert_close(seen[0], torch.tensor([1 / 6, 1.0]))
    torch.testing.assert_close(seen[1], torch.tensor([1 - 0.5 * (1 - 1 / 6), 1 - 0.5 * (1 - 1 / 3)]))


def test_default_draws_come_from_torchs_generator():
    m = make()
    p = torch.tensor([0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    torch.manual_seed(3)
    a = m.bernoulli_mask(p)
    torch.manual_seed(3)
    assert torch.equal(a, m.bernoulli_mask(p)) and a[0] == 0 and a[1] == 1


def test_prediction_is_the_balanced_head():
    m = make()
    x = torch.tensor(U_S)
    assert torch.equal(m.predict(x), 2 * x)
    branches = m.predict_branches(x)
    assert torch.equal(branches["fixmatch"], x) and torch.equal(branches["decision"], 2 * x)


def test_two_micro_batches_give_the_one_batch_gradient():
    """With the same draws, every loss is a plain mean: the mean of two half-batch losses has the
    gradient of the whole batch."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    full = Batch(torch.randn(4, K, generator=g) * 2, torch.tensor([0, 1, 2, 0]), torch.randn(4, K, generator=g) * 3,
                 torch.randn(4, K, generator=g), torch.arange(4), step=0, u_s2=torch.randn(4, K, generator=g))

    def grads(parts: list[Batch]) -> list[torch.Tensor]:
        m = make("ssl.tau=0.5")
        with torch.no_grad():
            for head in (m.head.fc, m.head_balanced.fc):
                head.weight.copy_(torch.randn(K, K, generator=torch.Generator().manual_seed(2)))
        m.bernoulli_mask = lambda p: (p > 0.5).to(p.dtype)  # the same draws whatever the batching
        loss = sum(m.training_step(b).loss for b in parts) / len(parts)
        loss.backward()
        return [p.grad.clone() for p in m.parameters()]

    for a, b in zip(grads([full]), grads(full.split(2))):
        torch.testing.assert_close(a, b)


def test_heads_survive_a_state_dict_round_trip():
    a = make()
    with torch.no_grad():
        a.head_balanced.fc.weight.add_(torch.randn(K, K))
    b = make()
    b.load_state_dict(a.state_dict())
    x = torch.tensor(U_S)
    assert torch.equal(a.predict(x), b.predict(x))
    assert "keep_prob" not in a.state_dict()  # derived from the labeled counts, rebuilt every time
    assert torch.equal(a.keep_prob, b.keep_prob)


def test_linear_heads_start_as_abcs():
    """head=linear: Xavier-normal weights and zero bias (ABC's WRN), two different heads."""
    cfg = load_config(None, ["method=abc", "head=linear"])
    ctx = MethodContext(K, ["a", "b", "c"], torch.tensor(COUNTS), None, float("nan"), 10, 64)
    m = METHODS.get("abc").from_config(cfg, CachedFeatures(), ctx)
    assert m.head.fc.weight.abs().sum() > 0 and m.head.fc.bias.abs().sum() == 0
    assert not torch.equal(m.head.fc.weight, m.head_balanced.fc.weight)


def test_scratch_backbones_need_the_linear_head():
    scratch = ["method=abc", "model.arch=wrn-28-2", "model.pretrained=none", "finetune=fft"]
    with pytest.raises(ConfigError, match="no text tower"):
        load_config(None, [*scratch, "head=prototype"])
    assert load_config(None, [*scratch, "head=linear"]).method == "abc"
    assert METHODS.get("abc").strong_views == 2


@pytest.mark.parametrize("backbone", [
    ["head=prototype"],  # micro CLIP: text-initialised cosine heads
    ["model.arch=wrn-28-2", "model.image_size=16", "finetune=fft", "head=linear"],  # scratch WRN
], ids=["micro_clip", "scratch_wrn"])
def test_trains_end_to_end(tmp_path, backbone):
    cfg = load_config("synthetic_smoke", [
        "method=abc", *backbone, f"output_dir={tmp_path / 'run'}", f"cache.dir={tmp_path / 'cache'}",
        "train.steps_per_epoch=2", "train.batch_size=4", "eval.pseudo_label_max=16", "ssl.tau=0.0",
    ])
    init = weight_state(assemble_run(cfg, make_runtime("cpu", "fp32")).method)
    run = train(cfg)
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["steps"] == 2 and final["images_seen"]["unlabeled"] == 8  # 2 steps x 4 images
    weights = load_file(str(run / "weights.safetensors"))
    for name in [k for k in weights if k.startswith(("head.", "head_balanced."))]:
        assert not torch.equal(weights[name], init[name]), name  # both heads trained
    assert len(final["method_diagnostics"]["keep_prob"]) == 10
