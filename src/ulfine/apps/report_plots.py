"""The plots of ``ulfine report``: one function per figure, each from plain lists (no run folder).

Every figure orders classes head to tail (by labeled count, ties by index) and colours them by
group, so the long tail reads left to right (or top to bottom). matplotlib is imported on use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .plots import pyplot

GROUP_COLOURS = {"head": "#4C72B0", "medium": "#DD8452", "tail": "#C44E52"}


@dataclass(frozen=True)
class ClassAxis:
    """Classes in head-to-tail order with their names, labeled counts and groups."""

    order: list[int]  # class indices, head first
    names: list[str]
    counts: list[int]
    groups: list[str]  # group of each class (index = class)

    @classmethod
    def build(cls, names: Sequence[str], counts: Sequence[int],
              group_classes: Mapping[str, Sequence[int]]) -> "ClassAxis":
        groups = ["medium"] * len(names)
        for g, members in group_classes.items():
            for c in members:
                groups[c] = g
        order = sorted(range(len(names)), key=lambda c: (-counts[c], c))
        return cls(order, list(names), [int(c) for c in counts], groups)

    @property
    def k(self) -> int:
        return len(self.order)

    def colours(self) -> list[str]:
        return [GROUP_COLOURS.get(self.groups[c], "#888888") for c in self.order]

    def label(self, ax: Any, axis: str = "x") -> None:
        """Class names as tick labels (rank numbers when there are too many to read)."""
        pos = np.arange(self.k)
        if self.k <= 40:
            names = [self.names[c] for c in self.order]
            size = 8 if self.k <= 20 else 7
            if axis == "x":
                ax.set_xticks(pos, names, rotation=60, ha="right", fontsize=size)
            else:
                ax.set_yticks(pos, names, fontsize=size)
            return
        step = max(1, self.k // 10)
        ticks = pos[::step]
        (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks, [str(int(t) + 1) for t in ticks], fontsize=8)

    def title(self) -> str:
        return "class (head → tail)" if self.k <= 40 else "class rank by labeled count (head → tail)"


def _group_legend(ax: Any, loc: str = "upper right", extra: dict[str, str] | None = None) -> None:
    """Legend of the group colours (plus ``extra`` label -> marker format entries)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(color=c, label=g) for g, c in GROUP_COLOURS.items()]
    handles += [Line2D([], [], color=fmt[0], marker=fmt[1], ls="", label=label) for label, fmt in (extra or {}).items()]
    ax.legend(handles=handles, fontsize=8, loc=loc)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def _width(k: int) -> float:
    return float(min(16.0, max(7.0, 0.32 * k + 3)))


