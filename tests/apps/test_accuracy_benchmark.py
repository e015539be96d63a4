"""benchmarks/accuracy.py without training: a table rebuilt from its rows with ``--aggregate-only
--publish`` states how the rows' runs ran (side by side, threads), not how the rebuild was called,
and reads rows of older benchmarks that did not record it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_script(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _load_script("benchmarks/accuracy.py")
PRESET = "microworld_n100_m200_g20_consistent"


def fake_row(label: str, seed: int, overall: float, **how: object) -> dict:
    """A rows.jsonl line as accuracy.py's worker writes it (``how``: absent from older rows)."""
    return {"label": label, "preset": PRESET, "seed": seed, "overall": overall, "head": 0.9, "medium": 0.6,
            "tail": 0.3, "tail_pl_precision": float("nan"), "train_seconds": 30.0, "per_class_acc": [0.5] * 4,
            "group_rule": "first 30% head", "run_dir": "x", **how}


def test_aggregate_only_publish_states_how_the_rows_ran(tmp_path, capsys):
    out, published = tmp_path / "out", tmp_path / "table.json"
    out.mkdir()
    rows = [fake_row("LFT + FixMatch", s, 0.60 + 0.1 * (s - 3), workers=2, threads=1) for s in (3, 4)]
    rows.append(fake_row("LFT + FixMatch", 5, 0.80))  # a row of an older benchmark
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--aggregate-only", "--settings", "consistent", "--regimes", "n100", "--out", str(out),
            "--workers", "1", "--threads", "2", "--publish", str(published)]
    assert bench.main(argv) == 0
    record = json.loads(published.read_text())
    (entry,) = record["results"]
    assert entry["seeds"] == [3, 4, 5] and abs(entry["overall"]["mean"] - 0.7) < 1e-9
    assert record["machine"] == "host not recorded: 2 run(s) 2 at a time x 1 thread(s); 1 run(s) without a record of it"
    assert "x 2 thread" not in record["machine"] and "--aggregate-only" not in record["command"]
    assert "0 runs to do" in capsys.readouterr().out
