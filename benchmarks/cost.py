#!/usr/bin/env python
"""Training cost of scratch LTSSL against CLIP fine-tuning, measured, for each method's full budget.

    python benchmarks/cost.py                       # CPU: real archs, small measured batches
    python benchmarks/cost.py --device cuda         # GPU: the presets' own batches
    python benchmarks/cost.py --rows ACR ULFine --out cost.json

For each row (scratch ACR, scratch FixMatch, LP / LFT / FFT FixMatch, FineSSL, ULFine) on one
setting (cifar10_n1500_m3000_g100_consistent and its ``_scratch`` preset), a fresh process builds
the run with ulfine's own assembly (``assemble_run``, random weights: no download; the
in-memory 32 px synthetic10 images stand in for CIFAR files, which cost the same per image) and
takes real optimiser steps with the engine's ``Trainer.step`` (device normalisation, forward,
backward, optimiser, EMA). It records:

- training FLOPs of one step, counted by ``torch.utils.flop_counter`` (matmuls, convolutions,
  attention; element-wise ops are not counted, as usual), scaled to the preset's batch (every op
  is per image, so FLOPs grow linearly with the batch);
- the step's wall-clock time, the fastest of the timed steps (at least ``--steps``, more for
  cheap rows until 10 s have passed; other processes on a shared machine only ever slow a step
  down; data loading excluded: the batch is fetched before the clock starts), and so images/s,
  where an image is one forward pass of one view;
- peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak resident set size
  (``ru_maxrss``) of the row's own process, at the *measured* batch (weights, optimiser state,
  activations and the Python process itself).

The budget of each row (iterations = epochs x steps per epoch, labeled batch B, mu, views per
unlabeled image) comes from the row's preset, so the full-budget figures are: images processed =
iterations x (B + mu B (1 + strong views)); FLOPs = iterations x FLOPs of a full-batch step;
wall-clock = images processed / measured images/s (linear extrapolation at the measured rate).
Ratios are against ULFine. Accuracy is not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTING = "cifar10_n1500_m3000_g100_consistent"
ROWS: dict[str, tuple[str, list[str]]] = {  # row -> (preset, overrides)
    "ACR": (f"{SETTING}_scratch", ["method=acr"]),
    "FixMatch-scratch": (f"{SETTING}_scratch", ["method=fixmatch"]),
    "LP-FixMatch": (SETTING, ["method=fixmatch", "finetune=lp"]),
    "LFT-FixMatch": (SETTING, ["method=fixmatch", "finetune=lft"]),
    "FFT-FixMatch": (SETTING, ["method=fixmatch", "finetune=fft"]),
    "FineSSL": (SETTING, ["method=finessl", "finetune=lft"]),
    "ULFine": (SETTING, ["method=ulfine", "finetune=lft"]),
    # the field's LTSSL baselines (docs/method.md section 7), from scratch and on CLIP LFT
    **{f"{name}-scratch": (f"{SETTING}_scratch", [f"method={m}"]) for name, m in (
        ("ABC", "abc"), ("DASO", "daso"), ("DebiasPL", "debiaspl"), ("SimPro", "simpro"), ("CDMAD", "cdmad"),
        ("CPE", "cpe"))},
    **{f"LFT-{name}": (SETTING, [f"method={m}", "finetune=lft"]) for name, m in (
        ("ABC", "abc"), ("DASO", "daso"), ("DebiasPL", "debiaspl"), ("SimPro", "simpro"), ("CDMAD", "cdmad"),
        ("CPE", "cpe"))},
}
REFERENCE = "ULFine"
RATIO_KEYS = ("iterations", "images", "flops", "wall_hours")
MIN_SECONDS, MAX_STEPS = 10.0, 20  # cheap rows keep stepping for 10 s (more samples for the minimum)
CLIP = ["model.pretrained=none", "model.text_cache_dir=null"]  # ViT-B/16 (the default arch), random
MEASURE = ["data.dataset=synthetic10", "data.num_labeled_head=20", "data.num_unlabeled_head=40",
           "data.imbalance_labeled=10", "data.imbalance_unlabeled=10", "data.num_workers=0",
           "train.progress=false", "cache.features=false", "eval.pseudo_label_max=1"]


def row_config(row: str, batch: int | None, device: str) -> tuple[Any, Any]:
    """(the row's preset config = its budget, the config of the measured steps)."""
    from ulfine.config import load_config

    preset, overrides = ROWS[row]
    extra = [] if preset.endswith("_scratch") else CLIP
    budget = load_config(preset, [*overrides, *extra])
    measured = load_config(preset, [*overrides, *extra, *MEASURE, f"train.device={device}",
                                    f"train.batch_size={batch or budget.train.batch_size}"])
    return budget, measured


def passes_per_step(cfg: Any) -> int:
    """Forward image passes of one step: B labeled + mu B unlabeled x (weak + strong views)."""
    from ulfine.registry import METHODS

    method = METHODS.get(cfg.method)
    b = cfg.train.batch_size
    return b + (cfg.ssl.mu * b * (1 + method.strong_views) if method.uses_unlabeled else 0)


def measure(row: str, batch: int | None, device: str, steps: int) -> dict[str, Any]:
    """Build the row's run and time ``steps`` real optimiser steps after one FLOP-counted step."""
    import torch
    from _flops import count_step_flops

    from ulfine.engine.run import build_trainer
    from ulfine.engine.runtime import make_runtime

    budget, cfg = row_config(row, batch, device)
    rt = make_runtime(device, cfg.train.precision)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg.model_copy(update={"output_dir": Path(tmp)}), rt, Path(tmp), report=False)
        stream = trainer.start_stream().batches
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        first = next(stream)
        # count with nn.MultiheadAttention's fused inference fast path off (LP's frozen tower in
        # eval mode takes it, and the counter has no formula for it); the same arithmetic
        torch.backends.mha.set_fastpath_enabled(False)
        flops = count_step_flops(lambda: trainer.step(first))["flops"]  # also the warm-up
        torch.backends.mha.set_fastpath_enabled(True)
        seconds: list[float] = []
        started = time.perf_counter()
        while len(seconds) < steps or (time.perf_counter() - started < MIN_SECONDS and len(seconds) < MAX_STEPS):
            host = next(stream)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.step(host)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"row": row, "preset": ROWS[row][0], "overrides": ROWS[row][1], "method": cfg.method,
            "finetune": cfg.finetune, "arch": cfg.model.arch, "input_px": trainer.parts.normalizer.size,
            "trainable_params": trainer.opt.n_trainable, "measured_batch": cfg.train.batch_size,
            "measured_passes_per_step": passes_per_step(cfg), "step_flops_measured": flops,
            "seconds_per_step": min(seconds), "timed_steps": len(seconds), "peak_memory_bytes": int(peak),
            "iterations": budget.train.epochs * budget.train.steps_per_epoch,
            "batch": budget.train.batch_size, "mu": budget.ssl.mu,
            "passes_per_step": passes_per_step(budget)}


