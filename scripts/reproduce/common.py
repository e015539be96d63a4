"""Shared plumbing of the reproduction scripts: a grid of ``ulfine train`` runs, executed one
after the other (or only printed with ``--dry-run``), then final_metrics.json files collected
into Markdown and CSV tables by ``ulfine.apps.results`` (the project's one results-table module;
this file only knows the grid: where each run lives and which cells it belongs to).

Each run writes to ``<runs-dir>/<table>/<preset>/<row slug>/seed<seed>``; a run whose folder
already holds final_metrics.json is skipped, so a grid can be interrupted and re-launched.
Numbers come from the engine's final_metrics.json: the final model (``overall_acc``,
``group_acc``) and the mean of the last k evaluations (``last_k_mean``), never a best-on-test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulfine.apps.compare import continue_unfinished
from ulfine.apps.results import METRICS_FILE, RunRecord, records_csv, table_by_metric, table_by_preset


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
            "ulfine", "train", "--no-report", self.preset, f"method={self.method}", f"seed={self.seed}",
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


def base_parser(description: str, *, presets: Sequence[str],
                seeds: Sequence[int] = (0, 1, 2)) -> argparse.ArgumentParser:
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
    p.add_argument("--workers", type=int, default=1,
                   help="runs at once; each gets cores/workers torch threads (OMP_NUM_THREADS)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run instead of cores/workers (e.g. 1 beside another study)")
    return p


def _executable(cmd: list[str]) -> list[str]:
    # prefer the `ulfine` next to this interpreter (the project's venv), then PATH
    local = Path(sys.executable).parent / "ulfine"
    exe = str(local) if local.exists() else shutil.which("ulfine")
    if exe is None:
        return [sys.executable, "-c", "from ulfine.cli import main; raise SystemExit(main())", *cmd[1:]]
    return [exe, *cmd[1:]]


def _run_one(run: Run, args: argparse.Namespace, threads: int) -> bool:
    """One command of the grid as a subprocess; whether it succeeded (its wall time is recorded)."""
    # a run killed after a checkpoint (a session's end) is continued, not refused
    cmd = [*run.command(args.runs_dir, args.extra), *continue_unfinished(run.run_dir(args.runs_dir))]
    print(f"[{run.table}] {shlex.join(cmd)}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    rc = subprocess.call(_executable(cmd), env=env, stdout=subprocess.DEVNULL if args.workers > 1 else None)
    wall = time.perf_counter() - start
    run_dir = run.run_dir(args.runs_dir)
    if rc != 0:
        print(f"[{run.table}] failed (exit {rc}): {run_dir}", file=sys.stderr)
        return False
    if run_dir.is_dir():
        (run_dir / "reproduce_wall_seconds.json").write_text(json.dumps({"wall_seconds": wall}))
    return True


def execute(grid: Grid, args: argparse.Namespace) -> int:
    """Print (``--dry-run``) or run every command of the grid, ``--workers`` at a time; returns
    the number of failures."""
    todo = []
    for run in grid.runs:
        done = (run.run_dir(args.runs_dir) / METRICS_FILE).is_file()
        if args.dry_run:
            print(shlex.join(run.command(args.runs_dir, args.extra))
                  + ("   # done, skipped" if done and not args.force else ""))
        elif not args.collect_only and (args.force or not done):
            todo.append(run)
    workers = max(1, getattr(args, "workers", 1))
    threads = getattr(args, "threads", None) or max(1, (os.cpu_count() or 1) // workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok = list(pool.map(lambda r: _run_one(r, args, threads), todo))
    return ok.count(False)


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


def records(grid: Grid, runs_dir: Path) -> list[RunRecord]:
    """The grid's finished runs with their metrics, in grid order (unfinished runs left out)."""
    out = []
    for run in grid.runs:
        metrics = load_metrics(run, runs_dir)
        if metrics is not None:
            out.append(RunRecord(run.label, run.preset, run.seed, metrics))
    return out


def table_rows_by_preset(grid: Grid, runs_dir: Path, metric: str) -> str:
    """Rows = labels, columns = presets, cells = one metric (mean ± std over seeds)."""
    return table_by_preset(records(grid, runs_dir), grid.labels, grid.presets, metric).markdown()


def table_rows_by_metric(grid: Grid, runs_dir: Path, preset: str, metrics: Sequence[str]) -> str:
    """Rows = labels, columns = metrics, for one preset."""
    return table_by_metric(records(grid, runs_dir), grid.labels, preset, metrics).markdown()


def per_preset_tables(columns: Sequence[str]) -> Callable[[Grid, Path], str]:
    """A renderer with one ``## preset`` table per preset: rows = labels, columns = metrics."""

    def render(grid: Grid, runs_dir: Path) -> str:
        done = records(grid, runs_dir)
        return "\n\n".join(
            f"## {preset}\n\n" + table_by_metric(done, grid.labels, preset, columns).markdown()
            for preset in grid.presets
        )

    return render


def finish(grid: Grid, args: argparse.Namespace, render: Callable[[Grid, Path], str], title: str) -> int:
    """Run (or print) the grid, then write the Markdown report and a per-run CSV; exit status."""
    failures = execute(grid, args)
    if args.dry_run:
        print(f"# {len(grid.runs)} runs; table -> {args.out or Path('reports') / (grid.table + '.md')}")
        return 0
    finished = records(grid, args.runs_dir)
    body = render(grid, args.runs_dir)
    text = (
        f"# {title}\n\n{len(finished)}/{len(grid.runs)} runs finished; cells are mean ± std over seeds "
        f"{sorted({r.seed for r in grid.runs})} of the final model (never a best-on-test pick).\n"
        f"Extra overrides: {' '.join(args.extra) or 'none'}. Runs in {args.runs_dir / grid.table}.\n\n"
        f"{body}\n"
    )
    out = args.out or Path("reports") / f"{grid.table}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".csv").write_text(records_csv(finished))
    print(text)
    print(f"wrote {out} and {out.with_suffix('.csv')} (one line per finished run)")
    return 1 if failures else 0
