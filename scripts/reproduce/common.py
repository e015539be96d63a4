"""Shared plumbing of the reproduction scripts: a grid of ``ulfine train`` runs, executed one
after the other (or only printed with ``--dry-run``), then final_metrics.json files collected
into Markdown tables.

Each run writes to ``<runs-dir>/<table>/<preset>/<row slug>/seed<seed>``; a run whose folder
already holds final_metrics.json is skipped, so a grid can be interrupted and re-launched.
Numbers come from the engine's final_metrics.json: the final model (``overall_acc``,
``group_acc``) and the mean of the last k evaluations (``last_k_mean``), never a best-on-test.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS_FILE = "final_metrics.json"


@dataclass(frozen=True)
class Run:
    """One ``ulfine train`` invocation of a grid: a table row (``label``) on one preset and seed."""

    table: str
    label: str
    preset: str
    method: str
    seed: int
    overrides: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """Folder-safe name of the row."""
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", self.label).strip("_") or self.method

    def run_dir(self, runs_dir: Path) -> Path:
        return runs_dir / self.table / self.preset / self.slug / f"seed{self.seed}"

    def command(self, runs_dir: Path, extra: Sequence[str] = ()) -> list[str]:
        """The command line (``extra`` overrides come last, so they win)."""
        return [
            "ulfine", "train", self.preset, f"method={self.method}", f"seed={self.seed}",
            *self.overrides, *extra, f"output_dir={self.run_dir(runs_dir)}",
        ]


@dataclass
class Grid:
    """Runs of one table plus how to lay them out."""

    table: str
    runs: list[Run] = field(default_factory=list)

    def add(self, label: str, preset: str, method: str, seeds: Iterable[int], *overrides: str) -> None:
        for seed in seeds:
            self.runs.append(Run(self.table, label, preset, method, seed, tuple(overrides)))

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(r.label for r in self.runs))

    @property
    def presets(self) -> list[str]:
        return list(dict.fromkeys(r.preset for r in self.runs))


def base_parser(description: str, *, presets: Sequence[str], seeds: Sequence[int] = (0, 1, 2)) -> argparse.ArgumentParser:
    """Options every reproduction script shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--presets", nargs="+", default=list(presets), help="presets (columns/sections)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(seeds), help="seeds per cell")
    p.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE",
                   help="override added to every run, e.g. --extra model.pretrained=/path/weights.pt "
                        "(repeatable)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/reproduce"), help="where runs go")
    p.add_argument("--out", type=Path, default=None, help="Markdown file (default reports/<table>.md)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--collect-only", action="store_true", help="only build the table from finished runs")
    p.add_argument("--force", action="store_true", help="re-run runs that already finished")
    return p


def _executable(cmd: list[str]) -> list[str]:
    # prefer the `ulfine` next to this interpreter (the project's venv), then PATH
    local = Path(sys.executable).parent / "ulfine"
    exe = str(local) if local.exists() else shutil.which("ulfine")
    if exe is None:
        return [sys.executable, "-c", "from ulfine.cli import main; raise SystemExit(main())", *cmd[1:]]
    return [exe, *cmd[1:]]


