#!/usr/bin/env python
"""The micro-world study of docs/microworld.md sections 0 and 7, stage by stage.

    python scripts/reproduce/microworld_study.py lr --workers 2       # learning rate per strategy (val split, seed 0)
    python scripts/reproduce/microworld_study.py regime --workers 2   # R2, R4, R5: balanced and long-tailed labels
    python scripts/reproduce/microworld_study.py ulfine --workers 2   # ULFine's [R] choices, dev seeds 0 1 2
    python scripts/reproduce/microworld_study.py baselines --workers 2  # the baselines' options, dev seeds 0 1 2

The final table (report seeds 3, 4, 5, three settings) is ``python benchmarks/accuracy.py``.
Rules (declared in docs/microworld.md section 0 before any of this ran): learning rates are
chosen on the validation split (never the test set) with the supervised baseline; every
selection among options uses the mean overall accuracy of the final model over seeds 0, 1, 2
of the consistent setting; seeds 3, 4, 5 are never run here.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Grid, base_parser, finish, per_preset_tables

from ulfine.microworld.task import STRATEGY_LR

PRESET = "microworld_n100_m200_g20_consistent"
DEV_SEEDS = (0, 1, 2)
LFT = ("finetune=lft", f"optim.lr={STRATEGY_LR['lft']}", "eval.every_epochs=5")  # final model only
LRS = (0.003, 0.01, 0.03, 0.1)
VAL = ("data.val_per_class=20", "data.num_unlabeled_head=180")  # the pool has 300 per class
#: balanced labels: 100 per class (the preset's head count for every class)
BALANCED = ("data.imbalance_labeled=1", "eval.every_epochs=1")

#: ULFine's reconstructed choices, one at a time from the defaults the study started from
#: (``fusion=sum``, now ``mean`` after this very study), label -> overrides
_SUM = "ulfine.fusion=sum"
ULFINE_VARIANTS: dict[str, tuple[str, ...]] = {
    "former defaults (DLF sum)": (_SUM,),
    "linear branch: LA loss": (_SUM, "ulfine.loss_linear=la"),
    "prototype branch: LA loss": (_SUM, "ulfine.loss_prototype=la"),
    "both branches: LA loss": (_SUM, "ulfine.loss_linear=la", "ulfine.loss_prototype=la"),
    "DLF: mean of branches": ("ulfine.fusion=mean",),
    "DLF: w_dlf 0.5": (_SUM, "ulfine.w_dlf=0.5"),
    "DLF: tau_la 2": (_SUM, "ulfine.tau_la=2"),
    "DLF prior: labeled + pseudo": (_SUM, "ulfine.prior=labeled+pseudo"),
    "PAF: anchored on text": (_SUM, "ulfine.paf_anchor=text"),
    "P_u: counts": (_SUM, "ulfine.pu_stat=count"),
    "prototypes: momentum only": (_SUM, "ulfine.learnable_prototypes=false"),
    "beta 0.99": (_SUM, "ulfine.beta=0.99"),
    "mu_paf 0.3": (_SUM, "ulfine.mu_paf=0.3"),
    "w/o orthogonality": (_SUM, "ulfine.orth=false"),
    "w/o PAF": (_SUM, "ulfine.paf=false"),
    "w/o DLF": ("ulfine.dlf=false",),
}
#: each baseline's own options (label -> method, overrides)
BASELINE_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "FixMatch tau 0.6": ("fixmatch", ("ssl.tau=0.6",)),
    "FixMatch tau 0.7": ("fixmatch", ("ssl.tau=0.7",)),
    "FixMatch tau 0.8": ("fixmatch", ("ssl.tau=0.8",)),
    "FixMatch tau 0.95": ("fixmatch", ("ssl.tau=0.95",)),
    "FixMatch-LA tau_la 0.5": ("fixmatch_la", ("fixmatch_la.tau_la=0.5",)),
    "FixMatch-LA tau_la 1": ("fixmatch_la", ("fixmatch_la.tau_la=1",)),
    "FixMatch-LA tau_la 1.5": ("fixmatch_la", ("fixmatch_la.tau_la=1.5",)),
    "FixMatch-LA tau_la 2": ("fixmatch_la", ("fixmatch_la.tau_la=2",)),
    "FineSSL defaults": ("finessl", ()),
    "FineSSL margin 2": ("finessl", ("finessl.margin_scale=2",)),
    "FineSSL smoothing 0.2": ("finessl", ("finessl.label_smoothing=0.2",)),
    "FineSSL smoothing 0": ("finessl", ("finessl.label_smoothing=0",)),
    "LoFT tau 0.6": ("loft", ("ssl.tau=0.6",)),
    "LoFT tau 0.7": ("loft", ("ssl.tau=0.7",)),
    "LoFT tau 0.8": ("loft", ("ssl.tau=0.8",)),
    "LoFT tau 0.6 tau_ood 0.2": ("loft", ("ssl.tau=0.6", "loft.tau_ood=0.2")),
}
COLUMNS = {
    "lr": ["val_overall", "val_balanced", "overall"],
    "regime": ["overall", "overall_last_k", "head", "medium", "tail"],
    "ulfine": ["overall", "head", "medium", "tail", "pl_precision", "pl_false_confident"],
    "baselines": ["overall", "head", "medium", "tail", "pl_precision", "pl_false_confident"],
}


def build_grid(stage: str, seeds: list[int], rows: list[str] | None = None) -> Grid:
    """The runs of one stage (only the rows labelled in ``rows``, when given)."""
    grid = Grid(f"microworld_{stage}")
    if stage == "lr":
        for ft in STRATEGY_LR:
            for lr in LRS:
                grid.add(f"{ft.upper()} supervised lr={lr}", PRESET, "supervised", [0],
                         f"finetune={ft}", f"optim.lr={lr}", *VAL)
    elif stage == "regime":
        grid.add("zero-shot", PRESET, "zeroshot", [0], "finetune=lp")
        for ft, lr in STRATEGY_LR.items():
            grid.add(f"{ft.upper()} supervised, balanced labels", PRESET, "supervised", seeds,
                     f"finetune={ft}", f"optim.lr={lr}", *BALANCED)
        for ft, lr in STRATEGY_LR.items():
            grid.add(f"{ft.upper()} supervised, long-tailed labels", PRESET, "supervised", seeds,
                     f"finetune={ft}", f"optim.lr={lr}", "eval.every_epochs=1")
    elif stage == "ulfine":
        for label, overrides in ULFINE_VARIANTS.items():
            if rows is None or label in rows:
                grid.add(label, PRESET, "ulfine", seeds, *LFT, *overrides)
    elif stage == "baselines":
        for label, (method, overrides) in BASELINE_VARIANTS.items():
            if rows is None or label in rows:
                grid.add(label, PRESET, method, seeds, *LFT, *overrides)
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], presets=[PRESET], seeds=DEV_SEEDS)
    parser.add_argument("stage", choices=list(COLUMNS))
    parser.add_argument("--rows", nargs="+", default=None, metavar="LABEL",
                        help="only these rows of the ulfine/baselines stages (default: all)")
    args = parser.parse_args(argv)
    if set(args.seeds) - set(DEV_SEEDS):
        parser.error(f"the study chooses on dev seeds {DEV_SEEDS} only; report seeds belong to benchmarks/accuracy.py")
    grid = build_grid(args.stage, args.seeds, args.rows)
    return finish(grid, args, per_preset_tables(COLUMNS[args.stage]), f"Micro-world study: {args.stage}")


if __name__ == "__main__":
    raise SystemExit(main())
