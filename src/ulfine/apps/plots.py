"""The demo's two plots: group accuracy bars and per-class accuracy lines (matplotlib, Agg).

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
