"""``ulfine report RUN_DIR``: the plots and the page a paper or a practitioner needs from one run.

Written into ``RUN_DIR/report/`` (also at the end of every ``ulfine train``): ``report.md`` with
the metrics table and, as PNGs, per-class accuracy against labeled count (head to tail),
pseudo-label precision and recall per class over training, a reliability diagram, the confusion
matrix (K <= 30) and, for ULFine, the prototype drift from the text anchors.

Why from files only: every number is read from what the engine wrote (``final_metrics.json``,
``metrics.jsonl``, ``split.json``, ``config.yaml``); nothing is recomputed, so a report can be
made anywhere, without the data or the weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import report_plots as rp
from .results import METRICS_FILE
from .run_table import method_label, read_mapping

log = logging.getLogger("ulfine.apps")

REPORT_DIR = "report"


@dataclass
class RunFiles:
    """What the engine wrote into a run folder, read once."""

    run_dir: Path
    config: dict[str, Any]
    final: dict[str, Any]
    history: list[dict[str, Any]]
    split: dict[str, Any]

    @classmethod
    def read(cls, run_dir: Path) -> "RunFiles":
        run_dir = Path(run_dir)
        missing = [n for n in ("config.yaml", METRICS_FILE, "split.json") if not (run_dir / n).is_file()]
        if missing:
            raise DataError(f"{run_dir} is not a finished run (missing {', '.join(missing)}); "
                            "a report needs the files `ulfine train` writes at the end")
        return cls(run_dir, read_mapping(run_dir / "config.yaml"), read_mapping(run_dir / METRICS_FILE),
                   read_history(run_dir / "metrics.jsonl"), read_mapping(run_dir / "split.json"))

    def axis(self) -> rp.ClassAxis:
        rule = (self.final.get("group_rule") or {}).get("classes") or {}
        return rp.ClassAxis.build(self.split["class_names"], self.split["counts"]["labeled"], rule)

    def evaluations(self) -> list[dict[str, Any]]:
        """The evaluations over training; the final one when none was logged."""
        return self.history or [self.final]

    @property
    def title(self) -> str:
        return method_label(self.config)


def read_history(path: Path) -> list[dict[str, Any]]:
    """The evaluations of ``metrics.jsonl``; a damaged line (torn by a kill, edited, not UTF-8) is
    left out with one warning naming the file and the lines, so the rest still makes a report."""
    if not path.is_file():
        return []
    history, bad = [], []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line.decode("utf-8"))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            entry = None
        if isinstance(entry, dict):
            history.append(entry)
        else:
            bad.append(number)
    if bad:
        log.warning("%s: left out %d damaged line(s) (line %s)", path, len(bad), ", ".join(map(str, bad[:5])))
    return history


@dataclass
class Report:
    """The files a report wrote, and why a plot is missing when it is."""

    folder: Path
    plots: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _per_class(run: RunFiles, path: Path) -> Path | str:
    return rp.plot_per_class_accuracy(run.axis(), run.final["per_class_acc"], path, run.title)


def _pseudo_labels(run: RunFiles, path: Path) -> Path | str:
    evals = [e for e in run.evaluations() if e.get("pseudo_labels")]
    if not evals:
        return "no pseudo-label diagnostics: the unlabeled images have no known labels, or there are none"
    per = [e["pseudo_labels"]["per_class"] for e in evals]
    return rp.plot_pseudo_labels(run.axis(), [e.get("step", 0) for e in evals], [p["precision"] for p in per],
                                 [p["recall"] for p in per], path, run.title)


def _reliability(run: RunFiles, path: Path) -> Path | str:
    if not run.final.get("reliability"):
        return "no reliability bins in final_metrics.json (a run of an older ulfine)"
    return rp.plot_reliability(run.final["reliability"], run.final["ece"], path, run.title)


def _confusion(run: RunFiles, path: Path) -> Path | str:
    if not run.final.get("confusion_matrix"):
        return "confusion matrix recorded only for K <= 30 classes"
    return rp.plot_confusion(run.axis(), run.final["confusion_matrix"], path, run.title)


def _drift(run: RunFiles, path: Path) -> Path | str:
    evals = [e for e in run.evaluations() if (e.get("method_diagnostics") or {}).get("angle_deg")]
    if not evals:
        return "prototype drift exists only for ULFine"
    diag = [e["method_diagnostics"] for e in evals]
    return rp.plot_prototype_drift(run.axis(), [e.get("step", 0) for e in evals], [d["angle_deg"] for d in diag],
                                   diag[-1].get("visual_angle_deg"), path, run.title)


#: file name -> (caption, how to draw it from a run)
PLOTS: dict[str, tuple[str, Callable[[RunFiles, Path], Path | str]]] = {
    "per_class_accuracy.png": ("Per-class test accuracy of the final model, classes head to tail (bars, coloured "
                               "by group), with the labeled images per class (line).", _per_class),
    "pseudo_labels.png": ("Precision (per predicted class) and recall (per true class) of the confident "
                          "pseudo-labels at each evaluation; diagnostics from the unlabeled ground truth, "
                          "which training never reads.", _pseudo_labels),
    "reliability.png": ("Reliability diagram of the final model on the test set: accuracy against confidence "
                        "per bin; bars below the diagonal are over-confident.", _reliability),
    "confusion.png": ("Confusion matrix of the final model (% of each true class), head to tail.", _confusion),
    "prototype_drift.png": ("ULFine: angle between each class's fitted prototype and its text prototype at the "
                            "end (bars; dots: the visual prototypes) and over training.", _drift),
}


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}"


def metrics_table(final: dict[str, Any]) -> list[str]:
    """The final model's and the last-k mean's numbers, in % (Markdown)."""
    g, last = final.get("group_acc") or {}, final.get("last_k_mean") or {}
    lg, pl = last.get("group_acc") or {}, final.get("pseudo_labels") or {}
    return [
        "| | overall | balanced | head | medium | tail | ECE | PL precision | PL recall | mask rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| final model | {_pct(final.get('overall_acc'))} | {_pct(final.get('balanced_acc'))} | {_pct(g.get('head'))} "
        f"| {_pct(g.get('medium'))} | {_pct(g.get('tail'))} | {_pct(final.get('ece'))} | {_pct(pl.get('precision'))} "
        f"| {_pct(pl.get('recall'))} | {_pct(pl.get('mask_rate'))} |",
        f"| mean of last {last.get('k', '-')} | {_pct(last.get('overall_acc'))} | {_pct(last.get('balanced_acc'))} "
        f"| {_pct(lg.get('head'))} | {_pct(lg.get('medium'))} | {_pct(lg.get('tail'))} | | | | |",
    ]


def _page(run: RunFiles, report: Report) -> str:
    c, f = run.config, run.final
    model = c.get("model") or {}
    lines = [
        f"# Report: {run.run_dir.name}", "",
        f"`{c.get('method')}` with `finetune={c.get('finetune')}` on `{model.get('arch')}` "
        f"(`{model.get('pretrained')}`), dataset `{(c.get('data') or {}).get('dataset')}` "
        f"(preset `{c.get('preset')}`), seed {c.get('seed')}; {f.get('steps', '?')} optimiser steps, "
        f"{f.get('train_seconds', 0):.0f} s of training; {f.get('num_images', '?')} test images.", "",
        "## Test metrics (%)", "", *metrics_table(f), "",
        f"Groups: {(f.get('group_rule') or {}).get('text', '-')}. The final model's numbers, never a best-on-test "
        "pick; pseudo-label columns are diagnostics on the unlabeled set.", "",
    ]
    if f.get("branch_acc"):
        lines += ["Accuracy of each prediction branch (%): " + ", ".join(
            f"{k} {_pct(v)}" for k, v in f["branch_acc"].items()) + ".", ""]
    for name, (caption, _) in PLOTS.items():
        if name in report.plots:
            lines += [f"![{name}]({name})", "", caption, ""]
        else:
            lines += [f"*{name}: not drawn ({report.skipped[name]}).*", ""]
    return "\n".join(lines)


def write_report(run_dir: Path | str, out_dir: Path | None = None) -> Report:
    """Draw every plot that applies to ``run_dir`` and write ``report.md`` (default
    ``RUN_DIR/report/``); returns what was written and what was skipped, and why."""
    run = RunFiles.read(Path(run_dir))
    report = Report(Path(out_dir) if out_dir is not None else run.run_dir / REPORT_DIR)
    report.folder.mkdir(parents=True, exist_ok=True)
    for name, (_, draw) in PLOTS.items():
        result = draw(run, report.folder / name)
        if isinstance(result, Path):
            report.plots[name] = result
        else:
            report.skipped[name] = result
    (report.folder / "report.md").write_text(_page(run, report))
    return report


__all__ = ["PLOTS", "REPORT_DIR", "Report", "RunFiles", "metrics_table", "write_report"]
