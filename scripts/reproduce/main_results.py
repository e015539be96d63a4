#!/usr/bin/env python
"""Main results: every method on the standard LTSSL settings (overall and tail accuracy).

    python scripts/reproduce/main_results.py --extra model.pretrained=/path/ViT-B-16.pt
    python scripts/reproduce/main_results.py --dry-run          # list the commands only

All methods run on the same backbone, fine-tuning strategy (LFT + AdaptFormer by default) and
budget; pass ``--extra finetune=lp`` etc. to change them for every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Grid, base_parser, finish, table_rows_by_preset

TABLE = "main_results"
PRESETS = [
    "cifar10_n1500_m3000_g100_consistent", "cifar10_n1500_m3000_g100_uniform",
    "cifar10_n1500_m3000_g100_reversed", "cifar10_n500_m4000_g100_consistent",
    "cifar10_n500_m4000_g100_uniform", "cifar10_n500_m4000_g100_reversed",
    "cifar100_n150_m300_g10_consistent", "cifar100_n150_m300_g10_uniform",
    "cifar100_n150_m300_g10_reversed", "cifar100_n50_m400_g10_consistent",
    "cifar100_n50_m400_g10_uniform", "cifar100_n50_m400_g10_reversed",
    "stl10_n150_g10", "stl10_n150_g20", "stl10_n450_g10", "stl10_n450_g20",
]
METHODS = ["zeroshot", "supervised", "fixmatch", "fixmatch_la", "finessl", "loft", "ulfine"]


def build_grid(presets: list[str], methods: list[str], seeds: list[int]) -> Grid:
    """Rows = methods, columns = presets. Each method runs with its published recipe
    (``configs/recipes/published.yaml``: LoFT's and FineSSL's scripts)."""
    from ulfine.config import recipe_overrides  # late: keeps --help and --dry-run light

    recipes = {m: recipe_overrides("published", m) for m in methods}
    grid = Grid(TABLE)
    for preset in presets:
        for method in methods:
            # zero-shot has nothing to train: one seed is enough
            runs = seeds[:1] if method == "zeroshot" else seeds
            grid.add(method, preset, method, runs, *recipes.get(method, ()))
    return grid


def render(grid: Grid, runs_dir: Path) -> str:
    parts = []
    for metric in ("overall", "tail", "overall_last_k"):
        parts.append(table_rows_by_preset(grid, runs_dir, metric))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], presets=PRESETS)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    args = parser.parse_args(argv)
    grid = build_grid(args.presets, args.methods, args.seeds)
    return finish(grid, args, render, "Main results: accuracy on the balanced test set")


if __name__ == "__main__":
    raise SystemExit(main())
