"""2 CPU processes (torchrun, gloo) take the same optimiser steps on the same samples as 1."""

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

WORKER = Path(__file__).with_name("dist_worker.py")
ARGS = {
    "fixmatch": ["method=fixmatch", "finetune=lft"],
    # a scratch method (on the LayerNorm micro ViT: BatchNorm statistics are per process, see
    # docs/engine.md): its class counts are summed over processes, so tau moves identically
    "acr": ["method=acr", "finetune=lft", "ssl.tau=0.0", "acr.estimate_from_epoch=0", "acr.ema_u=0.5"],
}


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
@pytest.mark.parametrize("method", list(ARGS))
def test_two_processes_match_one(tmp_path, method):
    _run([sys.executable, str(WORKER), str(tmp_path / "one"), *ARGS[method]])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
          str(WORKER), str(tmp_path / "two"), *ARGS[method]])
    one = json.loads((tmp_path / "one/run/final_metrics.json").read_text())
    two = json.loads((tmp_path / "two/run/final_metrics.json").read_text())
    assert one["steps"] == two["steps"] == 2
    assert one["images_seen"] == two["images_seen"] == {"labeled": 8, "unlabeled": 8}
    wa = load_file(tmp_path / "one/run/weights.safetensors")
    wb = load_file(tmp_path / "two/run/weights.safetensors")
    for k in wa:  # averaged gradients of the two halves == gradient of the whole batch
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    if method == "acr":
        assert wa["tau"].item() != 2.0  # the estimate ran (and agrees, above)
