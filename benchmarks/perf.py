"""ulfine performance harness: our training choices against the peers', side by side, one run.

    python benchmarks/perf.py                      # auto device; ViT-B-16 on CUDA, tiny arch on CPU
    python benchmarks/perf.py --device cpu --quick # smoke run (seconds)
    python benchmarks/perf.py --only a,d --steps 50

Sections (docs/performance.md explains each and the targets):
  (a) LFT FixMatch training step: images/s and peak memory, ulfine vs benchmarks/naive_reference.py
      at equal batch; plus which attention kernels run (fused SDPA in every fine-tuning mode).
  (b) data pipeline: 32 px augment + on-device resize vs per-image PIL resize to 224 + augment.
  (c) linear-probe epoch: memory-mapped cached features vs the frozen tower every epoch.
  (d) achieved FLOP/s of our step as a fraction of a large square matmul on the same device.

Prints the JSON and a Markdown table to stdout and writes benchmarks/results/perf-<device>.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import device_name, matmul_flops, mib, pick_device

TARGETS = {
    "a_speedup": {"cpu": 1.5, "cuda": 2.0},  # ulfine images/s over naive
    "a_memory_ratio": 0.7,  # ulfine peak / naive peak (at most)
    "b_speedup": 3.0,
    "c_speedup": 20.0,
    "d_fraction": 0.5,  # aim for ViT-B/16 on GPU
}
SECTIONS = ("a", "b", "c", "d")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (default auto)")
    p.add_argument("--arch", default=None,
                   help="open_clip arch (default: ViT-B-16 on CUDA, ulfine-micro-vit on CPU)")
    p.add_argument("--batch-size", type=int, default=32, help="labeled batch B; mu*B unlabeled")
    p.add_argument("--mu", type=int, default=1, help="unlabeled ratio (FixMatch mu)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per model")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps per model")
    p.add_argument("--quick", action="store_true", help="tiny budgets (smoke test, CI)")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections: a,b,c,d")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--workers", type=int, default=0,
                   help="data-loader workers for BOTH pipelines in (b) (default 0: per-core rate)")
    p.add_argument("--lp-images", type=int, default=None, help="images in the (c) LP epoch")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="also time train.compile=true in (a) (auto: on CUDA unless --quick)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default benchmarks/results/perf-<device>.json)")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in SECTIONS]
    if bad:
        p.error(f"--only: unknown section(s) {bad}; choose from a,b,c,d")
    return args


def budgets(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Per-device defaults: < 8 min for ViT-B/16 on a GPU, ~3 min for the tiny arch on CPU."""
    gpu = device.type == "cuda"
    if args.quick:
        b = {"warmup": 1, "steps": 2, "rounds": 1, "pipe_batches": 1, "lp_images": 256,
             "lp_epochs": 1, "matmul_n": 2048 if gpu else 256}
    else:
        b = {"warmup": 5 if gpu else 2, "steps": 30 if gpu else 12, "rounds": 5 if gpu else 4,
             "pipe_batches": 12 if gpu else 4, "lp_images": 8192 if gpu else 2048,
             "lp_epochs": 2, "matmul_n": 8192 if gpu else 1024}
    if args.steps is not None:
        b["steps"] = args.steps
        b["rounds"] = max(1, min(b["rounds"], args.steps))
    if args.warmup is not None:
        b["warmup"] = args.warmup
    if args.lp_images is not None:
        b["lp_images"] = args.lp_images
    b["compile"] = args.compile == "on" or (args.compile == "auto" and gpu and not args.quick)
    return b


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def section_a(arch: str, device: torch.device, args: argparse.Namespace, bud: dict[str, Any],
              built: dict[str, Any]) -> dict[str, Any]:
    import _train as T

    ours, ref = built["ours"], built["naive"]
    images = built["images_per_step"]
    times = T.time_steps([ours, ref], device, warmup=bud["warmup"], steps=bud["steps"],
                         rounds=bud["rounds"])
    mem_ours = T.step_memory(ours, [ref], device)
    mem_ref = T.step_memory(ref, [ours], device)
    key = "peak_total_bytes" if device.type == "cuda" else "peak_step_bytes"
    out: dict[str, Any] = {
        "ours": {"step_s": times["ulfine"]["median_s"],
                 "images_per_s": images / times["ulfine"]["median_s"], "timing": times["ulfine"],
                 "memory": mem_ours, "attention": T.attention_kernels(ours.step),
                 **{k: v for k, v in ours.info.items() if k != "method"}},
        "naive": {"step_s": times["naive"]["median_s"],
                  "images_per_s": images / times["naive"]["median_s"], "timing": times["naive"],
                  "memory": mem_ref, "attention": T.attention_kernels(ref.step), **ref.info},
        "speedup": times["naive"]["median_s"] / times["ulfine"]["median_s"],
        "memory_ratio": _ratio(mem_ours[key], mem_ref[key]),
        "memory_metric": key,
        "fused_attention_by_mode": T.fused_attention_by_mode(device),
        "setup": {"arch": arch, "batch_size": args.batch_size, "mu": args.mu,
                  "images_per_step": images, "image_size": built["size"],
                  "warmup": bud["warmup"], "steps": times["ulfine"]["calls"],
                  "rounds": bud["rounds"], "timing": "median over interleaved rounds"},
    }
    if bud["compile"]:
        try:
            comp = T.compile_ours(ours, device, bud["warmup"], bud["steps"])
            comp["images_per_s"] = images / comp["median_s"]
            comp["speedup_vs_naive"] = times["naive"]["median_s"] / comp["median_s"]
            comp["speedup_vs_eager"] = times["ulfine"]["median_s"] / comp["median_s"]
            out["ours_compiled"] = comp
        except Exception as e:  # compile is optional; report why it did not run
            out["ours_compiled"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    return out


def section_d(device: torch.device, bud: dict[str, Any], built: dict[str, Any],
              a: dict[str, Any] | None) -> dict[str, Any]:
    import _flops
    from _common import timed

    ours, ref = built["ours"], built["naive"]
    flops_ours = _flops.count_step_flops(ours.step)
    flops_ref = _flops.count_step_flops(ref.step)
    if a is not None:
        step_s = a["ours"]["step_s"]
    else:
        for _ in range(bud["warmup"]):
            ours.step()
        step_s = timed(ours.step, device, bud["steps"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    mm = matmul_flops(device, n=bud["matmul_n"], dtype=dtype)
    out = {"ours": {**_flops.fraction(flops_ours["flops"], step_s, mm["flops_per_s"]),
                    "step_flops": flops_ours["flops"], "step_s": step_s,
                    "flops_by_op": flops_ours["by_op"]},
           "naive": {"step_flops": flops_ref["flops"]},
           "matmul": mm,
           "setup": {"counter": "torch.utils.flop_counter.FlopCounterMode on one step "
                                "(+ CPU flash-attention formula)",
                     "matmul": f"{mm['n']}x{mm['n']} @ {mm['n']}x{mm['n']} {mm['dtype']}"}}
    if a is not None:
        out["naive"].update(_flops.fraction(flops_ref["flops"], a["naive"]["step_s"], mm["flops_per_s"]))
        comp = a.get("ours_compiled", {})
        if "median_s" in comp:
            out["ours_compiled"] = _flops.fraction(flops_ours["flops"], comp["median_s"], mm["flops_per_s"])
    return out


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def summary_rows(res: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """One row per headline figure: value for ulfine, value for the reference, ratio, target."""
    rows: list[dict[str, Any]] = []
    dev = device.type
    if "a" in res:
        a = res["a"]
        tgt = TARGETS["a_speedup"]["cuda" if dev == "cuda" else "cpu"]
        rows.append({"section": "a", "measure": "train step images/s",
                     "ours": a["ours"]["images_per_s"], "naive": a["naive"]["images_per_s"],
                     "ratio": a["speedup"], "target": f">= {tgt}x", "met": a["speedup"] >= tgt})
        unit = "peak memory MiB (" + ("max_memory_allocated" if dev == "cuda" else "step, profiler") + ")"
        key = a["memory_metric"]
        rows.append({"section": "a", "measure": unit,
                     "ours": mib(a["ours"]["memory"][key]), "naive": mib(a["naive"]["memory"][key]),
                     "ratio": a["memory_ratio"], "target": f"<= {TARGETS['a_memory_ratio']}x",
                     "met": a["memory_ratio"] <= TARGETS["a_memory_ratio"]})
        modes = a["fused_attention_by_mode"]
        rows.append({"section": "a", "measure": "fused SDPA calls / explicit attn softmax per step",
                     "ours": f"{a['ours']['attention']['fused_forward']} / "
                             f"{a['ours']['attention']['explicit_attention_softmax']}",
                     "naive": f"{a['naive']['attention']['fused_forward']} / "
                              f"{a['naive']['attention']['explicit_attention_softmax']}",
                     "ratio": None, "target": f"fused in all {len(modes)} fine-tuning modes",
                     "met": all(m["ok"] for m in modes.values())})
        comp = a.get("ours_compiled")
        if comp and "images_per_s" in comp:
            rows.append({"section": "a", "measure": "train step images/s, train.compile=true",
                         "ours": comp["images_per_s"], "naive": a["naive"]["images_per_s"],
                         "ratio": comp["speedup_vs_naive"], "target": "(informative)", "met": None})
    if "b" in res:
        b = res["b"]
        rows.append({"section": "b", "measure": "pipeline images/s (32 px -> 224, weak+strong)",
                     "ours": b["ours"]["images_per_s"], "naive": b["naive"]["images_per_s"],
                     "ratio": b["speedup"], "target": f">= {TARGETS['b_speedup']}x",
                     "met": b["speedup"] >= TARGETS["b_speedup"]})
    if "c" in res:
        c = res["c"]
        rows.append({"section": "c", "measure": "LP epoch images/s (cached vs tower)",
                     "ours": c["ours"]["images_per_s"], "naive": c["naive"]["images_per_s"],
                     "ratio": c["speedup"], "target": f">= {TARGETS['c_speedup']}x",
                     "met": c["speedup"] >= TARGETS["c_speedup"]})
    if "d" in res:
        d = res["d"]
        frac = d["ours"]["fraction_of_matmul"]
        rows.append({"section": "d", "measure": f"achieved TFLOP/s (matmul {d['matmul']['dtype']} "
                                                f"= {d['matmul']['flops_per_s'] / 1e12:.3g})",
                     "ours": d["ours"]["achieved_flops_per_s"] / 1e12,
                     "naive": d["naive"].get("achieved_flops_per_s", float("nan")) / 1e12,
                     "ratio": frac, "target": f"fraction >= {TARGETS['d_fraction']:.0%} (GPU aim)",
                     "met": frac >= TARGETS["d_fraction"] if dev == "cuda" else None})
        if "ours_compiled" in d:
            rows.append({"section": "d", "measure": "achieved TFLOP/s, train.compile=true",
                         "ours": d["ours_compiled"]["achieved_flops_per_s"] / 1e12, "naive": None,
                         "ratio": d["ours_compiled"]["fraction_of_matmul"], "target": "(informative)",
                         "met": None})
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = (f"ulfine perf on {meta['device_name']} ({meta['device']}), arch {meta['arch']}, "
            f"batch {meta['batch_size']} labeled + {meta['mu']}x{meta['batch_size']} unlabeled"
            f"{', QUICK' if meta['quick'] else ''}\n\n")
    lines = ["| sec | measure | ulfine | naive reference | ratio | target | met |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else (f"{r['ratio']:.1%}" if r["section"] == "d"
                                                else f"{r['ratio']:.2f}x")
        lines.append(f"| {r['section']} | {r['measure']} | {_fmt(r['ours'])} | {_fmt(r['naive'])} "
                     f"| {ratio} | {r['target']} | {_met(r['met'])} |")
    return head + "\n".join(lines) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected sections; return the result dict (also what gets written as JSON)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    arch = args.arch or ("ViT-B-16" if device.type == "cuda" else "ulfine-micro-vit")
    bud = budgets(args, device)
    t_start = time.perf_counter()
    import open_clip

    meta = {"device": str(device), "device_name": device_name(device), "arch": arch,
            "batch_size": args.batch_size, "mu": args.mu, "quick": args.quick,
            "sections": args.only, "budgets": bud, "torch": torch.__version__,
            "open_clip": open_clip.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    res: dict[str, Any] = {"meta": meta, "targets": TARGETS}
    built: dict[str, Any] = {}
    if "a" in args.only or "d" in args.only:
        import _train as T

        from ulfine.models import register_archs  # noqa: F401  (tiny arch into open_clip)

        size = _model_size(arch)
        batch = T.make_batch(device, args.batch_size, args.mu, size)
        ours, ref = T.build_steps(arch, device, batch)
        built = {"ours": ours, "naive": ref, "size": size,
                 "images_per_step": args.batch_size * (1 + 2 * args.mu)}
    section_time: dict[str, float] = {}
    if "a" in args.only:
        t0 = time.perf_counter()
        res["a"] = section_a(arch, device, args, bud, built)
        section_time["a"] = time.perf_counter() - t0
    if "b" in args.only:
        import _pipeline

        t0 = time.perf_counter()
        res["b"] = _pipeline.run_pipeline(device, size=224, batch=args.batch_size, mu=args.mu,
                                          workers=args.workers, batches=bud["pipe_batches"])
        section_time["b"] = time.perf_counter() - t0
    if "c" in args.only:
        import _lp

        t0 = time.perf_counter()
        res["c"] = _lp.run_lp(arch, device, num_images=bud["lp_images"], epochs=bud["lp_epochs"])
        section_time["c"] = time.perf_counter() - t0
    if "d" in args.only:
        t0 = time.perf_counter()
        res["d"] = section_d(device, bud, built, res.get("a"))
        section_time["d"] = time.perf_counter() - t0
    meta["section_seconds"] = {k: round(v, 1) for k, v in section_time.items()}
    meta["total_seconds"] = round(time.perf_counter() - t_start, 1)
    res["summary"] = summary_rows(res, device)
    return _jsonable(res)


def _model_size(arch: str) -> int:
    import open_clip

    from ulfine.models import register_archs

    register_archs()
    cfg = open_clip.get_model_config(arch.replace("/", "-")) or {}
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    device = res["meta"]["device"].split(":")[0]
    out = args.out or Path(__file__).resolve().parent / "results" / f"perf-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(res, indent=2)
    out.write_text(text + "\n")
    print(text)
    print()
    print(markdown(res["summary"], res["meta"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