def execute(grid: Grid, args: argparse.Namespace) -> int:
    """Print (``--dry-run``) or run every command of the grid; returns the number of failures."""
    failures = 0
    for run in grid.runs:
        cmd = run.command(args.runs_dir, args.extra)
        done = (run.run_dir(args.runs_dir) / METRICS_FILE).is_file()
        if args.dry_run:
            print(shlex.join(cmd) + ("   # done, skipped" if done and not args.force else ""))
            continue
        if args.collect_only or (done and not args.force):
            continue
        print(f"[{grid.table}] {shlex.join(cmd)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(_executable(cmd))
        wall = time.perf_counter() - start
        run_dir = run.run_dir(args.runs_dir)
        if rc != 0:
            failures += 1
            print(f"[{grid.table}] failed (exit {rc}): {run_dir}", file=sys.stderr)
        elif run_dir.is_dir():
            (run_dir / "reproduce_wall_seconds.json").write_text(json.dumps({"wall_seconds": wall}))
    return failures


def load_metrics(run: Run, runs_dir: Path) -> dict[str, Any] | None:
    """The run's final_metrics.json (plus ``wall_seconds`` measured here), or None if unfinished."""
    run_dir = run.run_dir(runs_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    wall = run_dir / "reproduce_wall_seconds.json"
    if wall.is_file():
        metrics["wall_seconds"] = json.loads(wall.read_text())["wall_seconds"]
    return metrics


def get(metrics: dict[str, Any], dotted: str) -> float | None:
    """``metrics['group_acc']['tail']`` as ``get(m, 'group_acc.tail')``; None when absent."""
    node: Any = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else None


# metric name -> (column title, dotted key in final_metrics.json, scale)
METRICS: dict[str, tuple[str, str, float]] = {
    "overall": ("overall acc (%)", "overall_acc", 100.0),
    "overall_last_k": ("overall, mean of last k (%)", "last_k_mean.overall_acc", 100.0),
    "head": ("head acc (%)", "group_acc.head", 100.0),
    "medium": ("medium acc (%)", "group_acc.medium", 100.0),
    "tail": ("tail acc (%)", "group_acc.tail", 100.0),
    "balanced": ("balanced acc (%)", "balanced_acc", 100.0),
    "ece": ("ECE (%)", "ece", 100.0),
    "pl_precision": ("pseudo-label precision (%)", "pseudo_labels.precision", 100.0),
    "pl_recall": ("pseudo-label recall (%)", "pseudo_labels.recall", 100.0),
    "pl_mask_rate": ("mask rate (%)", "pseudo_labels.mask_rate", 100.0),
    "train_minutes": ("train time (min)", "train_seconds", 1 / 60),
    "wall_minutes": ("wall time incl. eval (min)", "wall_seconds", 1 / 60),
    "trainable_params": ("trainable params (M)", "trainable_params", 1e-6),
}


def cell(values: list[float], digits: int = 2) -> str:
    """``mean ± std (n)`` of a cell's seeds; ``-`` when no run finished."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def values(grid: Grid, runs_dir: Path, label: str, preset: str, metric: str) -> list[float]:
    """The metric over the seeds of one (row, preset) cell, scaled for display."""
    _, key, scale = METRICS[metric]
    out = []
    for run in grid.runs:
        if run.label == label and run.preset == preset:
            m = load_metrics(run, runs_dir)
            v = None if m is None else get(m, key)
            if v is not None:
                out.append(v * scale)
    return out


def table_rows_by_preset(grid: Grid, runs_dir: Path, metric: str) -> str:
    """Rows = labels, columns = presets, cells = one metric."""
    header = [METRICS[metric][0]] + grid.presets
    rows = [[label] + [cell(values(grid, runs_dir, label, p, metric)) for p in grid.presets]
            for label in grid.labels]
    return markdown(header, rows)


def table_rows_by_metric(grid: Grid, runs_dir: Path, preset: str, metrics: Sequence[str]) -> str:
    """Rows = labels, columns = metrics, for one preset."""
    header = ["run"] + [METRICS[m][0] for m in metrics]
    rows = [[label] + [cell(values(grid, runs_dir, label, preset, m)) for m in metrics]
            for label in grid.labels]
    return markdown(header, rows)


def per_preset_tables(columns: Sequence[str]) -> Callable[[Grid, Path], str]:
    """A renderer with one ``## preset`` table per preset: rows = labels, columns = metrics."""

    def render(grid: Grid, runs_dir: Path) -> str:
        return "\n\n".join(
            f"## {preset}\n\n" + table_rows_by_metric(grid, runs_dir, preset, columns)
            for preset in grid.presets
        )

    return render


def finish(grid: Grid, args: argparse.Namespace, render: Callable[[Grid, Path], str], title: str) -> int:
    """Run (or print) the grid, then write the Markdown report; exit status for ``main``."""
    failures = execute(grid, args)
    if args.dry_run:
        print(f"# {len(grid.runs)} runs; table -> {args.out or Path('reports') / (grid.table + '.md')}")
        return 0
    done = sum(load_metrics(r, args.runs_dir) is not None for r in grid.runs)
    body = render(grid, args.runs_dir)
    text = (
        f"# {title}\n\n{done}/{len(grid.runs)} runs finished; cells are mean ± std over seeds "
        f"{sorted({r.seed for r in grid.runs})} of the final model (never a best-on-test pick).\n"
        f"Extra overrides: {' '.join(args.extra) or 'none'}. Runs in {args.runs_dir / grid.table}.\n\n"
        f"{body}\n"
    )
    out = args.out or Path("reports") / f"{grid.table}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return 1 if failures else 0
