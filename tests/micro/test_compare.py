"""Table rows come from the engine's metrics exactly; mean/std over seeds is computed right."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ulfine.micro.compare import DEMO_METHODS, aggregate, markdown_table, row_from_metrics


def _metrics(overall: float, tail_precision: list) -> dict:
    return {
        "overall_acc": overall, "group_acc": {"head": 0.9, "medium": 0.5, "tail": 0.2},
        "group_rule": {"text": "rule", "classes": {"head": [0], "medium": [1], "tail": [2, 3]}},
        "per_class_acc": [0.9, 0.5, 0.3, 0.1], "train_seconds": 12.5,
        "pseudo_labels": {"per_class": {"precision": tail_precision}},
    }


def test_row_reads_final_metrics_and_tail_pseudo_label_precision() -> None:
    row = row_from_metrics("x", "p", 0, _metrics(0.55, [1.0, 0.8, 0.6, None]), Path("run"))
    assert (row.overall, row.head, row.medium, row.tail, row.train_seconds) == (0.55, 0.9, 0.5, 0.2, 12.5)
    assert row.tail_pl_precision == pytest.approx(0.6)  # class 3 has no confident pseudo-label
    assert "| x | 55.0 | 90.0 | 50.0 | 20.0 | 60.0 | 12.5 |" in markdown_table([row])


def test_aggregate_mean_and_sample_std_over_seeds() -> None:
    rows = [row_from_metrics("m", "p", s, _metrics(acc, [0.5, 0.5, 0.5, 0.5]), Path("r"))
            for s, acc in enumerate([0.5, 0.6, 0.7])]
    (entry,) = aggregate(rows)
    assert entry["seeds"] == [0, 1, 2]
    assert entry["overall"]["mean"] == pytest.approx(0.6)
    assert entry["overall"]["std"] == pytest.approx(0.1)  # sample std of 0.5, 0.6, 0.7
    assert entry["tail_pl_precision"]["std"] == 0.0


def test_demo_compares_the_five_methods_of_the_issue() -> None:
    assert [m.label for m in DEMO_METHODS] == [
        "zero-shot", "LP + FixMatch", "LFT + FixMatch", "FFT + FixMatch", "ULFine (LFT)"]
    assert len({m.slug for m in DEMO_METHODS}) == 5


@pytest.mark.slow
def test_demo_writes_its_report(tmp_path: Path) -> None:
    from ulfine.micro.demo import run_demo

    res = run_demo(tmp_path, methods=[DEMO_METHODS[0], DEMO_METHODS[4]], progress=False,
                   overrides=["train.max_steps=2", "train.steps_per_epoch=2", "train.epochs=1", "eval.last_k=1"])
    assert [r.label for r in res.rows] == ["zero-shot", "ULFine (LFT)"]
    for name in ("report.md", "results.json", "group_accuracy.png", "per_class_accuracy.png"):
        assert (tmp_path / name).is_file()
    assert not math.isnan(res.rows[0].overall) and res.rows[0].overall > 0.3
