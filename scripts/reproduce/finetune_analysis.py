#!/usr/bin/env python
"""LP vs LFT vs FFT: how each way of using CLIP changes accuracy per group and pseudo-labels.

    python scripts/reproduce/finetune_analysis.py --extra model.pretrained=/path/ViT-B-16.pt
    python scripts/reproduce/finetune_analysis.py --presets microworld_n100_m200_g20_consistent
    python scripts/reproduce/finetune_analysis.py --presets microworld_n100_m200_g20_consistent --quick

Rows: zero-shot (nothing trains: one run), then supervised and FixMatch on each of LP, LFT and
FFT (``--methods`` adds e.g. ``ulfine``); on the micro world each strategy runs with the recipe
the study chose for it (``ulfine.microworld.task.strategy_overrides``). Columns: overall and
per-group test accuracy, and from the pseudo-label diagnostics of the final model on the
unlabeled set (confident = max softmax >= ``ssl.tau``): precision, mask rate, the number of false
confident pseudo-labels, the mean confidence of the false and of the true ones, ECE. One PNG per
preset shows the confidence
histogram of correct and false confident pseudo-labels per row (summed over seeds).

The published findings it is meant to test, reported whether or not they hold: FFT is worst; LP
and LFT raise overall accuracy but barely help tail classes; LP makes many false pseudo-labels,
LFT fewer but over-confident ones (higher mean confidence of the false ones).

``--quick`` is a smoke run (1 epoch of 4 steps, seed 0 unless ``--seeds`` says otherwise) into
its own table and run folders (``finetune_analysis_quick``): it shows the pipeline works end to
end; its numbers are not results. ``--budget EPOCHS STEPS`` sets any other budget (its own
folders too, ``finetune_analysis_e<EPOCHS>s<STEPS>``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Grid, base_parser, finish, records

from ulfine.apps.plots import plot_confidence_histograms
from ulfine.apps.results import summed_confidence_histogram, table_by_metric
from ulfine.config import load_config
from ulfine.microworld.task import strategy_overrides

TABLE = "finetune_analysis"
PRESETS = ["cifar10_n1500_m3000_g100_consistent", "cifar100_n150_m300_g10_consistent"]
METHODS = ["zeroshot", "supervised", "fixmatch"]
FINETUNES = ["lp", "lft", "fft"]
COLUMNS = ["overall", "head", "medium", "tail", "pl_precision", "pl_mask_rate", "pl_false_confident",
           "pl_false_confidence", "pl_true_confidence", "ece"]
#: rows whose confidence histogram is plotted (supervised rows are in the table only)
PLOTTED = ("zeroshot", "fixmatch", "ulfine", "loft")
QUICK_BUDGET = ("train.epochs=1", "train.steps_per_epoch=4")


def strategy(preset: str, finetune: str) -> tuple[str, ...]:
    """``finetune=...``, with the micro world's chosen recipe (learning rate, adapter scale) on a
    micro-world preset; elsewhere the preset's own optimiser settings."""
    if load_config(preset).data.dataset == "microworld":
        return strategy_overrides(finetune)
    return (f"finetune={finetune}",)


def build_grid(presets: list[str], methods: list[str], finetunes: list[str], seeds: list[int],
               budget: tuple[str, ...] = (), table: str = TABLE) -> Grid:
    """Rows = zero-shot, then (method, finetune); one table per preset. ``budget`` overrides
    (e.g. :data:`QUICK_BUDGET`) come after each row's own."""
    grid = Grid(table)
    for preset in presets:
        for method in methods:
            if method == "zeroshot":  # deterministic and untrained: one run, whatever the seeds
                grid.add("zero-shot", preset, method, seeds[:1], "finetune=lp", *budget)
                continue
            for ft in finetunes:
                grid.add(f"{method} {ft.upper()}", preset, method, seeds, *strategy(preset, ft), *budget)
    return grid


def _method_of(grid: Grid, label: str) -> str:
    return next(r.method for r in grid.runs if r.label == label)


def renderer(out: Path, note: str) -> Callable[[Grid, Path], str]:
    """The report body: per preset, the table and its confidence-histogram PNG (beside ``out``)."""

    def render(grid: Grid, runs_dir: Path) -> str:
        done = records(grid, runs_dir)
        parts = [note] if note else []
        for preset in grid.presets:
            table = table_by_metric(done, grid.labels, preset, COLUMNS).markdown()
            panels = [(label, h) for label in grid.labels if _method_of(grid, label) in PLOTTED
                      and (h := summed_confidence_histogram(done, label, preset)) is not None]
            parts.append(f"## {preset}\n\n{table}")
            if panels:
                png = out.with_name(f"{out.stem}_{preset}_confidence.png")
                png.parent.mkdir(parents=True, exist_ok=True)
                plot_confidence_histograms(panels, png, f"{preset}: confident pseudo-labels (max softmax "
                                           f">= {panels[0][1]['edges'][0]:.2f}), correct vs false")
                parts.append(f"![confidence histogram]({png.name})")
        return "\n\n".join(parts)

    return render


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], presets=PRESETS)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--finetunes", nargs="+", default=FINETUNES, choices=FINETUNES)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run ({' '.join(QUICK_BUDGET)}; seed 0 by default), own table and folders")
    parser.add_argument("--budget", nargs=2, type=int, metavar=("EPOCHS", "STEPS"),
                        help="train.epochs and train.steps_per_epoch of every run (default: the preset's)")
    parser.set_defaults(seeds=None)
    args = parser.parse_args(argv)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    budget, table = (QUICK_BUDGET, f"{TABLE}_quick") if args.quick else ((), TABLE)
    if args.budget:  # runs of another budget live in their own folders, never mixed with these
        budget = (f"train.epochs={args.budget[0]}", f"train.steps_per_epoch={args.budget[1]}")
        table = f"{TABLE}_e{args.budget[0]}s{args.budget[1]}"
    args.out = args.out or Path("reports") / f"{table}.md"
    grid = build_grid(args.presets, args.methods, args.finetunes, args.seeds, budget, table)
    note = (f"**SMOKE RUN** ({' '.join(budget)}): proves the pipeline runs end to end; these numbers "
            "are not results." if args.quick else (f"Budget: {' '.join(budget)}." if budget else ""))
    title = "LP vs LFT vs FFT" + (" (smoke run, not results)" if args.quick else "")
    return finish(grid, args, renderer(args.out, note), title)


if __name__ == "__main__":
    raise SystemExit(main())
