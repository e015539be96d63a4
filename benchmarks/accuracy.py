"""Accuracy benchmark on the micro world: every method x 3 seeds x 3 unlabeled settings x 2 label regimes.

Why: an end-to-end accuracy signal that runs offline on a laptop CPU, with mean and std over
seeds, so that a change to a method or to the engine shows up as a number, not an anecdote.
The calibrated micro world, each strategy's learning rate and every method's options were fixed
on the validation split and the development seeds 0, 1, 2 (scripts/reproduce/microworld_study.py,
docs/microworld.md section 7); this benchmark reports the final model on seeds 3, 4, 5, and
nothing is chosen here.

    python benchmarks/accuracy.py                      # everything (15 methods x seeds 3 4 5 x 3 settings x 2 regimes)
    python benchmarks/accuracy.py --settings consistent --regimes n25 --workers 2

The two label regimes (docs/microworld.md 0): ``n100`` (N1=100, 2 unlabeled images per labeled
one) and ``n25`` (N1=25, 8 per labeled one), both M1=200 and gamma 20; each preset carries its
benchmark budget.

Each finished run is appended to ``OUT/rows.jsonl`` at once (a killed benchmark keeps what it
has, a re-run skips finished runs and continues a run killed after a checkpoint); the tables
(built by ``ulfine.apps.results``) are ``OUT/accuracy.md``, ``OUT/accuracy.csv`` and
``OUT/accuracy.json`` (default OUT: benchmarks/results/accuracy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _grid import Job, add_grid_arguments, how_runs_ran, plan, read_rows, run_grid, shown_command, threads_per_run

SETTINGS = ("consistent", "uniform", "reversed")
REGIMES = {"n100": 100, "n25": 25}


def preset_name(regime: str, setting: str) -> str:
    """The micro-world preset of one label regime and unlabeled setting."""
    return f"microworld_n{REGIMES[regime]}_m200_g20_{setting}"


def _run_one(job: Job, runs_dir: str, overrides: list[str], threads: int, workers: int) -> dict:
    """One engine run in a worker process (own torch thread count, no progress bars); its row also
    records how it ran (runs side by side, threads) for the published table's machine line."""
    import torch

    torch.set_num_threads(threads)
    from ulfine.apps.compare import BENCHMARK_METHODS, run_method
    from ulfine.apps.results import rows_to_json

    spec = next(m for m in BENCHMARK_METHODS if m.label == job.label)
    row = rows_to_json([run_method(spec, job.preset, job.seed, Path(runs_dir), overrides, progress=False)])[0]
    return {**row, "workers": workers, "threads": threads}


def _describe(row: dict) -> str:
    return f"overall {100 * row['overall']:.1f} tail {100 * row['tail']:.1f} ({row['train_seconds']:.0f} s train)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    ap.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES))
    add_grid_arguments(ap, seeds=[3, 4, 5], out="benchmarks/results/accuracy",
                       publish_note=" (the demo's report shows src/ulfine/assets/microworld_benchmark.json)")
    ap.add_argument("--note", default=None, help="with --publish: a line the demo's report shows above the "
                    "table (what it covers, what it does not)")
    args = ap.parse_args(argv)
    # late imports: ulfine (torch, the engine) loads after the arguments parse, so --help is fast
    from ulfine.apps.compare import BENCHMARK_METHODS
    from ulfine.apps.results import aggregate, aggregate_csv, markdown_aggregate, rows_from_json

    if args.list:
        print("\n".join(m.label for m in BENCHMARK_METHODS))
        return 0
    args.threads = threads_per_run(args.threads, args.workers)
    methods = [m for m in BENCHMARK_METHODS if args.methods is None or m.label in args.methods]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    done = read_rows(rows_file)
    presets = [preset_name(r, s) for r in args.regimes for s in args.settings]
    candidates = [] if args.aggregate_only else [
        Job(m.label, p, seed) for p in presets for seed in args.seeds for m in methods]
    jobs = plan(candidates, ((d["preset"], d["label"], d["seed"]) for d in done),
                key=lambda j: (j.preset, j.label, j.seed))
    print(f"accuracy benchmark: {len(jobs)} runs to do ({len(done)} already in {rows_file}), "
          f"{args.workers} worker(s) x {args.threads} thread(s)", flush=True)
    done += run_grid(jobs, _run_one, (str(out / "runs"), args.overrides, args.threads, args.workers), rows_file,
                     args.workers, _describe)
    rows = [r for r in rows_from_json(done) if r.preset in presets]
    order = {m.label: i for i, m in enumerate(BENCHMARK_METHODS)}
    rows.sort(key=lambda r: (presets.index(r.preset), order.get(r.label, 99), r.seed))
    entries = aggregate(rows)
    (out / "accuracy.json").write_text(json.dumps({"overrides": args.overrides, "results": entries}, indent=1) + "\n")
    (out / "accuracy.csv").write_text(aggregate_csv(entries))
    md = ("# Micro-world accuracy benchmark\n\nTest accuracy (%) of the final model, mean ± std over "
          "seeds; tail PL precision = mean precision of confident pseudo-labels over tail classes; "
          f"groups: {rows[0].group_rule if rows else ''}.\n\n" + markdown_aggregate(entries))
    (out / "accuracy.md").write_text(md)
    print(md)
    if args.publish:
        publish(Path(args.publish), entries, args, argv if argv is not None else sys.argv[1:], presets,
                [d for d in done if d["preset"] in presets])
    return 0


def publish(path: Path, entries: list[dict], args: argparse.Namespace, argv: list[str],
            presets: list[str], runs: list[dict]) -> None:
    """The benchmark's table as the demo shows it: the results with how they were made (the
    machine line from how ``runs``, the table's rows, ran, not from this call's options)."""
    from ulfine.config import load_config

    budgets = {}
    for name in presets:
        train = load_config(name, list(args.overrides)).train
        budgets[name] = f"{train.epochs} epochs x {train.steps_per_epoch} steps"
    record = {
        "command": shown_command("benchmarks/accuracy.py", [a for a in argv if a not in ("--note", args.note)],
                                 args.publish),
        "seeds": args.seeds, "settings": args.settings, "regimes": args.regimes, "presets": presets,
        "methods": list(dict.fromkeys(e["method"] for e in entries)),
        "overrides": args.overrides, "budget": budgets,
        "machine": how_runs_ran(runs),
        "date": time.strftime("%Y-%m-%d"),
        "results": entries,
        **({"note": args.note} if args.note else {}),
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"published {path}")


if __name__ == "__main__":
    sys.exit(main())
