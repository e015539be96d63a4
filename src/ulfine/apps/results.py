"""Results tables: the one place that turns ``final_metrics.json`` files into rows and tables.

Why one module: the demo, the accuracy benchmark and the reproduction scripts all report the
engine's numbers; reading a metric, averaging over seeds (mean ± sample std) and writing
Markdown or CSV must be done once, the same way. Nothing here trains or evaluates: every number
is read from a run's ``final_metrics.json`` (the final model, never a best-on-test pick).

Two shapes of input:

* :class:`Row`: one run's headline numbers (``row_from_metrics``), JSON round-trippable
  (``rows_to_json`` / ``rows_from_json``); tables ``markdown_table``, ``rows_csv``, and over
  seeds ``aggregate`` -> ``markdown_aggregate`` / ``aggregate_csv``.
* :class:`RunRecord`: a run's label, preset, seed and whole metrics dict, for tables of any
  metric of :data:`METRICS` (``table_by_metric``, ``table_by_preset``, ``records_csv``).
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UlfineError

METRICS_FILE = "final_metrics.json"


# ------------------------------------------------------------------------------ reading metrics
def dotted(key: str) -> Callable[[Mapping[str, Any]], float | None]:
    """Reader of ``metrics['group_acc']['tail']`` spelt ``'group_acc.tail'`` (None when absent)."""

    def read(metrics: Mapping[str, Any]) -> float | None:
        node: Any = metrics
        for part in key.split("."):
            if not isinstance(node, Mapping) or node.get(part) is None:
                return None
            node = node[part]
        return float(node) if isinstance(node, (int, float)) else None

    return read


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, numbers.Real) and not math.isnan(float(v))]


def tail_pl_precision(metrics: Mapping[str, Any]) -> float | None:
    """Mean pseudo-label precision over the tail classes (classes without one are skipped).

    Why: the paper's diagnosis of LTSSL on CLIP is about tail pseudo-labels; the engine records
    precision per class, this averages it over the group rule's tail classes.
    """
    tail = ((metrics.get("group_rule") or {}).get("classes") or {}).get("tail", [])
    precision = ((metrics.get("pseudo_labels") or {}).get("per_class") or {}).get("precision") or []
    vals = _finite(precision[k] for k in tail if k < len(precision))
    return float(np.mean(vals)) if vals else None


@dataclass(frozen=True)
class Metric:
    """A column: its title, how to read it from final_metrics.json, its display scale and, for
    counts, its own number of decimals (None: the table's)."""

    title: str
    read: Callable[[Mapping[str, Any]], float | None]
    scale: float = 100.0
    digits: int | None = None


#: every metric a table can show, by name
METRICS: dict[str, Metric] = {
    "overall": Metric("overall acc (%)", dotted("overall_acc")),
    "overall_last_k": Metric("overall, mean of last k (%)", dotted("last_k_mean.overall_acc")),
    "head": Metric("head acc (%)", dotted("group_acc.head")),
    "medium": Metric("medium acc (%)", dotted("group_acc.medium")),
    "tail": Metric("tail acc (%)", dotted("group_acc.tail")),
    "balanced": Metric("balanced acc (%)", dotted("balanced_acc")),
    "gm_recall": Metric("geometric mean of per-class recall (%)", dotted("geometric_mean_recall")),
    "best_on_test": Metric("best test acc over training (%; selected on test)",
                           dotted("best_test_over_training.overall_acc")),
    "val_overall": Metric("val acc (%)", dotted("val.overall_acc")),
    "val_balanced": Metric("val balanced acc (%)", dotted("val.balanced_acc")),
    "ece": Metric("ECE (%)", dotted("ece")),
    "pl_precision": Metric("pseudo-label precision (%)", dotted("pseudo_labels.precision")),
    "pl_recall": Metric("pseudo-label recall (%)", dotted("pseudo_labels.recall")),
    "pl_mask_rate": Metric("mask rate (%)", dotted("pseudo_labels.mask_rate")),
    "tail_pl_precision": Metric("tail PL precision (%)", tail_pl_precision),
    "pl_false_confident": Metric("false confident PLs", dotted("pseudo_labels.false_confident"), 1.0, 1),
    "pl_false_confidence": Metric("mean conf. of false PLs", dotted("pseudo_labels.false_confidence_mean"), 1.0, 3),
    "pl_true_confidence": Metric("mean conf. of true PLs", dotted("pseudo_labels.true_confidence_mean"), 1.0, 3),
    "train_seconds": Metric("train s", dotted("train_seconds"), 1.0),
    "train_minutes": Metric("train time (min)", dotted("train_seconds"), 1 / 60),
    "wall_minutes": Metric("wall time incl. eval (min)", dotted("wall_seconds"), 1 / 60),
    "trainable_params": Metric("trainable params (M)", dotted("trainable_params"), 1e-6),
}


def metric_value(metrics: Mapping[str, Any], name: str) -> float:
    """Metric ``name`` of a final_metrics dict, unscaled; NaN when the run did not record it."""
    value = METRICS[name].read(metrics)
    return float("nan") if value is None else value


# ------------------------------------------------------------------------------ mean ± std
@dataclass(frozen=True)
class Summary:
    """Mean and sample std (ddof 1; 0.0 for one value) of the finite values of a cell."""

    mean: float
    std: float
    n: int


def summarise(values: Iterable[float | None]) -> Summary:
    """Summary over seeds; None and NaN (run unfinished, metric not recorded) are left out."""
    vals = np.array(_finite(values), dtype=float)
    if not len(vals):
        return Summary(float("nan"), 0.0, 0)
    return Summary(float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, len(vals))


def format_summary(s: Summary, scale: float = 1.0, digits: int = 1, std_of_one: bool = True) -> str:
    """``mean ± std`` in display units; ``-`` for an empty cell; ``std_of_one=False`` prints a
    single seed's value alone (a 0.0 std there would read as a measured spread)."""
    if s.n == 0 or math.isnan(s.mean):
        return "-"
    if s.n == 1 and not std_of_one:
        return f"{scale * s.mean:.{digits}f}"
    return f"{scale * s.mean:.{digits}f} ± {scale * s.std:.{digits}f}"


# ------------------------------------------------------------------------------ rendering
@dataclass
class Table:
    """A header and body of text cells, written as GitHub Markdown or CSV."""

    header: list[str]
    body: list[list[str]]

    def markdown(self, align_right_from: int = 1) -> str:
        """GitHub Markdown; columns from ``align_right_from`` on are right-aligned (numbers)."""
        seps = ["---" if i < align_right_from else "---:" for i in range(len(self.header))]
        lines = ["| " + " | ".join(self.header) + " |", "|" + "|".join(seps) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.body]
        return "\n".join(lines)

    def csv(self) -> str:
        """RFC 4180 CSV (quoted where needed), header first."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(self.body)
        return buf.getvalue()


# ------------------------------------------------------------------------------ headline rows
#: the columns of a :class:`Row` (names of :data:`METRICS`)
COLUMNS = ("overall", "head", "medium", "tail", "tail_pl_precision", "train_seconds")
#: short titles of the headline tables (the demo's and the benchmark's)
COLUMN_TITLES = {
    "overall": "overall acc", "head": "head", "medium": "medium", "tail": "tail",
    "tail_pl_precision": "tail PL precision", "train_seconds": "train s",
}


@dataclass
class Row:
    """One run's headline numbers (accuracies in [0, 1], NaN when not recorded)."""

    label: str
    preset: str
    seed: int
    overall: float
    head: float
    medium: float
    tail: float
    tail_pl_precision: float  # mean pseudo-label precision over tail classes (NaN if none)
    train_seconds: float
    per_class_acc: list[float]
    group_rule: str
    run_dir: str


def row_from_metrics(label: str, preset: str, seed: int, metrics: Mapping[str, Any], run_dir: Path) -> Row:
    """Headline numbers of the engine's ``final_metrics.json`` (final model, never best-on-test)."""
    return Row(
        label=label, preset=preset, seed=seed,
        **{c: metric_value(metrics, c) for c in COLUMNS},
        per_class_acc=[float(x) for x in metrics.get("per_class_acc", [])],
        group_rule=str((metrics.get("group_rule") or {}).get("text", "")),
        run_dir=str(run_dir),
    )


def _row_cell(value: float, column: str) -> str:
    return format_summary(Summary(value, 0.0, 1), METRICS[column].scale, 1, std_of_one=False)


def _row_table(rows: Sequence[Row]) -> Table:
    return Table(["method"] + [COLUMN_TITLES[c] for c in COLUMNS],
                 [[r.label] + [_row_cell(getattr(r, c), c) for c in COLUMNS] for r in rows])


def markdown_table(rows: Sequence[Row]) -> str:
    """One line per row: accuracies in %, train seconds."""
    return _row_table(rows).markdown()


def rows_csv(rows: Sequence[Row]) -> str:
    """One line per run: preset, seed, method and the headline columns in raw units ([0, 1], s)."""
    body = [[r.preset, str(r.seed), r.label] + [repr(float(getattr(r, c))) for c in COLUMNS] for r in rows]
    return Table(["preset", "seed", "method", *COLUMNS], body).csv()


def rows_to_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Rows as plain dicts (``rows.jsonl``, ``results.json``)."""
    return [asdict(r) for r in rows]


def rows_from_json(data: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Inverse of :func:`rows_to_json`; other keys a benchmark adds to a row (how it ran) are left."""
    names = {f.name for f in fields(Row)}
    return [Row(**{k: v for k, v in d.items() if k in names}) for d in data]


def aggregate(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Mean and std (over seeds) of every column, per (preset, method), in first-seen order."""
    keys = list(dict.fromkeys((r.preset, r.label) for r in rows))
    out = []
    for preset, label in keys:
        group = [r for r in rows if r.preset == preset and r.label == label]
        entry: dict[str, Any] = {"preset": preset, "method": label, "seeds": [r.seed for r in group]}
        for c in COLUMNS:
            s = summarise(getattr(r, c) for r in group)
            entry[c] = {"mean": s.mean, "std": s.std}
        out.append(entry)
    return out


def _entry_cells(entry: Mapping[str, Any]) -> list[str]:
    return [format_summary(Summary(entry[c]["mean"], entry[c]["std"], len(entry["seeds"])),
                           METRICS[c].scale, 1) for c in COLUMNS]


def markdown_aggregate(entries: Sequence[Mapping[str, Any]]) -> str:
    """Mean ± std table, one section per preset."""
    lines: list[str] = []
    for preset in dict.fromkeys(e["preset"] for e in entries):
        body = [[e["method"], str(len(e["seeds"])), *_entry_cells(e)] for e in entries if e["preset"] == preset]
        table = Table(["method", "seeds"] + [COLUMN_TITLES[c] for c in COLUMNS], body)
        lines += [f"### {preset}", "", table.markdown(), ""]
    return "\n".join(lines)


def aggregate_csv(entries: Sequence[Mapping[str, Any]]) -> str:
    """One line per (preset, method): seed count, then mean and std of every column (raw units)."""
    header = ["preset", "method", "seeds"] + [f"{c}_{k}" for c in COLUMNS for k in ("mean", "std")]
    body = [[e["preset"], e["method"], str(len(e["seeds"]))]
            + [repr(float(e[c][k])) for c in COLUMNS for k in ("mean", "std")] for e in entries]
    return Table(header, body).csv()


# ------------------------------------------------------------------------------ any metric
@dataclass(frozen=True)
class RunRecord:
    """A finished run of a grid: its table row label, preset, seed and final metrics."""

    label: str
    preset: str
    seed: int
    metrics: Mapping[str, Any]


def _cell(records: Sequence[RunRecord], label: str, preset: str, metric: str, digits: int) -> str:
    m = METRICS[metric]
    s = summarise(m.read(r.metrics) for r in records if r.label == label and r.preset == preset)
    return format_summary(s, m.scale, digits if m.digits is None else m.digits, std_of_one=False)


def summed_confidence_histogram(records: Sequence[RunRecord], label: str, preset: str) -> dict[str, Any] | None:
    """The pseudo-label confidence histogram of a cell, counts summed over its seeds.

    Why summed, not averaged: the plot shows how many confident pseudo-labels are right or wrong
    at each confidence, and seeds share the bins (the same tau). None when no run recorded one.
    """
    cell = [r.metrics.get("pseudo_labels") or {} for r in records if r.label == label and r.preset == preset]
    hists = [p["confidence_histogram"] for p in cell if p.get("confidence_histogram")]
    if not hists:
        return None
    if any(h["edges"] != hists[0]["edges"] for h in hists):
        raise UlfineError(f"{label} on {preset}: runs binned their confidences differently (another ssl.tau?)")
    return {"edges": hists[0]["edges"], "seeds": len(hists),
            **{k: np.sum([h[k] for h in hists], axis=0).astype(int).tolist() for k in ("correct", "wrong")}}


def table_by_metric(records: Sequence[RunRecord], labels: Sequence[str], preset: str,
                    metrics: Sequence[str], first: str = "run", digits: int = 2) -> Table:
    """Rows = labels, columns = metrics, for one preset; cells mean ± std over seeds."""
    body = [[label] + [_cell(records, label, preset, m, digits) for m in metrics] for label in labels]
    return Table([first] + [METRICS[m].title for m in metrics], body)


def table_by_preset(records: Sequence[RunRecord], labels: Sequence[str], presets: Sequence[str],
                    metric: str, digits: int = 2) -> Table:
    """Rows = labels, columns = presets, cells = one metric (mean ± std over seeds)."""
    body = [[label] + [_cell(records, label, p, metric, digits) for p in presets] for label in labels]
    return Table([METRICS[metric].title, *presets], body)


@dataclass(frozen=True)
class Cell:
    """The runs of one (row, column) of a pivot table and each metric's summary over them."""

    row: str
    column: str
    seeds: tuple[int, ...]
    summaries: tuple[Summary, ...]


def pivot(records: Sequence[RunRecord], row_of: Callable[[RunRecord], str], column_of: Callable[[RunRecord], str],
          metrics: Sequence[str]) -> list[Cell]:
    """Group ``records`` into (row, column) cells (first-seen order) and summarise each of
    ``metrics`` over the cell's runs (mean ± sample std)."""
    keys = list(dict.fromkeys((row_of(r), column_of(r)) for r in records))
    cells = []
    for row, col in keys:
        runs = [r for r in records if row_of(r) == row and column_of(r) == col]
        cells.append(Cell(row, col, tuple(r.seed for r in runs),
                          tuple(summarise(METRICS[m].read(r.metrics) for r in runs) for m in metrics)))
    return cells


def pivot_table(cells: Sequence[Cell], metrics: Sequence[str], corner: str = "", digits: int = 1) -> Table:
    """Rows x columns; a cell shows its metrics joined by `` / `` (mean ± std over seeds, the value
    alone for one run, ``-`` for no run)."""
    rows, cols = list(dict.fromkeys(c.row for c in cells)), list(dict.fromkeys(c.column for c in cells))
    index = {(c.row, c.column): c for c in cells}

    def text(cell: Cell | None) -> str:
        if cell is None:
            return "-"
        return " / ".join(format_summary(s, METRICS[m].scale, digits, std_of_one=False)
                          for s, m in zip(cell.summaries, metrics))

    return Table([corner, *cols], [[r] + [text(index.get((r, c))) for c in cols] for r in rows])


def pivot_csv(cells: Sequence[Cell], metrics: Sequence[str]) -> str:
    """One line per cell: row, column, runs, seeds, then each metric's mean and std (raw units)."""
    header = ["row", "column", "runs", "seeds"] + [f"{m}_{k}" for m in metrics for k in ("mean", "std")]
    body = [[c.row, c.column, str(len(c.seeds)), " ".join(map(str, c.seeds))]
            + [repr(float(getattr(s, k))) for s in c.summaries for k in ("mean", "std")] for c in cells]
    return Table(header, body).csv()


def records_csv(records: Sequence[RunRecord], metrics: Sequence[str] = tuple(METRICS)) -> str:
    """One line per finished run: preset, label, seed, then ``metrics`` in display units."""
    body = [[r.preset, r.label, str(r.seed)]
            + [repr(METRICS[m].scale * metric_value(r.metrics, m)) for m in metrics] for r in records]
    return Table(["preset", "label", "seed", *metrics], body).csv()


__all__ = [
    "COLUMNS", "COLUMN_TITLES", "METRICS", "METRICS_FILE", "Cell", "Metric", "Row", "RunRecord", "Summary",
    "Table", "aggregate", "aggregate_csv", "dotted", "format_summary", "markdown_aggregate",
    "markdown_table", "metric_value", "pivot", "pivot_csv", "pivot_table", "records_csv", "row_from_metrics",
    "rows_csv", "rows_from_json", "rows_to_json", "summarise", "summed_confidence_histogram", "table_by_metric",
    "table_by_preset",
    "tail_pl_precision",
]
