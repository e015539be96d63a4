"""``ulfine`` end to end through the engine: tiny CLIP + synthetic10, offline, a few CPU steps."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from ulfine.config import load_config
from ulfine.engine import train
from ulfine.methods.ulfine import paf


def test_ulfine_trains_and_logs_paf_diagnostics(tmp_path):
    cfg = load_config("synthetic_smoke", [
        "method=ulfine", f"output_dir={tmp_path / 'run'}", "train.steps_per_epoch=2",
        "train.batch_size=4", "eval.pseudo_label_max=20",
        "ssl.tau=0.1",  # every pseudo-label of 10 classes is confident: the memory must fill
        "ulfine.mu_paf=0.5",
    ])
    run_dir = train(cfg)
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["steps"] == 2 and 0.0 <= final["overall_acc"] <= 1.0
    diag = final["method_diagnostics"]
    assert len(diag["alpha"]) == 10 and len(diag["angle_deg"]) == 10
    assert max(diag["alpha"]) == 0.5  # mu_paf for the class with the largest P_u
    assert diag["angle_deg_max"] > 0.0  # the prototypes moved away from their text anchors
    # 2 steps x mu*B = 8 unlabeled visits, all confident: at most 8 samples in memory
    assert 0 < sum(diag["pseudo_label_counts"]) <= 8
    # the evaluation log carries the same diagnostics
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert evals[-1]["method_diagnostics"]["alpha"] == diag["alpha"]
    # PAF state is saved with the weights and agrees with the diagnostics
    w = load_file(str(run_dir / "weights.safetensors"))
    counts = torch.bincount(w["memory_label"][w["memory_label"] >= 0], minlength=10)
    assert counts.tolist() == diag["pseudo_label_counts"]
    pu = paf.pseudo_label_distribution(w["memory_label"], w["memory_conf"], 10)
    torch.testing.assert_close(w["alpha"], paf.fitting_momentum(pu, 0.5))
    torch.testing.assert_close(w["visual_prototypes"].norm(dim=-1), torch.ones(10))
    assert "linear_head.fc.weight" in w and "prototype_head.prototypes" in w
    # every branch's test accuracy is reported; the fused branch is the decision (overall_acc)
    assert set(final["branch_acc"]) == {"linear", "prototype", "fused"}
    assert abs(final["branch_acc"]["fused"] - final["overall_acc"]) < 1e-6
    assert all(0.0 <= a <= 1.0 for a in final["branch_acc"].values())
