"""2 CPU processes (torchrun, gloo) take the same optimiser steps on the same samples as 1, for
FixMatch and ULFine, with the unlabeled loss active and the weights visibly trained."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import assert_unlabeled_loss_active, initial_weights, moved, tiny_config

WORKER = Path(__file__).with_name("dist_worker.py")
RUNS = [["method=fixmatch", "finetune=lft", "ssl.tau=0.0"],
        ["method=ulfine", "finetune=lft", "ssl.tau=0.1", "ulfine.mu_paf=0.5"],
        # a scratch method (on the LayerNorm micro ViT: BatchNorm statistics are per process, see
        # docs/engine.md): its class counts are summed over processes, so tau moves identically
        ["method=acr", "finetune=lft", "ssl.tau=0.0", "acr.estimate_from_epoch=0", "acr.ema_u=0.5"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_match_one(tmp_path):
    # AdaptFormer's dropout masks depend on each process's batch: off for the exact comparison
    args = [a for run in RUNS for a in ["--", *run, "adaptformer.dropout=0"]][1:]
    _run([sys.executable, str(WORKER), str(tmp_path / "one"), *args])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
          str(WORKER), str(tmp_path / "two"), *args])
    for i, run in enumerate(RUNS):
        one, two = tmp_path / "one" / f"r{i}" / "run", tmp_path / "two" / f"r{i}" / "run"
        fa, fb = (json.loads((r / "final_metrics.json").read_text()) for r in (one, two))
        assert fa["steps"] == fb["steps"] == 2
        assert fa["images_seen"] == fb["images_seen"] == {"labeled": 8, "unlabeled": 8}
        init = initial_weights(tiny_config(tmp_path / "init", *run, "adaptformer.dropout=0"))
        assert moved(one, init) > 100 * 1e-6, run
        assert_unlabeled_loss_active(one)
        assert_unlabeled_loss_active(two)
        wa, wb = load_file(one / "weights.safetensors"), load_file(two / "weights.safetensors")
        for k in wa:  # averaged gradients of the two halves == gradient of the whole batch
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k, run=run: f"{run} {k}: {m}")
        if "method=acr" in run:
            assert wa["tau"].item() != 2.0  # the estimate ran (and agrees, above)
