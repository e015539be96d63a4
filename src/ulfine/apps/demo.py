"""``ulfine demo`` (what ``make demo`` runs): the paper's comparison on the micro world, offline.

Why: a new user's first command should run the real pipeline (data split, shipped foundation
model, engine, methods, evaluation) and show something meaningful in minutes on a laptop CPU.
It loads the shipped tiny CLIP (``model.pretrained=micro``), runs zero-shot, LP/LFT/FFT +
FixMatch and ULFine on ``microworld_n100_m200_g20_consistent`` with the engine, prints one table
and writes a report folder (Markdown, JSON and CSV tables, two PNG plots, every run folder).
Running it again into the same folder replaces the previous demo's runs.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import load_config
from ..data import load_split
from .compare import DEMO_METHODS, MethodSpec, run_dir_for, run_method
from .plots import plot_groups, plot_per_class
from .results import Row, markdown_aggregate, markdown_table, rows_csv, rows_to_json

DEMO_PRESET = "microworld_n100_m200_g20_consistent"
#: the demo trains 3 of the preset's 5 epochs so that five methods fit in a few minutes on 2 cores;
#: it evaluates the final model only (its table shows nothing else), gathers images in one worker
#: process and augments the gathered batch in the training process (``data.augment_on=device``:
#: the same views as the host path, bit for bit on CPU, in less time; docs/performance.md)
DEMO_OVERRIDES: tuple[str, ...] = (
    "train.epochs=3", "eval.every_epochs=3", "data.num_workers=1", "data.augment_on=device",
)
#: the accuracy benchmark's table on the same world (report seeds, full budget), written by
#: ``python benchmarks/accuracy.py ... --publish``; the demo's report shows it beside its own run
BENCHMARK_FILE = Path(__file__).resolve().parents[1] / "assets" / "microworld_benchmark.json"
#: what marks a folder as a run of the engine (so the demo only ever deletes runs)
_RUN_MARKERS = ("config.yaml", "final_metrics.json", "checkpoint")


@dataclass
class DemoResult:
    """The demo's rows and where its report is."""

    rows: list[Row]
    report_dir: Path
    seconds: float


def clear_previous_runs(run_dirs: Sequence[Path]) -> list[Path]:
    """Delete those of ``run_dirs`` that hold an engine run; the deleted folders.

    Why: the demo writes to fixed run folders and the engine refuses a folder that already
    holds a run, so a second ``make demo`` must first remove the first one's. Only the demo's
    own folder names are touched, and only when they look like a run.
    """
    removed = []
    for run_dir in map(Path, run_dirs):
        if run_dir.is_dir() and any((run_dir / m).exists() for m in _RUN_MARKERS):
            shutil.rmtree(run_dir)
            removed.append(run_dir)
    return removed


def trained_class_names(run_dir: Path | str) -> list[str]:
    """Class names, head to tail, of the split a finished run trained on (its ``split.json``).

    Why not the dataset registry: ``data.class_names`` may rename classes and some sources only
    know their names once read; the split the engine drew is what the accuracies refer to.
    """
    return list(load_split(Path(run_dir))["class_names"])


