"""A --quick run of benchmarks/perf.py on the tiny arch yields all four sections as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_quick_harness_writes_all_sections(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import perf

    out = tmp_path / "perf.json"
    threads = torch.get_num_threads()
    try:
        rc = perf.main(["--device", "cpu", "--quick", "--arch", "ulfine-micro-vit",
                        "--batch-size", "2", "--steps", "1", "--lp-images", "64",
                        "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    res = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "| sec | measure |" in printed
    assert {"a", "b", "c", "d", "meta", "summary", "targets"} <= set(res)
    a, b, c, d = res["a"], res["b"], res["c"], res["d"]
    assert a["setup"]["images_per_step"] == 6  # 2 labeled + 2 weak + 2 strong
    assert a["ours"]["images_per_s"] > 0 and a["naive"]["images_per_s"] > 0
    assert a["ours"]["attention"]["fused_forward"] == 8  # 4 blocks x (weak + labeled/strong)
    assert a["naive"]["attention"]["fused_forward"] == 0
    assert all(m["ok"] for m in a["fused_attention_by_mode"].values())
    assert a["ours"]["memory"]["peak_step_bytes"] > 0
    assert b["ours"]["images"] == b["naive"]["images"] > 0
    assert c["setup"]["images"] == 64 and c["speedup"] > 1
    assert 0 < d["ours"]["fraction_of_matmul"] and d["ours"]["step_flops"] > 1e6
    assert {r["section"] for r in res["summary"]} == {"a", "b", "c", "d"}