def full_budget(m: dict[str, Any]) -> dict[str, Any]:
    """The measured row extrapolated to its preset's batch and number of iterations."""
    images_per_s = m["measured_passes_per_step"] / m["seconds_per_step"]
    images = m["iterations"] * m["passes_per_step"]
    flops = m["iterations"] * m["step_flops_measured"] * m["passes_per_step"] / m["measured_passes_per_step"]
    return {**m, "images_per_s": images_per_s, "images": images, "flops": flops,
            "wall_hours": images / images_per_s / 3600}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """x / ULFine's x for iterations, images, FLOPs and wall-clock (when ULFine was measured)."""
    ref = next((r for r in rows if r["row"] == REFERENCE), None)
    for r in rows:
        r["ratio"] = None if ref is None else {k: r[k] / ref[k] for k in RATIO_KEYS}


def table(rows: list[dict[str, Any]], device: str) -> str:
    """The Markdown cost table."""
    mem = "peak alloc MiB (full batch)" if device == "cuda" else "peak RSS MiB (measured batch)"
    lines = ["| method | backbone @ px | trainable | iterations | batch (B + mu B views) | images processed "
             f"| training FLOPs | img/s measured | wall-clock extrapolated | {mem} "
             "| x ULFine: iter / images / FLOPs / wall |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else " / ".join(f"{r['ratio'][k]:.2f}" for k in RATIO_KEYS)
        lines.append(
            f"| {r['row']} | {r['arch']} @ {r['input_px']} | {r['trainable_params'] / 1e6:.2f} M | "
            f"{r['iterations']:,} | {r['passes_per_step']} | {r['images'] / 1e6:.1f} M | "
            f"{r['flops'] / 1e15:.1f} PFLOP | {r['images_per_s']:.3g} | {r['wall_hours']:.0f} h | "
            f"{r['peak_memory_bytes'] / 2**20:.0f} | {ratio} |")
    return "\n".join(lines)


def run_row(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one row in a fresh process (its own peak memory), return its JSON."""
    batch = args.batch_scratch if ROWS[row][0].endswith("_scratch") else args.batch_clip
    cmd = [sys.executable, __file__, "--worker", row, "--device", args.device, "--steps", str(args.steps)]
    if batch:
        cmd += ["--batch", str(batch)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: row {row} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if visible")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (CPU 3, CUDA 10)")
    parser.add_argument("--batch-clip", type=int, default=None, help="measured labeled batch of CLIP rows "
                        "(CPU default 1; CUDA default: the preset's)")
    parser.add_argument("--batch-scratch", type=int, default=None, help="measured labeled batch of scratch "
                        "rows (CPU default 8; CUDA default: the preset's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.steps = args.steps or (3 if args.device == "cpu" else 10)
    if args.worker:
        print(json.dumps(measure(args.worker, args.batch, args.device, args.steps)))
        return 0
    if args.device == "cpu":
        args.batch_clip, args.batch_scratch = args.batch_clip or 1, args.batch_scratch or 8
    from _common import device_name

    t0 = time.perf_counter()
    rows = []
    for row in args.rows:
        rows.append(full_budget(run_row(row, args)))
        print(f"{row}: {rows[-1]['seconds_per_step']:.2f} s/step at batch {rows[-1]['measured_batch']}",
              file=sys.stderr, flush=True)
    add_ratios(rows)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"device: {device_name(torch.device(args.device))}; setting {SETTING}; fastest of at least "
          f"{args.steps} timed steps per row (cheap rows: {MIN_SECONDS:.0f} s of steps); "
          f"{time.perf_counter() - t0:.0f} s in all; load average at the end {load}\n")
    print(table(rows, args.device))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
