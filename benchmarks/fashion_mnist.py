"""Real-image check of the scratch side: Fashion-MNIST-LT, WRN-28-2 from random weights, on a CPU.

Why: every other accuracy signal a CPU machine here can make is on synthetic images (the micro
world); Fashion-MNIST is the one real labelled image set it can install (`apt-get install
dataset-fashion-mnist`). This benchmark asks, on real images and with mean and std over seeds,
whether FixMatch beats supervised training and how ACR and the field's LTSSL methods (ABC, DASO,
DebiasPL, SimPro, CDMAD, CPE) compare, all on the same preset (its split, its backbone, its
budget, its optimiser): ``fashion_mnist_n500_m4000_g100_<setting>_scratch`` (docs/method.md 5.4).
Every method trains with the preset's one recipe (FixMatch's SGD, threshold 0.95, batch 16 + 2 x 16,
EMA); each keeps its own options (``acr.*``, ``daso.*``, ...) at the code's published defaults,
except those counted in epochs or steps, which the preset scales to its budget. The peers' own
training recipes (configs/recipes/published.yaml: optimiser, threshold, batch) are not applied, so
a row differs from its peer's in the method alone. Nothing is tuned or chosen here; the tables
report the final (EMA) model on the 10,000 test images.

    python benchmarks/fashion_mnist.py --workers 1 --threads 2          # 9 methods x seeds 0 1 2
    python benchmarks/fashion_mnist.py --methods FixMatch ACR --budget 0.02    # a smoke run

Each finished run is appended to ``OUT/rows.jsonl`` at once (a killed benchmark keeps what it
has, a re-run skips finished runs and continues a run killed after a checkpoint; ``--budget``
runs are kept apart from full ones), naming the host that made it (CPU model and the kernels torch
picks, e.g. AVX2 or AVX512: rows made on different VMs differ in time and in rounding); the
tables (built by ``ulfine.apps.results``) are ``OUT/fashion_mnist.md``, ``.csv`` and ``.json``
(default OUT: benchmarks/results/fashion_mnist).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ulfine.apps.compare import MethodSpec
    from ulfine.apps.results import RunRecord, Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _grid import Job, add_grid_arguments, how_runs_ran, plan, read_rows, run_grid, shown_command, threads_per_run

SETTINGS = ("consistent", "uniform", "reversed")
#: (table label, method registry name), in table order
METHODS: tuple[tuple[str, str], ...] = (
    ("supervised", "supervised"), ("FixMatch", "fixmatch"), ("ACR", "acr"), ("ABC", "abc"),
    ("DASO", "daso"), ("DebiasPL", "debiaspl"), ("SimPro", "simpro"), ("CDMAD", "cdmad"), ("CPE", "cpe"),
)
#: the columns of the mean ± std table (names of ulfine.apps.results.METRICS)
TABLE_METRICS = ("overall", "head", "medium", "tail", "gm_recall", "train_minutes", "wall_minutes")
OUT = "benchmarks/results/fashion_mnist"


def preset_name(setting: str) -> str:
    """The scratch preset of one unlabeled setting."""
    return f"fashion_mnist_n500_m4000_g100_{setting}_scratch"


def method_specs() -> tuple[MethodSpec, ...]:
    """The rows of the table as ``MethodSpec`` (late import: ``--help`` stays fast)."""
    from ulfine.apps.compare import MethodSpec

    return tuple(MethodSpec(label, (f"method={name}",)) for label, name in METHODS)


def job_key(preset: str, label: str, seed: int, budget: float | None) -> tuple[str, str, int, float | None]:
    """What makes a run unique in ``rows.jsonl``: a ``--budget`` run never stands in for a full one."""
    return (preset, label, seed, budget)


def plan_jobs(settings: Sequence[str], labels: Sequence[str], seeds: Sequence[int], budget: float | None,
              done: Sequence[dict[str, Any]]) -> list[Job]:
    """The runs still to do: every setting x seed x method not already in ``done``."""
    candidates = [Job(label, preset_name(s), seed) for s in settings for seed in seeds for label in labels]
    finished = (job_key(d["preset"], d["label"], d["seed"], d.get("budget")) for d in done)
    return plan(candidates, finished, key=lambda j: job_key(j.preset, j.label, j.seed, budget))


def budget_overrides(preset: str, budget: float | None) -> list[str]:
    """``train.epochs``/``train.steps_per_epoch`` of ``--budget`` (the engine's own cut,
    ``ulfine.config.apply_budget``); none for a full run."""
    if budget is None:
        return []
    from ulfine.config import load_config

    train = load_config(preset, budget=budget).train
    return [f"train.epochs={train.epochs}", f"train.steps_per_epoch={train.steps_per_epoch}"]


def runs_dir(out: Path, budget: float | None) -> Path:
    """Run folders of full runs, and of each ``--budget`` apart (a smoke run never blocks a full one)."""
    return out / ("runs" if budget is None else f"runs-budget-{budget:g}")


def _run_one(job: Job, folder: str, overrides: list[str], threads: int, budget: float | None, workers: int) -> dict:
    """One engine run in a worker process; its whole ``final_metrics.json``, its wall time, how it
    ran (runs side by side, threads) and whether it continued a killed run from a checkpoint."""
    import torch

    torch.set_num_threads(threads)
    from ulfine.apps.compare import continue_unfinished, run_dir_for, run_method
    from ulfine.apps.results import METRICS_FILE

    spec = next(s for s in method_specs() if s.label == job.label)
    resumed = bool(continue_unfinished(run_dir_for(spec, job.preset, job.seed, Path(folder))))
    start = time.perf_counter()
    row = run_method(spec, job.preset, job.seed, Path(folder), [*budget_overrides(job.preset, budget), *overrides],
                     progress=False)
    wall = time.perf_counter() - start
    metrics = {**json.loads((Path(row.run_dir) / METRICS_FILE).read_text()), "wall_seconds": wall}
    return {"preset": job.preset, "label": job.label, "seed": job.seed, "budget": budget,
            "run_dir": row.run_dir, "workers": workers, "threads": threads, "resumed": resumed, "metrics": metrics}


def _describe(row: dict) -> str:
    from ulfine.apps.results import metric_value

    m = row["metrics"]
    return (f"overall {100 * metric_value(m, 'overall'):.1f} tail {100 * metric_value(m, 'tail'):.1f} "
            f"({m['train_seconds']:.0f} s train, {m['wall_seconds']:.0f} s wall)")


def records_of(rows: Sequence[dict[str, Any]], presets: Sequence[str], budget: float | None) -> list[RunRecord]:
    """The finished runs of these presets at this budget as ``RunRecord`` (table input). A run that
    continued from a checkpoint has no wall time (its last attempt's would understate it; its train
    time sums every attempt)."""
    from ulfine.apps.results import RunRecord

    def metrics(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d["metrics"].items() if not (d.get("resumed") and k == "wall_seconds")}

    return [RunRecord(d["label"], d["preset"], d["seed"], metrics(d)) for d in table_rows(rows, presets, budget)]


def table_rows(rows: Sequence[dict[str, Any]], presets: Sequence[str], budget: float | None) -> list[dict[str, Any]]:
    """The rows of these presets at this budget."""
    return [d for d in rows if d["preset"] in presets and d.get("budget") == budget]


def continued(rows: Sequence[dict[str, Any]]) -> str:
    """Which runs continued from a checkpoint (their wall time is left out)."""
    names = [f"{d['label']} seed {d['seed']}" for d in rows if d.get("resumed")]
    return ", ".join(names) if names else "none"


def per_run_table(records: Sequence[RunRecord], labels: Sequence[str]) -> Table:
    """One line per run: method, seed, overall accuracy, train and wall minutes (the cost of each)."""
    from ulfine.apps.results import METRICS, Table, format_summary, summarise

    cols = ("overall", "gm_recall", "train_minutes", "wall_minutes")
    rank = {label: i for i, label in enumerate(labels)}
    ordered = sorted(records, key=lambda r: (r.preset, rank.get(r.label, len(rank)), r.seed))
    body = [[r.preset, r.label, str(r.seed)] + [  # a metric the run did not record shows as "-"
        format_summary(summarise([METRICS[c].read(r.metrics)]), METRICS[c].scale, 1, std_of_one=False) for c in cols]
        for r in ordered]
    return Table(["preset", "method", "seed"] + [METRICS[c].title for c in cols], body)


def markdown_report(records: Sequence[RunRecord], presets: Sequence[str], about: dict[str, Any]) -> str:
    """The benchmark's Markdown: how it was made, then mean ± std per preset, then every run."""
    from ulfine.apps.results import table_by_metric

    order = [label for label, _ in METHODS]
    labels = [x for x in order if any(r.label == x for r in records)]
    rule = next((r.metrics.get("group_rule", {}).get("text") for r in records), "")
    lines = ["# Fashion-MNIST-LT from scratch (real images)", ""]
    lines += [f"- {key}: {value}" for key, value in about.items()]
    lines += ["", "Test accuracy (%) of the final (EMA) model on the 10,000 test images, mean ± std over "
              f"seeds; groups: {rule}; geometric mean of per-class recall (%); time per run in minutes.", ""]
    for preset in presets:
        if any(r.preset == preset for r in records):
            table = table_by_metric(records, labels, preset, TABLE_METRICS, first="method", digits=1)
            lines += [f"### {preset}", "", table.markdown(), ""]
    lines += ["### every run", "", per_run_table(records, order).markdown(align_right_from=2), ""]
    return "\n".join(lines)


