"""Table rows come from the engine's metrics exactly; mean/std over seeds is computed right; the
Markdown and CSV tables of ``ulfine.apps.results`` keep their formats."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from ulfine.apps.results import (
    RunRecord,
    aggregate,
    aggregate_csv,
    markdown_aggregate,
    markdown_table,
    records_csv,
    row_from_metrics,
    rows_csv,
    rows_from_json,
    rows_to_json,
    summed_confidence_histogram,
    table_by_metric,
    table_by_preset,
)
from ulfine.errors import UlfineError


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
    assert markdown_table([row]).splitlines()[1] == "|---|---:|---:|---:|---:|---:|---:|"


def test_row_of_a_run_without_pseudo_labels_shows_a_dash() -> None:
    metrics = _metrics(0.5, [])
    del metrics["pseudo_labels"]
    row = row_from_metrics("zs", "p", 0, metrics, Path("run"))
    assert math.isnan(row.tail_pl_precision)
    assert "| zs | 50.0 | 90.0 | 50.0 | 20.0 | - | 12.5 |" in markdown_table([row])


def test_aggregate_mean_and_sample_std_over_seeds() -> None:
    rows = [row_from_metrics("m", "p", s, _metrics(acc, [0.5, 0.5, 0.5, 0.5]), Path("r"))
            for s, acc in enumerate([0.5, 0.6, 0.7])]
    (entry,) = aggregate(rows)
    assert entry["seeds"] == [0, 1, 2]
    assert entry["overall"]["mean"] == pytest.approx(0.6)
    assert entry["overall"]["std"] == pytest.approx(0.1)  # sample std of 0.5, 0.6, 0.7
    assert entry["tail_pl_precision"]["std"] == 0.0
    md = markdown_aggregate([entry])
    assert md.startswith("### p\n\n| method | seeds | overall acc |")
    assert "| m | 3 | 60.0 ± 10.0 | 90.0 ± 0.0 | 50.0 ± 0.0 | 20.0 ± 0.0 | 50.0 ± 0.0 | 12.5 ± 0.0 |" in md
    table = list(csv.DictReader(io.StringIO(aggregate_csv([entry]))))
    assert table[0]["method"] == "m" and table[0]["seeds"] == "3"
    assert float(table[0]["overall_mean"]) == pytest.approx(0.6)
    assert float(table[0]["overall_std"]) == pytest.approx(0.1)


def test_rows_round_trip_json_and_csv() -> None:
    rows = [row_from_metrics("LP + FixMatch, x", "p", 1, _metrics(0.25, [0.5] * 4), Path("r"))]
    assert rows_from_json(rows_to_json(rows)) == rows
    (line,) = csv.DictReader(io.StringIO(rows_csv(rows)))
    assert line["method"] == "LP + FixMatch, x"  # a comma in a label is quoted, not a new column
    assert (line["preset"], line["seed"], float(line["overall"])) == ("p", "1", 0.25)


def test_grid_tables_mean_std_and_single_seed() -> None:
    base = {"group_acc": {"head": 0.9}, "pseudo_labels": {"precision": 0.5}}
    recs = [RunRecord("a", "p1", 0, {**base, "overall_acc": 0.80}),
            RunRecord("a", "p1", 1, {**base, "overall_acc": 0.82}),
            RunRecord("b", "p1", 0, {**base, "overall_acc": 0.75}),
            RunRecord("a", "p2", 0, {**base, "overall_acc": 0.5})]
    md = table_by_metric(recs, ["a", "b", "c"], "p1", ["overall", "head", "tail"]).markdown()
    assert md.splitlines()[0] == "| run | overall acc (%) | head acc (%) | tail acc (%) |"
    assert "| a | 81.00 ± 1.41 | 90.00 ± 0.00 | - |" in md
    assert "| b | 75.00 | 90.00 | - |" in md  # one seed: no spread is claimed
    assert "| c | - | - | - |" in md  # a row without a finished run
    by_preset = table_by_preset(recs, ["a", "b"], ["p1", "p2"], "overall").markdown()
    assert "| a | 81.00 ± 1.41 | 50.00 |" in by_preset and "| b | 75.00 | - |" in by_preset
    lines = list(csv.DictReader(io.StringIO(records_csv(recs, ["overall", "pl_precision"]))))
    assert [(d["label"], d["seed"]) for d in lines] == [("a", "0"), ("a", "1"), ("b", "0"), ("a", "0")]
    assert float(lines[0]["overall"]) == pytest.approx(80.0) and float(lines[0]["pl_precision"]) == 50.0


def _pl(false: int, false_conf: float, correct: list, wrong: list, edges=(0.7, 0.85, 1.0)) -> dict:
    hist = {"edges": list(edges), "correct": correct, "wrong": wrong}
    return {"pseudo_labels": {"false_confident": false, "false_confidence_mean": false_conf,
                              "true_confidence_mean": 0.9, "confidence_histogram": hist}}


def test_false_pseudo_label_columns_and_summed_histogram() -> None:
    recs = [RunRecord("a", "p", 0, _pl(10, 0.80, [3, 4], [6, 4])),
            RunRecord("a", "p", 1, _pl(13, 0.85, [1, 0], [8, 5])),
            RunRecord("b", "p", 0, {"pseudo_labels": None})]
    md = table_by_metric(recs, ["a", "b"], "p", ["pl_false_confident", "pl_false_confidence"]).markdown()
    assert md.splitlines()[0] == "| run | false confident PLs | mean conf. of false PLs |"
    assert "| a | 11.5 ± 2.1 | 0.825 ± 0.035 |" in md  # counts with one decimal, confidences three
    assert "| b | - | - |" in md
    assert summed_confidence_histogram(recs, "a", "p") == {
        "edges": [0.7, 0.85, 1.0], "seeds": 2, "correct": [4, 4], "wrong": [14, 9]}
    assert summed_confidence_histogram(recs, "b", "p") is None
    other_tau = [recs[0], RunRecord("a", "p", 2, _pl(1, 0.9, [0, 0], [1, 0], edges=(0.6, 0.8, 1.0)))]
    with pytest.raises(UlfineError, match="binned their confidences differently"):
        summed_confidence_histogram(other_tau, "a", "p")
