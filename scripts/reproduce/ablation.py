#!/usr/bin/env python
"""Ablation of ULFine: PAF, the orthogonality loss, DLF, and each reconstructed [R] option.

    python scripts/reproduce/ablation.py --extra model.pretrained=/path/ViT-B-16.pt

"all off" is FixMatch with the text-initialised cosine head (the ``fixmatch`` baseline, to the
bit); the [R] rows switch one reconstruction choice of docs/method.md at a time.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Grid, base_parser, finish, per_preset_tables

TABLE = "ablation"
PRESETS = ["cifar10_n1500_m3000_g100_consistent", "cifar100_n150_m300_g10_consistent",
           "cifar100_n150_m300_g10_reversed"]
# row label -> overrides
VARIANTS: dict[str, tuple[str, ...]] = {
    "ULFine (PAF + orth + DLF)": (),
    "w/o PAF momentum fitting": ("ulfine.paf=false",),
    "w/o orthogonality loss": ("ulfine.orth=false",),
    "w/o DLF (prototype branch only)": ("ulfine.dlf=false",),
    "PAF only (no DLF, no orth)": ("ulfine.dlf=false", "ulfine.orth=false"),
    "DLF only (no PAF, no orth)": ("ulfine.paf=false", "ulfine.orth=false"),
    "all off (= fixmatch, prototype head)": ("ulfine.paf=false", "ulfine.orth=false", "ulfine.dlf=false"),
    "[R] prior = labeled + pseudo": ("ulfine.prior=labeled+pseudo",),
    "[R] P_u = counts": ("ulfine.pu_stat=count",),
    "[R] prototypes fitted by momentum only": ("ulfine.learnable_prototypes=false",),
    "[R] no logit adjustment in DLF": ("ulfine.tau_la=0",),
}
COLUMNS = ["overall", "head", "medium", "tail", "pl_precision", "pl_mask_rate"]


def build_grid(presets: list[str], variants: list[str], seeds: list[int]) -> Grid:
    grid = Grid(TABLE)
    for preset in presets:
        for label in variants:
            grid.add(label, preset, "ulfine", seeds, *VARIANTS[label])
    return grid


render = per_preset_tables(COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], presets=PRESETS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        metavar="LABEL", help="rows to run (default: all)")
    args = parser.parse_args(argv)
    grid = build_grid(args.presets, args.variants, args.seeds)
    return finish(grid, args, render, "Ablation of ULFine")


if __name__ == "__main__":
    raise SystemExit(main())