def about_runs(args: argparse.Namespace, argv: Sequence[str], presets: Sequence[str],
               rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The facts a table states: command, seeds, budget, machine and how the runs ran, date."""
    from ulfine.config import load_config

    cfg = load_config(presets[0], [*budget_overrides(presets[0], args.budget), *args.overrides])
    t = cfg.train
    budget = (f"{t.epochs} epochs x {t.steps_per_epoch} steps of batch {t.batch_size} + {cfg.ssl.mu} x "
              f"{t.batch_size} unlabeled" + (f" (--budget {args.budget:g} of the preset's)" if args.budget else
                                             " (the preset's)"))
    shown = table_rows(rows, presets, args.budget)
    return {"command": shown_command("benchmarks/fashion_mnist.py", argv, args.publish), "seeds": args.seeds,
            "settings": list(args.settings), "budget": budget, "overrides": list(args.overrides),
            "machine": how_runs_ran(shown), "continued from a checkpoint (wall time left out)": continued(shown),
            "date": time.strftime("%Y-%m-%d")}


def write_tables(out: Path, records: Sequence[RunRecord], presets: Sequence[str], about: dict[str, Any]) -> str:
    """``fashion_mnist.md`` / ``.csv`` (one line per run) / ``.json`` (the rows' numbers); returns the Markdown."""
    from ulfine.apps.results import pivot, pivot_csv

    cells = pivot(records, lambda r: r.label, lambda r: r.preset, TABLE_METRICS)
    md = markdown_report(records, presets, about)
    (out / "fashion_mnist.md").write_text(md)
    (out / "fashion_mnist.csv").write_text(pivot_csv(cells, TABLE_METRICS))
    summary = [{"method": c.row, "preset": c.column, "seeds": list(c.seeds),
                **{m: {"mean": s.mean, "std": s.std} for m, s in zip(TABLE_METRICS, c.summaries)}} for c in cells]
    (out / "fashion_mnist.json").write_text(json.dumps({**about, "results": summary}, indent=1) + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", choices=SETTINGS, default=["consistent"],
                    help="unlabeled settings (default consistent)")
    ap.add_argument("--budget", type=float, default=None, metavar="FRACTION",
                    help="train this fraction of the preset's steps (smoke runs; kept apart from full runs)")
    add_grid_arguments(ap, seeds=[0, 1, 2], out=OUT)
    args = ap.parse_args(argv)
    wanted = None if args.methods is None else {m.lower() for m in args.methods}
    labels = [label for label, name in METHODS if wanted is None or {label.lower(), name} & wanted]
    if args.list:
        print("\n".join(label for label, _ in METHODS))
        return 0
    args.threads = threads_per_run(args.threads, args.workers)
    out, presets = Path(args.out), [preset_name(s) for s in args.settings]
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    done = read_rows(rows_file)
    jobs = [] if args.aggregate_only else plan_jobs(args.settings, labels, args.seeds, args.budget, done)
    print(f"fashion-mnist benchmark: {len(jobs)} runs to do ({len(done)} rows in {rows_file}), "
          f"{args.workers} worker(s) x {args.threads} thread(s)", flush=True)
    done += run_grid(jobs, _run_one, (str(runs_dir(out, args.budget)), args.overrides, args.threads, args.budget,
                                      args.workers), rows_file, args.workers, _describe)
    about = about_runs(args, argv if argv is not None else sys.argv[1:], presets, done)
    md = write_tables(out, records_of(done, presets, args.budget), presets, about)
    print(md)
    if args.publish:
        Path(args.publish).write_text((out / "fashion_mnist.json").read_text())
        print(f"published {args.publish}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
