"""Run several methods on one preset through the real engine and tabulate what they reached.

Why: the demo (one seed, five methods) and the accuracy benchmark (every method, three seeds,
three settings) ask the same question of the same engine; this module is the one place that
turns a method spec into a run (``ulfine.engine.train``) and a run folder into a table row.
Nothing here trains or evaluates by itself: the numbers are the engine's ``final_metrics.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MethodSpec:
    """A row of a comparison: a label and the config overrides that make it."""

    label: str
    overrides: tuple[str, ...]

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.label.lower()).strip("-").replace("--", "-")


#: the demo's comparison: the paper's three ways to use the foundation model, plus ULFine
DEMO_METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("zero-shot", ("method=zeroshot", "finetune=lp")),
    MethodSpec("LP + FixMatch", ("method=fixmatch", "finetune=lp")),
    MethodSpec("LFT + FixMatch", ("method=fixmatch", "finetune=lft")),
    MethodSpec("FFT + FixMatch", ("method=fixmatch", "finetune=fft")),
    MethodSpec("ULFine (LFT)", ("method=ulfine", "finetune=lft")),
)
#: the benchmark adds the supervised and long-tailed baselines (all on LFT, like ULFine)
BENCHMARK_METHODS: tuple[MethodSpec, ...] = DEMO_METHODS[:4] + (
    MethodSpec("LFT supervised", ("method=supervised", "finetune=lft")),
    MethodSpec("LFT + FixMatch-LA", ("method=fixmatch_la", "finetune=lft")),
    MethodSpec("LFT + FineSSL", ("method=finessl", "finetune=lft")),
    DEMO_METHODS[4],
)
COLUMNS = ("overall", "head", "medium", "tail", "tail_pl_precision", "train_seconds")
COLUMN_TITLES = {
    "overall": "overall acc", "head": "head", "medium": "medium", "tail": "tail",
    "tail_pl_precision": "tail PL precision", "train_seconds": "train s",
}


@dataclass
class Row:
    """One run's headline numbers (accuracies in [0, 1])."""

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


def _nanmean(values: Sequence[Any]) -> float:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else float("nan")


def row_from_metrics(label: str, preset: str, seed: int, metrics: dict[str, Any], run_dir: Path) -> Row:
    """Headline numbers of the engine's ``final_metrics.json`` (final model, never best-on-test)."""
    groups = metrics["group_rule"]["classes"]
    pl = metrics.get("pseudo_labels") or {}
    precision = (pl.get("per_class") or {}).get("precision") or []
    tail_pl = _nanmean([precision[k] for k in groups.get("tail", []) if k < len(precision)])
    return Row(
        label=label, preset=preset, seed=seed,
        overall=float(metrics["overall_acc"]),
        head=float(metrics["group_acc"].get("head", float("nan"))),
        medium=float(metrics["group_acc"].get("medium", float("nan"))),
        tail=float(metrics["group_acc"].get("tail", float("nan"))),
        tail_pl_precision=tail_pl,
        train_seconds=float(metrics.get("train_seconds", float("nan"))),
        per_class_acc=[float(x) for x in metrics["per_class_acc"]],
        group_rule=str(metrics["group_rule"].get("text", "")),
        run_dir=str(run_dir),
    )


def run_method(
    spec: MethodSpec,
    preset: str,
    seed: int,
    runs_dir: Path,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> Row:
    """Train (or, for zero-shot, just evaluate) one method with the engine; return its row."""
    from ..config import load_config
    from ..engine import train

    run_dir = Path(runs_dir) / f"{preset}-{spec.slug}-s{seed}"
    cfg = load_config(preset, [
        *spec.overrides, f"seed={seed}", f"output_dir={run_dir}", f"train.progress={str(progress).lower()}",
        *overrides,
    ])
    out = Path(train(cfg))
    metrics = json.loads((out / "final_metrics.json").read_text())
    return row_from_metrics(spec.label, preset, seed, metrics, out)


# --------------------------------------------------------------------------------- tables
def _fmt(value: float, column: str) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.1f}" if column == "train_seconds" else f"{100 * value:.1f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """One line per row: accuracies in %, train seconds."""
    head = "| method | " + " | ".join(COLUMN_TITLES[c] for c in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    lines = [head, sep]
    for r in rows:
        lines.append(f"| {r.label} | " + " | ".join(_fmt(getattr(r, c), c) for c in COLUMNS) + " |")
    return "\n".join(lines)


def aggregate(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Mean and std (over seeds) of every column, per (preset, method), in first-seen order."""
    keys: list[tuple[str, str]] = []
    for r in rows:
        if (r.preset, r.label) not in keys:
            keys.append((r.preset, r.label))
    out = []
    for preset, label in keys:
        group = [r for r in rows if r.preset == preset and r.label == label]
        entry: dict[str, Any] = {"preset": preset, "method": label, "seeds": [r.seed for r in group]}
        for c in COLUMNS:
            vals = np.array([getattr(r, c) for r in group], dtype=float)
            vals = vals[~np.isnan(vals)]
            entry[c] = {
                "mean": float(vals.mean()) if len(vals) else float("nan"),
                "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
            }
        out.append(entry)
    return out


def markdown_aggregate(entries: Sequence[dict[str, Any]]) -> str:
    """Mean ± std table, one section per preset."""
    lines: list[str] = []
    for preset in dict.fromkeys(e["preset"] for e in entries):
        lines += [f"### {preset}", "", "| method | seeds | " + " | ".join(COLUMN_TITLES[c] for c in COLUMNS) + " |",
                  "|---|---:|" + "---:|" * len(COLUMNS)]
        for e in (e for e in entries if e["preset"] == preset):
            cells = []
            for c in COLUMNS:
                m, s = e[c]["mean"], e[c]["std"]
                scale = 1.0 if c == "train_seconds" else 100.0
                cells.append("-" if math.isnan(m) else f"{scale * m:.1f} ± {scale * s:.1f}")
            lines.append(f"| {e['method']} | {len(e['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def rows_to_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def rows_from_json(data: Sequence[dict[str, Any]]) -> list[Row]:
    return [Row(**d) for d in data]


# ---------------------------------------------------------------------------------- plots
def _save_accuracy_plot(fig, ax, title: str, path: Path, top: float) -> Path:  # noqa: ANN001
    """Shared finish of the report's accuracy plots: labels, legend, PNG, close."""
    import matplotlib.pyplot as plt

    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, top)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_groups(rows: Sequence[Row], path: Path, title: str) -> Path:
    """Grouped bars: overall / head / medium / tail accuracy per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ("overall", "head", "medium", "tail")
    x = np.arange(len(cols))
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, r in enumerate(rows):
        ax.bar(x + i * width - 0.4 + width / 2, [100 * getattr(r, c) for c in cols], width, label=r.label)
    ax.set_xticks(x, cols)
    return _save_accuracy_plot(fig, ax, title, path, top=100)


def plot_per_class(rows: Sequence[Row], class_names: Sequence[str], path: Path, title: str) -> Path:
    """Per-class accuracy lines, classes ordered head (most labels) to tail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    for r in rows:
        ax.plot(np.arange(len(r.per_class_acc)), [100 * a for a in r.per_class_acc], marker="o", ms=3, label=r.label)
    ax.set_xticks(np.arange(len(class_names)), class_names, rotation=70, fontsize=7)
    return _save_accuracy_plot(fig, ax, title, path, top=102)