def _print_table(rows: Sequence[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("method")
    for col in ("overall", "head", "medium", "tail", "tail PL prec.", "train s"):
        table.add_column(col, justify="right")
    for r in rows:
        pct = lambda v: "-" if v != v else f"{100 * v:.1f}"
        table.add_row(r.label, pct(r.overall), pct(r.head), pct(r.medium), pct(r.tail),
                      pct(r.tail_pl_precision), f"{r.train_seconds:.0f}")
    Console().print(table)


def _run_all(methods: Sequence[MethodSpec], preset: str, seed: int, runs_dir: Path,
             overrides: Sequence[str], progress: bool) -> list[Row]:
    """Every method in turn, one progress line each."""
    rows: list[Row] = []
    for i, spec in enumerate(methods, 1):
        print(f"[{i}/{len(methods)}] {spec.label}  ({' '.join(spec.overrides)})", flush=True)
        t0 = time.perf_counter()
        # no per-run report: the demo writes one for all (``ulfine report RUN_DIR`` makes a run's)
        rows.append(run_method(spec, preset, seed, runs_dir, overrides, progress, report=False))
        print(f"      overall {100 * rows[-1].overall:.1f}%  tail {100 * rows[-1].tail:.1f}%  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def benchmark_section(path: Path = BENCHMARK_FILE) -> str:
    """Markdown: the published benchmark (mean ± std over its report seeds) with its command.

    Why in the demo's report: one seed at a shortened budget is a demonstration, not a result;
    the reader should see, in the same place, what the full budget gives over several seeds.
    Empty when no benchmark has been published.
    """
    if not path.is_file():
        return ""
    bench = json.loads(path.read_text())
    budget = bench["budget"]  # one string, or preset -> budget (one per label regime)
    if isinstance(budget, dict) and len(set(budget.values())) == 1:
        budget = f"{next(iter(budget.values()))}, every preset"
    elif isinstance(budget, dict):
        budget = ", ".join(f"{preset}: {b}" for preset, b in budget.items())
    return "\n".join([
        f"## The accuracy benchmark on the same world (seeds {', '.join(map(str, bench['seeds']))}, full budget)",
        "", f"`{bench['command']}` ({budget}; {bench['machine']}; {bench['date']}). "
        "Test accuracy (%) of the final model, mean ± std over the seeds; docs/microworld.md "
        "section 7 has the study behind every choice.", "",
        *([f"> {bench['note']}", ""] if bench.get("note") else []),
        markdown_aggregate(bench["results"]),
    ])


def _write_report(out: Path, rows: list[Row], meta: dict, class_names: list[str], about: str) -> str:
    """results.json, results.csv, the two plots and report.md; returns the table's title."""
    preset, seed = meta["preset"], meta["seed"]
    title = f"{preset}, seed {seed}: test accuracy (%) of the final model"
    group_rule = rows[0].group_rule if rows else ""
    (out / "results.json").write_text(json.dumps({
        **meta, "class_names": class_names, "group_rule": group_rule, "rows": rows_to_json(rows),
    }, indent=1) + "\n")
    (out / "results.csv").write_text(rows_csv(rows))
    plot_groups(rows, out / "group_accuracy.png", title)
    plot_per_class(rows, class_names, out / "per_class_accuracy.png", f"{preset}: per-class accuracy (head -> tail)")
    (out / "report.md").write_text("\n".join([
        f"# ulfine demo: {preset}", "", f"{about}; total {meta['seconds']:.0f} s.", "",
        markdown_table(rows), "",
        f"Groups: {group_rule}. Accuracies are of the final model on the balanced "
        "test set (never a best-on-test pick). *tail PL precision*: mean over tail classes of the "
        "precision of confident pseudo-labels on the unlabeled set (ground truth read for this "
        "diagnostic only). Runs are in `runs/`; tables: `results.json`, `results.csv`; plots: "
        "`group_accuracy.png`, `per_class_accuracy.png`.",
        "",
        benchmark_section(),
    ]))
    return title


def run_demo(
    out_dir: Path | str = "reports/demo",
    preset: str = DEMO_PRESET,
    seed: int = 0,
    methods: Sequence[MethodSpec] = DEMO_METHODS,
    overrides: Sequence[str] = (),
    progress: bool = True,
    quick: bool = False,
) -> DemoResult:
    """Run ``methods`` on ``preset`` through ``ulfine.engine.train`` and write a report.

    ``overrides`` (``key=value``) apply to every run after :data:`DEMO_OVERRIDES`, e.g.
    ``["train.epochs=5"]`` for the benchmark's full budget; ``quick`` is a smoke run (1 epoch of
    10 steps). A previous demo's runs under ``out_dir/runs`` are replaced. Returns the rows; the
    report is ``out_dir/report.md`` (+ ``results.json``, ``results.csv``, PNG plots).
    """
    overrides = [*DEMO_OVERRIDES, *overrides]
    if quick:
        overrides = [*overrides, "train.epochs=1", "train.steps_per_epoch=10", "eval.last_k=1"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(preset, list(overrides))
    budget = (f"{cfg.train.epochs} epochs x {cfg.train.steps_per_epoch} steps, "
              f"batch {cfg.train.batch_size} (+{cfg.ssl.mu}x unlabeled)")
    print(f"ulfine demo: {len(methods)} methods on {preset} ({budget}), tiny CLIP "
          f"{cfg.model.arch} with weights '{cfg.model.pretrained}', device {cfg.train.device}")
    removed = clear_previous_runs([run_dir_for(m, preset, seed, out / "runs") for m in methods])
    if removed:
        print(f"ulfine demo: removed {len(removed)} run folder(s) of a previous demo under {out / 'runs'}")
    start = time.perf_counter()
    rows = _run_all(methods, preset, seed, out / "runs", overrides, progress)
    seconds = time.perf_counter() - start
    class_names = trained_class_names(rows[0].run_dir) if rows else []
    meta = {"preset": preset, "seed": seed, "overrides": list(overrides), "seconds": round(seconds, 1)}
    about = (f"Tiny CLIP `{cfg.model.arch}` (`model.pretrained={cfg.model.pretrained}`), {budget}, "
             f"seed {seed}, device {cfg.train.device}")
    title = _write_report(out, rows, meta, class_names, about)
    _print_table(rows, title)
    print(f"report: {out / 'report.md'}  (total {seconds:.0f} s)")
    return DemoResult(rows, out, seconds)


__all__ = ["BENCHMARK_FILE", "DEMO_OVERRIDES", "DEMO_PRESET", "DemoResult", "benchmark_section",
           "clear_previous_runs", "run_demo", "trained_class_names"]
