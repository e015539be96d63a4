#!/usr/bin/env python
"""Training cost: accuracy against train time and trainable parameters.

    python scripts/reproduce/training_cost.py --extra model.pretrained=/path/ViT-B-16.pt

The paper claims ULFine cuts training cost "by over ten times" while being more accurate; the
rows here put the FineSSL recipe (30 epochs) next to ULFine at 30 and at 3 epochs, plus the
cheaper and costlier fine-tuning strategies, on the same machine one after the other.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Grid, base_parser, finish, per_preset_tables

TABLE = "training_cost"
PRESETS = ["cifar100_n150_m300_g10_consistent"]
# row label -> (method, overrides)
BUDGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "finessl LFT, 30 epochs": ("finessl", ("finetune=lft", "train.epochs=30")),
    "fixmatch LFT, 30 epochs": ("fixmatch", ("finetune=lft", "train.epochs=30")),
    "fixmatch FFT, 30 epochs": ("fixmatch", ("finetune=fft", "train.epochs=30")),
    "ulfine LFT, 30 epochs": ("ulfine", ("finetune=lft", "train.epochs=30")),
    "ulfine LFT, 3 epochs": ("ulfine", ("finetune=lft", "train.epochs=3")),
    "ulfine LP, 3 epochs": ("ulfine", ("finetune=lp", "train.epochs=3")),
}
COLUMNS = ["overall", "tail", "train_minutes", "wall_minutes", "trainable_params"]


def build_grid(presets: list[str], rows: list[str], seeds: list[int]) -> Grid:
    grid = Grid(TABLE)
    for preset in presets:
        for label in rows:
            method, overrides = BUDGETS[label]
            grid.add(label, preset, method, seeds, *overrides)
    return grid


render = per_preset_tables(COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], presets=PRESETS, seeds=(0,))
    parser.add_argument("--rows", nargs="+", default=list(BUDGETS), choices=list(BUDGETS),
                        metavar="LABEL", help="rows to run (default: all)")
    args = parser.parse_args(argv)
    grid = build_grid(args.presets, args.rows, args.seeds)
    return finish(grid, args, render, "Training cost")


if __name__ == "__main__":
    raise SystemExit(main())
