"""The reports' plots: group accuracy bars and per-class accuracy lines (the demo), confidence
histograms of pseudo-labels (the finetune analysis); matplotlib, Agg.

Why apart from the tables: plotting needs matplotlib (imported only when a plot is drawn), the
tables do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .results import Row


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_accuracy_plot(fig: Any, ax: Any, title: str, path: Path, top: float) -> Path:
    """Shared finish of the report's accuracy plots: labels, legend, PNG, close."""
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, top)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def plot_groups(rows: Sequence[Row], path: Path, title: str) -> Path:
    """Grouped bars: overall / head / medium / tail accuracy per method."""
    plt = pyplot()
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
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for r in rows:
        ax.plot(np.arange(len(r.per_class_acc)), [100 * a for a in r.per_class_acc], marker="o", ms=3, label=r.label)
    ax.set_xticks(np.arange(len(class_names)), class_names, rotation=70, fontsize=7)
    return _save_accuracy_plot(fig, ax, title, path, top=102)


def _histogram_panel(ax: Any, label: str, hist: dict[str, Any]) -> None:
    """One panel: correct and wrong confident pseudo-labels side by side in each confidence bin."""
    edges = np.asarray(hist["edges"], dtype=float)
    width = np.diff(edges)
    centres = edges[:-1] + width / 2
    correct, wrong = np.asarray(hist["correct"]), np.asarray(hist["wrong"])
    ax.bar(centres - width / 4, correct, width / 2, color="tab:green", label="correct")
    ax.bar(centres + width / 4, wrong, width / 2, color="tab:red", label="false")
    ax.set_xticks(edges[::2], [f"{e:.2f}" for e in edges[::2]], fontsize=8)
    seeds = hist.get("seeds", 1)
    ax.set_title(f"{label} ({seeds} seed{'s' * (seeds != 1)})\n"
                 f"{wrong.sum()} false of {correct.sum() + wrong.sum()} confident", fontsize=9)


def plot_confidence_histograms(panels: Sequence[tuple[str, dict[str, Any]]], path: Path, title: str) -> Path:
    """Confidence histograms of confident pseudo-labels, correct vs false, one panel per row label.

    Why: the paper's finetune-mode findings are about *how confident* the false pseudo-labels are
    (LFT's over-confidence), which a mean alone hides. ``panels`` are (label, histogram) pairs with
    histograms as :func:`ulfine.apps.results.summed_confidence_histogram` returns them.
    """
    plt = pyplot()
    ncols = min(4, max(1, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.2 * nrows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_visible(False)
            continue
        label, hist = panels[i]
        _histogram_panel(ax, label, hist)
        if i % ncols == 0:
            ax.set_ylabel("pseudo-labels (summed over the panel's seeds)", fontsize=8)
        if i >= len(panels) - ncols:
            ax.set_xlabel("max softmax confidence", fontsize=8)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
