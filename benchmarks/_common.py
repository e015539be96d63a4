"""Timing, memory and device helpers shared by the sections of benchmarks/perf.py."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when visible, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible; use --device cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """Human-readable accelerator / CPU name for the report."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows, else "cpu"."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        model = ""
    return model or platform.processor() or "cpu"


def sync(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock time covers the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Seconds per call of ``fn`` over ``repeats`` calls (synchronised on both ends)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / max(1, repeats)


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, *, warmup: int,
                steps: int, rounds: int) -> dict[str, dict[str, float]]:
    """Time several step functions side by side: warm-up each, then alternate them in rounds.

    Alternating makes the comparison robust to load changes on a shared machine; each entry
    reports the median (and min/max) seconds per call over the rounds.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    per_round = max(1, steps // rounds)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(timed(fn, device, per_round))
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                "calls": per_round * rounds} for k, v in samples.items()}


def cpu_step_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak of live CPU-allocator bytes during ``fn`` above the level before it.

    Method: torch.profiler with ``profile_memory=True`` records every allocation and free of
    the CPU allocator; the running sum of their sizes peaks at the step's extra memory
    (activations kept for backward, gradients, temporaries). Weights and optimiser state that
    exist before the step are excluded on purpose (they are equal in both compared steps).
    """
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return _peak_from_trace(prof)


def _peak_from_trace(prof) -> int:
    """Running-sum peak of the CPU '[memory]' events of a profiler trace."""
    import json
    import os
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    finally:
        os.unlink(path)
    mem = [e for e in trace.get("traceEvents", []) if e.get("name") == "[memory]"
           and e.get("args", {}).get("Device Type", 0) == 0]
    mem.sort(key=lambda e: e.get("ts", 0))
    level = peak = 0
    for e in mem:
        level += int(e["args"]["Bytes"])
        peak = max(peak, level)
    return peak


def cuda_step_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, int]:
    """torch.cuda.max_memory_allocated over one call of ``fn`` (total and above the pre-call level)."""
    gc.collect()
    torch.cuda.empty_cache()
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak_total_bytes": int(peak), "peak_step_bytes": int(peak - before),
            "before_bytes": int(before)}


def matmul_flops(device: torch.device, *, n: int, dtype: torch.dtype, seconds: float = 1.0) -> dict[str, Any]:
    """FLOP/s of a large square ``n x n @ n x n`` matrix multiply (the device's practical peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    once = timed(lambda: a @ b, device, 1)
    reps = max(2, min(200, int(seconds / max(once, 1e-6))))
    dt = timed(lambda: a @ b, device, reps)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "flops_per_s": 2 * n**3 / dt,
            "seconds_per_matmul": dt, "repeats": reps}


def mib(nbytes: float) -> float:
    return round(nbytes / 2**20, 1)
