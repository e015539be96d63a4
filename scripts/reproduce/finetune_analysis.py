#!/usr/bin/env python
"""LP vs LFT vs FFT: how each way of using CLIP changes accuracy per group and pseudo-labels.

    python scripts/reproduce/finetune_analysis.py --extra model.pretrained=/path/ViT-B-16.pt

The published findings it is meant to show (docs/method.md section 2): FFT is worst; LP and LFT
raise overall accuracy but barely help tail classes; LP makes many false pseudo-labels (low
precision), LFT fewer but over-confident ones (high mask rate, high ECE).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Grid, base_parser, finish, per_preset_tables

TABLE = "finetune_analysis"
PRESETS = ["cifar10_n1500_m3000_g100_consistent", "cifar100_n150_m300_g10_consistent"]
METHODS = ["supervised", "fixmatch", "ulfine"]
FINETUNES = ["lp", "lft", "fft"]
COLUMNS = ["overall", "head", "medium", "tail", "pl_precision", "pl_recall", "pl_mask_rate", "ece"]


def build_grid(presets: list[str], methods: list[str], finetunes: list[str], seeds: list[int]) -> Grid:
    """Rows = (method, finetune); one table per preset."""
    grid = Grid(TABLE)
    for preset in presets:
        for method in methods:
            for ft in finetunes:
                grid.add(f"{method} {ft.upper()}", preset, method, seeds, f"finetune={ft}")
    return grid


render = per_preset_tables(COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], presets=PRESETS)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--finetunes", nargs="+", default=FINETUNES, choices=FINETUNES)
    args = parser.parse_args(argv)
    grid = build_grid(args.presets, args.methods, args.finetunes, args.seeds)
    return finish(grid, args, render, "LP vs LFT vs FFT")


if __name__ == "__main__":
    raise SystemExit(main())