def plot_per_class_accuracy(axis: ClassAxis, accuracy: Sequence[float | None], path: Path, title: str) -> Path:
    """Bars: per-class test accuracy head to tail, coloured by group; line: labeled count."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(_width(axis.k), 4.8))
    acc = [np.nan if accuracy[c] is None else 100 * accuracy[c] for c in axis.order]
    ax.bar(np.arange(axis.k), acc, color=axis.colours())
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel(axis.title())
    axis.label(ax)
    twin = ax.twinx()
    counts = [axis.counts[c] for c in axis.order]
    twin.plot(np.arange(axis.k), counts, color="black", marker="o", ms=3, lw=1.2, label="labeled images")
    if max(counts) > 20 * max(1, min(counts)):
        from matplotlib.ticker import FuncFormatter

        twin.set_yscale("log")
        twin.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        twin.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
    twin.set_ylabel("labeled images (line)")
    twin.set_ylim(bottom=0 if twin.get_yscale() == "linear" else None)
    _group_legend(ax)
    ax.set_title(f"{title}: per-class test accuracy, head → tail")
    return _save(fig, path)


def _heatmap(ax: Any, values: np.ndarray, steps: Sequence[int], title: str) -> Any:
    plt = pyplot()
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=0, vmax=100,
                      interpolation="nearest")
    stride = max(1, len(steps) // 8)
    ax.set_xticks(np.arange(len(steps))[::stride], [str(s) for s in steps][::stride], fontsize=8)
    ax.set_xlabel("optimiser step of the evaluation")
    ax.set_title(title, fontsize=10)
    return image


def plot_pseudo_labels(axis: ClassAxis, steps: Sequence[int], precision: Sequence[Sequence[float | None]],
                       recall: Sequence[Sequence[float | None]], path: Path, title: str) -> Path:
    """Two heatmaps (classes x evaluations): precision of confident pseudo-labels per predicted
    class and recall per true class, in %; grey where undefined (no such pseudo-label / image)."""
    plt = pyplot()
    size = (min(16.0, 7 + 0.5 * len(steps)), max(4.5, 0.22 * axis.k + 2.5))
    fig, axes = plt.subplots(1, 2, figsize=size, sharey=True, layout="constrained")
    image = None
    for ax, series, what in ((axes[0], precision, "precision\nper predicted class"),
                             (axes[1], recall, "recall\nper true class")):
        values = np.array([[np.nan if s[c] is None else 100 * s[c] for s in series] for c in axis.order], dtype=float)
        image = _heatmap(ax, values, steps, f"pseudo-label {what} (%)")
    axis.label(axes[0], "y")
    axes[0].set_ylabel(axis.title())
    fig.colorbar(image, ax=list(axes), label="% (grey: undefined, no such pseudo-label or image)", shrink=0.9)
    fig.suptitle(f"{title}: confident pseudo-labels over training (diagnostics)", fontsize=11)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_reliability(bins: Mapping[str, Sequence[Any]], ece: float, path: Path, title: str) -> Path:
    """Reliability diagram: accuracy against mean confidence per confidence bin (the diagonal is
    perfect calibration), and how many test images fall in each bin."""
    plt = pyplot()
    n = len(bins["count"])
    edges = np.linspace(0, 1, n + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    acc = np.array([np.nan if a is None else a for a in bins["accuracy"]], dtype=float)
    conf = np.array([np.nan if c is None else c for c in bins["confidence"]], dtype=float)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 6.5), height_ratios=[3, 1], sharex=True)
    ax.bar(centres, acc, width=1 / n, edgecolor="black", color="#4C72B0", label="accuracy")
    ax.bar(centres, conf - acc, bottom=acc, width=1 / n, color="#C44E52", alpha=0.35, label="gap to confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{title}: reliability (ECE {100 * ece:.1f}%)")
    hist.bar(centres, bins["count"], width=1 / n, color="gray", edgecolor="black")
    hist.set_xlabel("confidence (max softmax probability)")
    hist.set_ylabel("test images")
    hist.set_xlim(0, 1)
    return _save(fig, path)


def plot_confusion(axis: ClassAxis, matrix: Sequence[Sequence[int]], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (% of each true class), classes head to tail on both axes."""
    plt = pyplot()
    m = np.asarray(matrix, dtype=float)[np.ix_(axis.order, axis.order)]
    rows = m.sum(axis=1, keepdims=True)
    pct = np.divide(100 * m, rows, out=np.zeros_like(m), where=rows > 0)
    side = max(5.0, 0.35 * axis.k + 3)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    if axis.k <= 15:
        for i in range(axis.k):
            for j in range(axis.k):
                ax.text(j, i, f"{pct[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if pct[i, j] > 60 else "black")
    axis.label(ax, "x")
    axis.label(ax, "y")
    ax.set_xlabel("predicted class (head → tail)")
    ax.set_ylabel("true class (head → tail)")
    fig.colorbar(image, ax=ax, label="% of the true class", shrink=0.8)
    ax.set_title(f"{title}: confusion matrix (test set)")
    return _save(fig, path)


def plot_prototype_drift(axis: ClassAxis, steps: Sequence[int], angles: Sequence[Sequence[float]],
                         visual: Sequence[float] | None, path: Path, title: str) -> Path:
    """ULFine's prototype classifier: its angle to the text anchor per class at the end (bars,
    head to tail; dots: the visual prototypes) and every class's angle over training (lines)."""
    plt = pyplot()
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(_width(axis.k) + 5, 4.8), width_ratios=[2, 1.3])
    final = [angles[-1][c] for c in axis.order]
    bars.bar(np.arange(axis.k), final, color=axis.colours())
    if visual is not None:
        bars.plot(np.arange(axis.k), [visual[c] for c in axis.order], "k.", ms=6)
    _group_legend(bars, "upper right", extra={"visual prototype": "k."} if visual is not None else None)
    bars.set_ylim(0, 1.3 * max([*final, *(visual or [])], default=1.0))  # room for the legend
    bars.set_ylabel("angle to the text prototype (degrees)")
    bars.set_xlabel(axis.title())
    axis.label(bars)
    bars.set_title(f"{title}: prototype drift at step {steps[-1]}", fontsize=10)
    for c in axis.order:
        lines.plot(steps, [a[c] for a in angles], color=GROUP_COLOURS.get(axis.groups[c], "gray"), lw=1, alpha=0.7)
    lines.plot(steps, [float(np.mean(a)) for a in angles], color="black", lw=2.2, label="mean over classes")
    lines.set_xlabel("optimiser step of the evaluation")
    lines.set_ylabel("angle (degrees)")
    lines.set_title("per class over training (colour: group)", fontsize=10)
    lines.legend(fontsize=8)
    return _save(fig, path)


__all__ = ["ClassAxis", "plot_confusion", "plot_per_class_accuracy", "plot_prototype_drift", "plot_pseudo_labels",
           "plot_reliability"]
