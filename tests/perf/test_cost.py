"""benchmarks/cost.py: the budgets it reads, its extrapolation, and a FLOP count checked by hand."""

from __future__ import annotations

import pytest


def test_budgets_come_from_the_presets():
    import cost

    acr, _ = cost.row_config("ACR", 2, "cpu")
    ulfine, measured = cost.row_config("ULFine", 1, "cpu")
    # ACR: 250k steps of 64 labeled + 64 unlabeled x (weak + 2 strong); ULFine: 30 x 500 of 32 + 32 x 2
    assert acr.train.epochs * acr.train.steps_per_epoch == 250_000 and cost.passes_per_step(acr) == 256
    assert ulfine.train.epochs * ulfine.train.steps_per_epoch == 15_000 and cost.passes_per_step(ulfine) == 96
    assert measured.train.batch_size == 1 and cost.passes_per_step(measured) == 3
    assert measured.model.arch == "ViT-B-16" and measured.model.pretrained == "none"


def test_extrapolation_and_ratios_by_hand():
    import cost

    base = {"measured_passes_per_step": 8, "seconds_per_step": 2.0, "iterations": 10, "passes_per_step": 256,
            "step_flops_measured": 1000}
    row = cost.full_budget({**base, "row": "ACR"})
    ref = cost.full_budget({**base, "row": "ULFine", "iterations": 5, "passes_per_step": 96})
    assert row["images_per_s"] == 4.0 and row["images"] == 2560
    assert row["flops"] == 10 * 1000 * 256 / 8 and row["wall_hours"] == 2560 / 4.0 / 3600
    cost.add_ratios([row, ref])
    assert row["ratio"]["iterations"] == 2.0 and row["ratio"]["images"] == 2560 / 480
    assert ref["ratio"] == {"iterations": 1.0, "images": 1.0, "flops": 1.0, "wall_hours": 1.0}


def test_wrn_step_flops_match_a_hand_count():
    """One real ACR step on WRN-28-2 at 32 px: 3 x the forward FLOPs per image pass (forward,
    input and weight gradients of every conv; all views share one pass), to 1%."""
    import cost

    m = cost.measure("ACR", 2, "cpu", steps=1)
    hw = {1: 32 * 32, 2: 16 * 16, 3: 8 * 8}  # output positions of each group
    widths = {1: (16, 32), 2: (32, 64), 3: (64, 128)}
    macs = 3 * 16 * 9 * hw[1]  # stem
    for g, (c_in, c_out) in widths.items():
        first = 9 * c_in * c_out + 9 * c_out * c_out + c_in * c_out  # conv1, conv2, 1x1 shortcut
        macs += (first + 3 * 2 * 9 * c_out * c_out) * hw[g]
    assert macs == 214_351_872
    assert m["measured_passes_per_step"] == 2 + 2 * 3
    per_pass = m["step_flops_measured"] / m["measured_passes_per_step"]
    assert per_pass == pytest.approx(3 * 2 * macs, rel=0.01)
    assert m["seconds_per_step"] > 0 and m["peak_memory_bytes"] > 0 and m["trainable_params"] > 1_466_128
