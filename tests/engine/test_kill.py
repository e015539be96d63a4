"""SIGKILL at random moments, again and again, then resume: the final weights are bit-identical to
an uninterrupted run's (CPU), and the run folder holds nothing half-written.

Each kill waits until a random step's checkpoint is on disk, then a random part of a step longer,
so kills land in steps, in checkpoint writes, in evaluations and in the final writes alike. The
draws come from ``ULFINE_KILL_SEED`` (random when unset; printed on failure, so a failing draw can
be replayed).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ulfine.engine.checkpoint import find_checkpoint

WORKER = Path(__file__).with_name("kill_worker.py")
ARGS = ["method=fixmatch", "finetune=lft", "ssl.tau=0.0", "train.ema=0.5", "train.epochs=2",
        "train.steps_per_epoch=4", "train.checkpoint_every_steps=1", "train.log_every=1"]
KILLS = 5
STEPS = 8


def _start(out: Path) -> tuple[subprocess.Popen, float]:
    """The worker, once it is ready to train: (process, time it said so)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(WORKER), str(out), *ARGS], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout.readline().strip() == "ready", "the worker did not start"
    return proc, time.perf_counter()


def _saved_step(run: Path) -> int:
    found = find_checkpoint(run) if run.is_dir() else None
    return 0 if found is None else found.step


def _to_the_end(out: Path) -> float:
    """Run (or resume) to completion; seconds from ready to exit."""
    proc, t0 = _start(out)
    assert proc.wait(timeout=300) == 0
    return time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_at_any_moment_then_resume_gives_identical_weights(tmp_path):
    seed = int(os.environ.get("ULFINE_KILL_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    step_seconds = _to_the_end(tmp_path / "reference") / STEPS
    killed, moments = tmp_path / "killed", []
    for _ in range(KILLS):
        saved = _saved_step(killed / "run")
        proc, _ = _start(killed)
        target, extra = rng.randint(saved, STEPS), rng.uniform(0.0, step_seconds)
        while proc.poll() is None and _saved_step(killed / "run") < target:
            time.sleep(0.002)
        time.sleep(extra)
        if proc.poll() is not None:  # it finished before the kill
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        moments.append(f"{target}+{extra:.2f}s")
    _to_the_end(killed)
    why = f"ULFINE_KILL_SEED={seed}, killed after checkpoint+seconds {moments}"
    ref, run = tmp_path / "reference" / "run", killed / "run"
    for name in ("weights.safetensors", "ema.safetensors"):
        a, b = load_file(str(ref / name)), load_file(str(run / name))
        assert a.keys() == b.keys(), why
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs; {why}"
    steps = [[json.loads(line)["step"] for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (ref, run)]
    assert steps[0] == steps[1] == [4, 8], why
    final = [json.loads((r / "final_metrics.json").read_text()) for r in (ref, run)]
    assert final[0]["overall_acc"] == final[1]["overall_acc"] and final[0]["steps"] == final[1]["steps"] == 8
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".") or p.name.startswith("checkpoint.")]
    assert not leftovers, f"{leftovers}; {why}"
