#!/usr/bin/env python
"""How much of the bare step's speed the real engine delivers: end-to-end images/s over images/s
of the step alone, measured in the same process, with the views made on the host or the device.

    python benchmarks/loop_efficiency.py                      # CPU: micro world + ViT-B/16 (32 px data)
    python benchmarks/loop_efficiency.py --rows micro --steps 30

*Engine*: ``ulfine.engine.train`` for ``--steps`` optimiser steps; its ``train_images_per_s``
counts the time from asking the loader for a batch to the end of the optimiser step (so waiting
for data is included). *Bare step*: ``Trainer.step`` of the same assembled run, repeated on one
batch already in memory (device views, normalisation, forward, backward, optimiser; no loader).
Targets (issue 15): engine >= 85% of the bare step on the CPU micro-world preset, >= 90% on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROWS = {  # name -> (preset, overrides)
    "micro": ("microworld_n100_m200_g20_consistent", ["method=fixmatch", "finetune=lft"]),
    "vitb16-32px": ("synthetic_smoke", ["method=fixmatch", "finetune=lft", "model.arch=ViT-B-16",
                                        "model.pretrained=none", "train.batch_size=8", "ssl.mu=1",
                                        "adaptformer.bottleneck=64"]),
}


def _config(preset: str, overrides: list[str], augment_on: str, steps: int, workers: int | None, out: Path):
    from ulfine.config import load_config

    extra = [f"data.num_workers={workers}"] if workers is not None else []
    return load_config(preset, [*overrides, *extra, f"data.augment_on={augment_on}", "train.epochs=1",
                                f"train.steps_per_epoch={steps}", "train.progress=false", "eval.pseudo_label_max=64",
                                f"output_dir={out}", f"cache.dir={out}-cache", "model.text_cache_dir=null"])


def engine_rate(cfg) -> float:
    """Images/s of optimiser steps in a real run (data waiting included)."""
    from ulfine.engine import train

    run_dir = train(cfg)
    return json.loads((run_dir / "final_metrics.json").read_text())["cost"]["train_images_per_s"]


def bare_rate(cfg, steps: int) -> float:
    """Images/s of ``Trainer.step`` alone on one in-memory batch of the same run."""
    from ulfine.engine.run import build_trainer
    from ulfine.engine.rundir import prepare_run_dir
    from ulfine.engine.runtime import make_runtime

    rt = make_runtime(cfg.train.device, cfg.train.precision)
    cfg, run = prepare_run_dir(cfg, rt)
    trainer = build_trainer(cfg, rt, run.path, report=False)
    host = next(trainer.start_stream().batches)
    trainer.step(host)  # warm-up
    t0 = time.perf_counter()
    images = sum(trainer.step(host) for _ in range(steps))
    return images / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per measurement")
    parser.add_argument("--workers", type=int, default=None, help="data.num_workers (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating engine/bare measurements (median)")
    args = parser.parse_args(argv)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    lines = [f"device: {device}; {args.steps} steps per measurement", "",
             "| row | views made on | engine images/s | bare step images/s | engine / bare |",
             "|---|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="ulfine-loop-") as tmp:
        for name in args.rows:
            preset, overrides = ROWS[name]
            steps = args.steps if name == "micro" else max(2, args.steps // 5)
            for where in ("host", "device"):
                engines, bares = [], []
                for r in range(args.repeats):  # alternate, so load changes hit both alike
                    out = Path(tmp) / f"{name}-{where}-{r}"
                    engines.append(engine_rate(_config(preset, overrides, where, steps, args.workers, out)))
                    bare_cfg = _config(preset, overrides, where, steps, args.workers, out.with_name(out.name + "-bare"))
                    bares.append(bare_rate(bare_cfg, steps))
                eng, bare = statistics.median(engines), statistics.median(bares)
                lines.append(f"| {name} | {where} | {eng:.1f} | {bare:.1f} | {100 * eng / bare:.0f}% |")
                print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
