"""Metrics against hand computations on a fixed tiny prediction set."""

from __future__ import annotations

import math

import pytest
import torch

from ulfine.config import EvalConfig
from ulfine.engine.metrics import (
    class_groups,
    classification_metrics,
    confidence_histogram,
    expected_calibration_error,
    mean_of_last,
    pseudo_label_metrics,
)


def logits_from(pred: list[int], conf: list[float], k: int) -> torch.Tensor:
    """Logits whose softmax puts ``conf`` on ``pred`` and spreads the rest evenly."""
    rows = []
    for p, c in zip(pred, conf):
        probs = [(1 - c) / (k - 1)] * k
        probs[p] = c
        rows.append([math.log(v) for v in probs])
    return torch.tensor(rows, dtype=torch.float64)


def test_classification_metrics_by_hand():
    target = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    pred = [0, 0, 1, 0, 2, 2, 0, 3]
    conf = [0.9, 0.82, 0.62, 0.52, 0.95, 0.72, 0.42, 0.32]  # one per 15-bin, off the edges
    m = classification_metrics(logits_from(pred, conf, 4), target, [10, 5, 3, 1], EvalConfig())
    assert m["overall_acc"] == pytest.approx(6 / 8)
    assert m["per_class_acc"] == pytest.approx([1.0, 0.5, 1.0, 0.5])
    assert m["balanced_acc"] == pytest.approx(0.75)
    # default rule, K=4: round(0.3*4)=1 head (class 0), 1 tail (class 3), medium {1, 2}
    assert m["group_rule"]["classes"] == {"head": [0], "medium": [1, 2], "tail": [3]}
    assert m["group_acc"] == pytest.approx({"head": 1.0, "medium": 0.75, "tail": 0.5})
    hand_ece = (0.1 + 0.18 + 0.38 + 0.52 + 0.05 + 0.28 + 0.42 + 0.68) / 8
    assert m["ece"] == pytest.approx(hand_ece, abs=1e-6)
    assert m["prediction_counts"] == [4, 1, 2, 1]


def test_ece_shares_bins_and_group_count_rule():
    # 0.90 and 0.91 fall in the same bin (13/15, 14/15]: |0.5 - 0.905| = 0.405
    assert expected_calibration_error(torch.tensor([0.9, 0.91]), torch.tensor([1, 0]), 15) == pytest.approx(0.405)
    groups, rule = class_groups([10, 5, 3, 1], EvalConfig(group_rule="count", head_min_count=4, tail_max_count=2))
    assert groups == ["head", "head", "medium", "tail"]
    assert rule["rule"] == "count"
    # ties in the labeled count are broken by class index
    groups, _ = class_groups([5, 5, 5, 5, 5, 5, 5, 5, 5, 5], EvalConfig())
    assert groups == ["head"] * 3 + ["medium"] * 4 + ["tail"] * 3


def test_pseudo_label_metrics_by_hand():
    target = torch.tensor([0, 0, 1, 2, 2])
    logits = logits_from([0, 1, 1, 0, 2], [0.9, 0.8, 0.5, 0.95, 0.75], 3)
    m = pseudo_label_metrics(logits, target, tau=0.7)
    assert m["mask_rate"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.4)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["per_class"]["precision"] == pytest.approx([0.5, 0.0, 1.0])
    assert m["per_class"]["recall"] == pytest.approx([0.5, 0.0, 0.5])
    assert m["per_class"]["mask_rate"] == pytest.approx([1.0, 0.0, 1.0])
    assert m["confident_counts"] == [2, 1, 1]
    # confident: 0.9 right, 0.8 wrong, 0.95 wrong, 0.75 right
    assert m["false_confident"] == 2
    assert m["false_confidence_mean"] == pytest.approx((0.8 + 0.95) / 2)
    assert m["true_confidence_mean"] == pytest.approx((0.9 + 0.75) / 2)
    # 10 bins of width 0.03 over [0.7, 1]: 0.75 -> bin 1, 0.8 -> 3, 0.9 -> 6, 0.95 -> 8
    hist = m["confidence_histogram"]
    assert hist["edges"] == pytest.approx([0.7 + 0.03 * b for b in range(11)])
    assert hist["correct"] == [0, 1, 0, 0, 0, 0, 1, 0, 0, 0]
    assert hist["wrong"] == [0, 0, 0, 1, 0, 0, 0, 0, 1, 0]


def test_undefined_values_are_none_and_last_k_mean():
    m = pseudo_label_metrics(logits_from([0], [0.5], 2), torch.tensor([0]), tau=0.9)
    assert m["precision"] is None and m["per_class"]["recall"][1] is None
    hist = [{"step": s, "overall_acc": a, "balanced_acc": a / 2,
             "group_acc": {"head": a, "medium": None, "tail": 0.0}} for s, a in [(1, 0.2), (2, 0.4), (3, 0.6)]]
    mean = mean_of_last(hist, 2)
    assert mean["steps"] == [2, 3]
    assert mean["overall_acc"] == pytest.approx(0.5)
    assert mean["balanced_acc"] == pytest.approx(0.25)
    assert mean["group_acc"] == {"head": pytest.approx(0.5), "medium": None, "tail": 0.0}


