"""ulfine's ``abc`` against ABC's own ``ABCcode0920/ABCfix.py`` (LeeHyuck/ABC@f70e926).

The fixture holds every step of a real run of ABC's ``main()``/``train()``, resumed at epoch 250
of its 500-epoch schedule for 3 epochs of 2 steps, with fixed linear heads
(scripts/golden/make_abc.py): both heads' pseudo-labels and masks, the balanced head's soft targets,
the probabilities ABC gave ``torch.bernoulli`` and what it drew, every loss term, and the last
evaluation's balanced-head logits. ulfine's ABC runs the same steps through ``training_step``;
its :meth:`~ulfine.methods.abc.ABC.bernoulli_mask` is replaced by a replay that checks each call's
probabilities against ABC's and returns ABC's draws, so both compute their losses on the same masks.

(Named ``test_abc_golden.py``: ``tests/methods/test_abc.py`` exists, and two test modules of one
basename in folders without ``__init__.py`` cannot be collected in one pytest run.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from golden_fixtures import build, close, load, mismatches, same

from ulfine.batch import Batch
from ulfine.methods.abc import ABC

T, META = load("abc")
OPTS = META["options"]
COUNTS = T["labeled_counts"]
K, B, STEPS = OPTS["num_classes"], OPTS["batch_size"], len(T["epoch"])
VAL_ITERATION = OPTS["val_iteration"]


def make(*overrides: str) -> ABC:
    """ulfine's ABC with ABC's constants and heads (step s of the fixture is optimiser step
    epoch * val_iteration + s % val_iteration)."""
    m = build("abc", ["head=linear", f"ssl.tau={OPTS['threshold']}", "ssl.lambda_u=1.0", *overrides],
              COUNTS, T["inputs_x"].shape[-1], num_unlabeled=STEPS * B, steps_per_epoch=VAL_ITERATION)
    with torch.no_grad():
        for head, name in ((m.head.fc, "fc"), (m.head_balanced.fc, "fc2")):
            head.weight.copy_(T[f"{name}.weight"])
            head.bias.copy_(T[f"{name}.bias"])
    return m


def replay(s: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """ABC's two Bernoulli calls of step s, in its order: each call's probabilities must be ABC's;
    the draws returned are ABC's."""
    calls = iter([("p_labeled", "drawn_labeled"), ("p_unlabeled", "drawn_unlabeled")])

    def bernoulli_mask(p: torch.Tensor) -> torch.Tensor:
        p_name, drawn = next(calls)
        close(p, T[p_name][s])
        return T[drawn][s].to(p.dtype)

    return bernoulli_mask


def batch(s: int, y: torch.Tensor | None = None) -> Batch:
    step = int(T["epoch"][s]) * VAL_ITERATION + s % VAL_ITERATION
    return Batch(T["inputs_x"][s], T["targets_x"][s] if y is None else y, T["inputs_u"][s], T["inputs_u2"][s],
                 idx_u=torch.arange(s * B, (s + 1) * B), step=step, u_s2=T["inputs_u3"][s])


def check_step(m: ABC, s: int, y: torch.Tensor | None = None) -> None:
    m.bernoulli_mask = replay(s)
    t = m.step_terms(batch(s, y))
    # the FixMatch head
    same(t.label, T["targets_u"][s])
    close(t.confidence, T["max_p"][s])
    same(t.mask.repeat(2), T["select_mask"][s])
    close(t.loss_x, T["Lx"][s])
    close(t.loss_u, T["Lu"][s])
    # the balanced head: soft targets, their confidence mask, the masks drawn, its losses
    close(t.target_balanced, T["logitsu1"][s])
    same(t.target_balanced.argmax(-1), T["label_u"][s])
    same(t.mask_balanced, T["select_mask2"][s])
    same(t.keep_labeled, T["maskforbalance"][s])
    same(t.keep_unlabeled, T["maskforbalanceu"][s])
    close(t.loss_bx, T["abcloss"][s])
    close(t.loss_bu[0], T["abcloss1"][s])
    close(t.loss_bu[1], T["abcloss2"][s])
    close(t.loss_bx + t.loss_bu.sum(), T["totalabcloss"][s])
    close(t.loss, T["loss"][s])


def run(m: ABC, labels: dict[int, torch.Tensor] | None = None) -> None:
    for s in range(STEPS):
        check_step(m, s, (labels or {}).get(s))


def test_fixture_is_abc_mid_schedule():
    assert META["peer"] == "abc" and META["commit"].startswith("f70e926")
    assert T["epoch"].tolist() == [250, 250, 251, 251, 252, 252]
    assert COUNTS.tolist() == OPTS["labeled_counts"]
    for name in ("select_mask", "select_mask2", "maskforbalance", "maskforbalanceu"):
        assert T[name].bool().any() and not T[name].bool().all(), name
    # mid-schedule: the unlabeled probabilities are neither 1 nor the labeled ones
    p_u = T["p_unlabeled"]
    assert ((p_u > 0.5) & (p_u < 1.0)).any()


def test_keep_probabilities_match_abc():
    """ABC's labeled Bernoulli parameters are p_{y_j} = N_min / N_{y_j}."""
    m = make()
    for s in range(STEPS):
        close(m.keep_prob[T["targets_x"][s]], T["p_labeled"][s])


def test_every_step_matches_abc():
    run(make())


def test_prediction_is_abcs_balanced_head():
    m = make()
    close(m.predict(T["test_inputs"]), T["test_logits"])


def test_can_fail_with_another_threshold():
    """ssl.tau 0.95 -> 0.9: the FixMatch head's mask no longer matches."""
    assert mismatches(lambda: run(make("ssl.tau=0.9", "abc.balanced_threshold=0.95")))


def test_can_fail_with_another_balanced_threshold():
    assert mismatches(lambda: run(make("abc.balanced_threshold=0.8")))


def test_can_fail_with_another_schedule():
    """E 500 -> 400: the unlabeled Bernoulli parameters no longer match."""
    assert mismatches(lambda: run(make("abc.schedule_epochs=400")))


def test_can_fail_with_another_loss_weight():
    assert mismatches(lambda: run(make("abc.loss_weight=0.5")))


def test_can_fail_with_a_flipped_label():
    y = T["targets_x"][0].clone()
    y[0] = (y[0] + 1) % K
    assert mismatches(lambda: run(make(), {0: y}))
