#!/usr/bin/env python
"""Training cost of the real engine at real size: images/s and peak memory per method x finetune.

Runs ``ulfine.engine.train`` (the same loop users run) on the in-memory ``synthetic10`` dataset
(32 px images, resized on the device to the backbone's input size), with random weights so no
download is needed, for a handful of optimiser steps per configuration, and prints the
``cost`` block of each run's ``final_metrics.json`` as a Markdown table (JSON next to it).

    python benchmarks/train_cost.py                          # ViT-B-16 on CUDA, tiny arch on CPU
    python benchmarks/train_cost.py --arch ViT-B-16 --steps 40 --batch-size 32 --mu 2

Accuracy numbers of these runs are meaningless (random weights, synthetic data); the figures
are throughput of optimiser steps (train_images_per_s) and peak accelerator memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROWS = [  # (method, finetune, extra overrides)
    ("fixmatch", "lp", ()),
    ("fixmatch", "lft", ()),
    ("fixmatch", "fft", ()),
    ("ulfine", "lp", ()),
    ("ulfine", "lft", ()),
    ("ulfine", "lft", ("peft=lora",)),
    ("ulfine", "lft", ("peft=vpt",)),
]


def run_row(method: str, finetune: str, extra: tuple[str, ...], args: argparse.Namespace,
            out_root: Path) -> dict:
    """Train one configuration for ``args.steps`` steps and return its cost figures."""
    from ulfine.config import load_config
    from ulfine.engine import train

    name = "-".join([method, finetune, *[e.split("=")[1] for e in extra]])
    overrides = [
        f"method={method}", f"finetune={finetune}", *extra,
        f"model.arch={args.arch}", "model.pretrained=none", f"train.device={args.device}",
        f"train.steps_per_epoch={args.steps}", f"train.batch_size={args.batch_size}",
        f"ssl.mu={args.mu}", "train.log_every=10", f"train.compile={str(args.compile).lower()}",
        "eval.pseudo_label_max=64", "eval.batch_size=128", f"data.num_workers={args.workers}",
        "adaptformer.bottleneck=64",  # the default (the smoke preset shrinks it)
        f"output_dir={out_root / name}",
    ]
    cfg = load_config("synthetic_smoke", overrides)
    t0 = time.perf_counter()
    run_dir = train(cfg)
    wall = time.perf_counter() - t0
    final = json.loads((run_dir / "final_metrics.json").read_text())
    return {"row": name, "method": method, "finetune": finetune, "extra": list(extra),
            "steps": final["steps"], "trainable_params": final["trainable_params"],
            "train_seconds": final["train_seconds"], "wall_seconds": round(wall, 2),
            **final["cost"]}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--arch", default=None, help="default: ViT-B-16 on CUDA, ulfine-micro-vit on CPU")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per row")
    parser.add_argument("--batch-size", type=int, default=32, help="labeled batch (FineSSL: 32)")
    parser.add_argument("--mu", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4 if cuda else 0)
    parser.add_argument("--compile", action="store_true", help="train.compile=true")
    parser.add_argument("--rows", nargs="*", default=None, help="subset of row names")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)
    args.arch = args.arch or ("ViT-B-16" if args.device == "cuda" else "ulfine-micro-vit")
    args.steps = args.steps or (30 if args.device == "cuda" else 4)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, finetune, extra in ROWS:
            name = "-".join([method, finetune, *[e.split("=")[1] for e in extra]])
            if args.rows and name not in args.rows:
                continue
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            results.append(run_row(method, finetune, extra, args, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    head = (f"{args.arch} on {device_name}, labeled batch {args.batch_size} + {args.mu}x unlabeled "
            f"(weak+strong), {args.steps} steps per row, train.compile={args.compile}")
    lines = [head, "", "| row | trainable params | images/s | peak memory MiB | s/step |",
             "|---|---|---|---|---|"]
    for r in results:
        per_step = r["train_seconds"] / max(r["steps"], 1)
        peak = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        ips = r["train_images_per_s"] or 0.0
        lines.append(f"| {r['row']} | {r['trainable_params']:,} | {ips:.0f} | {peak} | {per_step:.3f} |")
    table = "\n".join(lines)
    print(table)
    out = args.out or Path("benchmarks/results") / f"train_cost-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setup": head, "rows": results}, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