def test_confidence_histogram_edges_and_empty_means():
    # confidence exactly tau goes to the first bin, exactly 1.0 to the last; the counts add up
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [0.3, 0.0]])
    m = pseudo_label_metrics(logits, torch.tensor([0, 0, 0, 1]), tau=0.5, bins=4)
    hist = m["confidence_histogram"]
    assert hist["edges"] == pytest.approx([0.5, 0.625, 0.75, 0.875, 1.0])
    assert hist["correct"] == [1, 0, 0, 1]  # [0.5, 0.5] -> class 0 at 0.5; [100, 0] at 1.0
    assert hist["wrong"] == [1, 0, 0, 1]  # 0.574 predicted 0 for a 1; [0, 100] at 1.0
    assert sum(hist["correct"]) + sum(hist["wrong"]) == 4
    none = pseudo_label_metrics(logits_from([0], [0.5], 2), torch.tensor([0]), tau=0.9)
    assert none["false_confident"] == 0
    assert none["false_confidence_mean"] is None and none["true_confidence_mean"] is None
    assert none["confidence_histogram"]["correct"] == [0] * 10
    assert confidence_histogram(torch.tensor([1.0]), torch.tensor([False]), 1.0, 3)["wrong"] == [0, 0, 1]


def test_geometric_mean_recall_by_hand_and_zero_for_a_missed_class():
    from ulfine.engine.metrics import geometric_mean_recall

    assert geometric_mean_recall([0.5, 0.8, None, 1.0]) == pytest.approx((0.5 * 0.8 * 1.0) ** (1 / 3))
    assert geometric_mean_recall([0.9, 0.0, 1.0]) == 0.0  # one class never recognised
    assert geometric_mean_recall([None, None]) is None


def test_best_test_accuracy_over_training_is_labelled_and_never_the_headline():
    """The field's figure is the maximum over the evaluations, labelled as selected on the test set;
    the final model's accuracy stays the top-level figure."""
    from ulfine.config import Config
    from ulfine.engine.finish import BEST_ON_TEST_NOTE, final_metrics
    from ulfine.engine.state import StepBudget, TrainState

    groups = {"head": 0.5, "medium": 0.5, "tail": 0.5}
    state = TrainState(step=30, history=[
        {"step": 10, "overall_acc": 0.5, "balanced_acc": 0.5, "group_acc": groups, "ece": 0.1,
         "geometric_mean_recall": 0.4},
        {"step": 20, "overall_acc": 0.7, "balanced_acc": 0.6, "group_acc": groups, "ece": 0.1,
         "geometric_mean_recall": 0.5}])
    final = {"step": 30, "overall_acc": 0.6, "balanced_acc": 0.55, "group_acc": groups, "ece": 0.1,
             "geometric_mean_recall": 0.45}
    record = final_metrics(final, state, Config(), StepBudget(30, 30), {"labeled": 1, "unlabeled": 1},
                           torch.device("cpu"))
    assert record["overall_acc"] == 0.6  # the honest figure stays first
    best = record["best_test_over_training"]
    assert (best["overall_acc"], best["step"], best["geometric_mean_recall"]) == (0.7, 20, 0.5)
    assert best["note"] == BEST_ON_TEST_NOTE and "selected on the test set" in best["note"]


def test_the_data_wait_hint_needs_a_steady_state_wait():
    """The 'waited for data' line appears only above 10% of step time over at least 20 steps (a
    few-step run's first batch is not a steady-state wait), and names the right fix."""
    from ulfine.engine.meter import DATA_WAIT_MIN_STEPS, StepMeter

    few = StepMeter()
    for _ in range(DATA_WAIT_MIN_STEPS - 1):
        few.add_time(8, wait_s=0.5, step_s=1.0)
    assert few.waiting_hint(0, views_on_device=False) is None
    many = StepMeter()
    for _ in range(DATA_WAIT_MIN_STEPS):
        many.add_time(8, wait_s=0.5, step_s=1.0)
    assert "50%" in many.waiting_hint(2, views_on_device=False) and "augment_on=device" in many.waiting_hint(2, False)
    assert "augment_on" not in many.waiting_hint(2, views_on_device=True)
    quiet = StepMeter()
    for _ in range(DATA_WAIT_MIN_STEPS):
        quiet.add_time(8, wait_s=0.05, step_s=1.0)
    assert quiet.waiting_hint(2, views_on_device=False) is None
