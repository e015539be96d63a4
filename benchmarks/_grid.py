"""The resumable grid of engine runs of the accuracy benchmarks (benchmarks/fashion_mnist.py; the
same loop in benchmarks/accuracy.py is to move here): command-line options, job planning, the
process pool that appends each finished run to ``OUT/rows.jsonl`` at once, and the machine line of
a published table.

Why one module: both benchmarks ask the same thing of the engine (method x preset x seed through
``ulfine.apps.compare.run_method``), and a killed grid must keep what it has and a re-run must
skip it, the same way in both; only the rows they keep and the tables they print differ.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROWS_FILE = "rows.jsonl"


@dataclass(frozen=True)
class Job:
    """One run of a grid: a method label (a MethodSpec's) on a preset with a seed."""

    label: str
    preset: str
    seed: int


def add_grid_arguments(ap: argparse.ArgumentParser, seeds: Sequence[int], out: str, publish_note: str = "") -> None:
    """The options every grid benchmark takes (seeds, methods, out, pool, aggregation, publish)."""
    ap.add_argument("--seeds", nargs="+", type=int, default=list(seeds),
                    help=f"seeds (default {' '.join(map(str, seeds))})")
    ap.add_argument("--methods", nargs="+", default=None, help="method labels (default: all); see --list")
    ap.add_argument("--list", action="store_true", help="list the method labels and exit")
    ap.add_argument("--out", default=out, help=f"results folder (default {out})")
    ap.add_argument("--workers", type=int, default=1, help="parallel runs (processes)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / workers)")
    ap.add_argument("--aggregate-only", action="store_true", help=f"only rebuild the tables from {ROWS_FILE}")
    ap.add_argument("--publish", metavar="JSON", default=None,
                    help="also write the mean ± std table with the command, seeds and machine to JSON" + publish_note)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every run")


def threads_per_run(threads: int | None, workers: int) -> int:
    """``--threads``, or the machine's cores shared evenly by the parallel runs."""
    return threads or max(1, (os.cpu_count() or 2) // workers)


def read_rows(rows_file: Path) -> list[dict[str, Any]]:
    """The finished runs so far (one JSON object a line; none when the file is absent)."""
    if not rows_file.is_file():
        return []
    return [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]


def plan(candidates: Iterable[Job], done: Iterable[tuple], key: Callable[[Job], tuple]) -> list[Job]:
    """The candidates whose ``key`` is not among the finished runs' keys, in order."""
    have = set(done)
    return [job for job in candidates if key(job) not in have]


def run_grid(jobs: Sequence[Job], work: Callable[..., dict[str, Any]], args: tuple, rows_file: Path,
             workers: int, describe: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """Run ``work(job, *args)`` for every job in ``workers`` processes; append each returned row
    to ``rows_file`` as soon as it finishes (a killed grid keeps it) and return the new rows.

    A failed run is reported and skipped, so one bad run never loses the others.
    """
    new: list[dict[str, Any]] = []
    here = host()  # every row of this grid names the machine that made it
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(work, job, *args): job for job in jobs}
        for i, fut in enumerate(as_completed(futures), 1):
            job = futures[fut]
            try:
                row = fut.result()
            except Exception as exc:  # keep going: one failed run must not lose the others
                print(f"[{i}/{len(jobs)}] FAILED {job.preset} {job.label} seed {job.seed}: "
                      f"{type(exc).__name__}: {exc}", flush=True)
                continue
            row = {**row, "host": here}
            with rows_file.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            new.append(row)
            print(f"[{i}/{len(jobs)}] {job.preset} {job.label} seed {job.seed}: {describe(row)} "
                  f"({time.perf_counter() - start:.0f} s elapsed)", flush=True)
    return new


def host() -> str:
    """This machine: CPU model, the kernels torch picks for it, cores and torch version.

    Why the kernels: two VMs that both say "AMD EPYC" can differ in AVX-512, and then in speed
    (2x here) and in the rounding of 2,000 SGD steps, so a row must say which one made it.
    """
    import platform

    import torch
    from _common import cpu_model

    kernels = torch.backends.cpu.get_cpu_capability()
    cpu = f"{platform.machine()} CPU ({cpu_model()}, torch kernels {kernels})"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def how_runs_ran(rows: Sequence[dict[str, Any]]) -> str:
    """The machine line of a table: per host the rows name (``run_grid`` stamps each row with
    its ``host``), how many of its runs ran how (each row records its ``workers`` and
    ``threads``), so a table rebuilt with ``--aggregate-only`` states the runs' machines and
    settings, not the rebuild call's. Rows of older grids say "host not recorded"."""
    if not rows:
        return f"{host()}; no runs yet"
    by_host: dict[str | None, list[dict[str, Any]]] = {}
    for d in rows:
        by_host.setdefault(d.get("host"), []).append(d)
    return " | ".join(f"{h or 'host not recorded'}: {_ways(rs)}" for h, rs in by_host.items())


def _ways(rows: Sequence[dict[str, Any]]) -> str:
    """How many runs ran how many at a time with how many threads, most common first."""
    ways = Counter((d.get("workers"), d.get("threads")) for d in rows)
    return "; ".join(f"{n} run(s) {w} at a time x {t} thread(s)" if w else f"{n} run(s) without a record of it"
                     for (w, t), n in sorted(ways.items(), key=lambda kv: -kv[1]))


def shown_command(script: str, argv: Sequence[str], publish: str | None) -> str:
    """The command line that made a table, without its own ``--publish`` option and without
    ``--aggregate-only`` (the table's rows came from runs the same command makes)."""
    shown = [a for a in argv if not a.startswith("--publish") and a not in (publish, "--aggregate-only")]
    return shlex.join(["python", script, *shown])


__all__ = ["Job", "ROWS_FILE", "add_grid_arguments", "host", "how_runs_ran", "plan", "read_rows",
           "run_grid", "shown_command", "threads_per_run"]
