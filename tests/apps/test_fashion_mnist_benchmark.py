"""benchmarks/fashion_mnist.py without training: which runs it plans (a re-run skips finished
runs, a --budget run never stands in for a full one) and the tables it makes of finished rows
(mean ± std over seeds, geometric mean of recall, each run's wall time)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_script(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # the process pool pickles its worker function by module name
    spec.loader.exec_module(mod)
    return mod


bench = _load_script("benchmarks/fashion_mnist.py")
CONSISTENT = "fashion_mnist_n500_m4000_g100_consistent_scratch"


def fake_row(label: str, seed: int, overall: float, tail: float, gm: float | None, wall: float,
             budget: float | None = None, preset: str = CONSISTENT, **how: object) -> dict:
    """A rows.jsonl line as the worker writes it (the engine's final_metrics keys it reads);
    ``how``: its ``workers``, ``threads`` and ``resumed`` (absent from rows of older benchmarks)."""
    metrics = {"overall_acc": overall, "group_acc": {"head": 0.9, "medium": 0.6, "tail": tail},
               "geometric_mean_recall": gm, "train_seconds": wall - 60.0, "wall_seconds": wall,
               "group_rule": {"text": "first 30% head, last 30% tail"}}
    return {"preset": preset, "label": label, "seed": seed, "budget": budget, "run_dir": "x", **how, "metrics": metrics}


def first_cells(md: str, label: str) -> list[str]:
    """The cells after the label of the first Markdown table line of ``label``."""
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.split("|")[2:-1]]


def test_every_method_is_registered_and_runs_on_the_scratch_preset():
    from ulfine.config import load_config

    names = [name for _, name in bench.METHODS]
    assert names == ["supervised", "fixmatch", "acr", "abc", "daso", "debiaspl", "simpro", "cdmad", "cpe"]
    for spec in bench.method_specs():  # each validates on the preset (a scratch WRN, no text tower)
        assert load_config(CONSISTENT, list(spec.overrides)).method in names


def test_plan_skips_finished_runs_and_keeps_budget_runs_apart():
    done = [fake_row("FixMatch", 0, 0.8, 0.3, 0.5, 1500.0),
            fake_row("ACR", 1, 0.8, 0.3, 0.5, 90.0, budget=0.02)]
    full = bench.plan_jobs(["consistent"], ["FixMatch", "ACR"], [0, 1], None, done)
    assert [(j.label, j.seed) for j in full] == [("ACR", 0), ("FixMatch", 1), ("ACR", 1)]  # seed by seed
    smoke = bench.plan_jobs(["consistent", "reversed"], ["ACR"], [1], 0.02, done)
    assert [(j.preset, j.seed) for j in smoke] == [(bench.preset_name("reversed"), 1)]
    assert bench.runs_dir(Path("o"), 0.02) != bench.runs_dir(Path("o"), None)


def test_budget_overrides_are_the_engines_own_cut():
    assert bench.budget_overrides(CONSISTENT, None) == []
    assert bench.budget_overrides(CONSISTENT, 0.02) == ["train.epochs=1", "train.steps_per_epoch=40"]


def test_tables_show_mean_std_gm_recall_and_each_runs_wall_time(tmp_path):
    rows = [fake_row("supervised", 0, 0.70, 0.10, None, 600.0),
            fake_row("FixMatch", 0, 0.80, 0.30, 0.50, 1500.0),
            fake_row("FixMatch", 1, 0.84, 0.40, 0.60, 1620.0),
            fake_row("FixMatch", 2, 0.10, 0.00, 0.00, 30.0, budget=0.02)]  # a smoke run: left out
    records = bench.records_of(rows, [CONSISTENT], None)
    md = bench.write_tables(tmp_path, records, [CONSISTENT], {"command": "python x", "seeds": [0, 1]})
    cells = first_cells(md, "FixMatch")
    # overall 80 and 84: 82.0 ± 2.8; tail 35.0 ± 7.1; GM recall 55.0 ± 7.1; wall 25 and 27 min
    assert cells[0] == "82.0 ± 2.8" and cells[3] == "35.0 ± 7.1" and cells[4] == "55.0 ± 7.1"
    assert cells[6] == "26.0 ± 1.4"
    assert "| supervised |" in md and "- command: python x" in md
    per_run = md.split("### every run")[1]
    assert "| FixMatch | 1 | 84.0 | 60.0 | 26.0 | 27.0 |" in per_run and "| 0.5 |" not in per_run
    assert "| supervised | 0 | 70.0 | - | 9.0 | 10.0 |" in per_run  # no GM recall recorded
    assert (tmp_path / "fashion_mnist.md").read_text() == md
    summary = json.loads((tmp_path / "fashion_mnist.json").read_text())
    fixmatch = next(e for e in summary["results"] if e["method"] == "FixMatch")
    assert fixmatch["seeds"] == [0, 1] and fixmatch["overall"]["mean"] == pytest.approx(0.82)
    sup = next(e for e in summary["results"] if e["method"] == "supervised")
    assert sup["gm_recall"]["mean"] != sup["gm_recall"]["mean"]  # not recorded: NaN, shown as "-"


def test_a_continued_run_has_no_wall_time_and_is_named(tmp_path):
    """A run continued from a checkpoint: its last attempt's wall time would understate it, so the
    tables leave it out (the mean is the other runs') and the header names the run."""
    rows = [fake_row("FixMatch", 0, 0.80, 0.30, 0.50, 1500.0, workers=2, threads=1, resumed=False),
            fake_row("FixMatch", 1, 0.84, 0.40, 0.60, 600.0, workers=2, threads=1, resumed=True)]
    args = bench.argparse.Namespace(budget=None, overrides=[], publish=None, seeds=[0, 1], settings=["consistent"])
    about = bench.about_runs(args, [], [CONSISTENT], rows)
    md = bench.write_tables(tmp_path, bench.records_of(rows, [CONSISTENT], None), [CONSISTENT], about)
    assert first_cells(md, "FixMatch")[6] == "25.0"  # seed 0's 1500 s alone
    assert "| FixMatch | 1 | 84.0 | 60.0 | 9.0 | - |" in md.split("### every run")[1]
    assert "- continued from a checkpoint (wall time left out): FixMatch seed 1" in md
    assert "- machine: host not recorded: 2 run(s) 2 at a time x 1 thread(s)\n" in md


def test_machine_line_names_each_host_with_its_runs(tmp_path):
    """Rows made on two VMs (same CPU name, different kernels) and rows of an older grid without a
    host: the table names each host with its own runs, in the order the rows came."""
    avx2, avx512 = "x86_64 CPU (AMD EPYC, torch kernels AVX2), 2 cores", "x86_64 CPU (AMD EPYC, torch kernels AVX512), 2 cores"
    rows = [fake_row("ACR", 0, 0.8, 0.5, 0.7, 1800.0, workers=2, threads=1),
            fake_row("ACR", 1, 0.8, 0.5, 0.7, 1800.0, workers=2, threads=1, host=avx2),
            fake_row("ACR", 2, 0.8, 0.5, 0.7, 900.0, workers=2, threads=1, host=avx512),
            fake_row("ABC", 2, 0.8, 0.5, 0.7, 900.0, workers=1, threads=2, host=avx512)]
    args = bench.argparse.Namespace(budget=None, overrides=[], publish=None, seeds=[0, 1, 2], settings=["consistent"])
    md = bench.write_tables(tmp_path, bench.records_of(rows, [CONSISTENT], None), [CONSISTENT],
                            bench.about_runs(args, [], [CONSISTENT], rows))
    assert (f"- machine: host not recorded: 1 run(s) 2 at a time x 1 thread(s) | {avx2}: 1 run(s) 2 at a time x 1 "
            f"thread(s) | {avx512}: 1 run(s) 2 at a time x 1 thread(s); 1 run(s) 1 at a time x 2 thread(s)\n") in md


def test_aggregate_only_rebuilds_the_tables_from_rows_jsonl(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    rows = [fake_row("ACR", s, 0.85 + 0.01 * s, 0.5, 0.7, 1800.0, workers=2, threads=1) for s in (0, 1)]
    rows.append(fake_row("ACR", 2, 0.87, 0.5, 0.7, 1800.0))  # a row of an older benchmark
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.main(["--aggregate-only", "--out", str(out), "--threads", "2"]) == 0
    md = (out / "fashion_mnist.md").read_text()
    assert first_cells(md, "ACR")[0] == "86.0 ± 1.0"
    assert "40 epochs x 50 steps of batch 16 + 2 x 16 unlabeled" in md
    # the command that made the rows, not the rebuild
    assert "fashion_mnist.py --out" in md and "--aggregate-only" not in md and "seeds: [0, 1, 2]" in md
    # how the runs ran, not how the rebuild was called (--threads 2)
    assert "host not recorded: 2 run(s) 2 at a time x 1 thread(s); 1 run(s) without a record of it" in md
    assert "x 2 thread" not in md
    assert "0 runs to do" in capsys.readouterr().out


def test_one_tiny_run_end_to_end_then_skipped_on_rerun(tmp_path, capsys, monkeypatch):
    """One real engine run (one step of a scratch WRN on IDX files written here) through the
    benchmark's pool: its row carries the engine's metrics and its wall time, and a re-run skips it."""
    import numpy as np
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "tests" / "data"))
    from datafakes import write_idx

    rng = np.random.default_rng(0)
    for name, n in (("train", 200), ("t10k", 20)):
        write_idx(tmp_path / "fashion_mnist", f"{name}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz=False)
        write_idx(tmp_path / "fashion_mnist", f"{name}-labels-idx1-ubyte", np.arange(n) % 10, gz=False)
    out = tmp_path / "out"
    args = ["--methods", "fixmatch", "--seeds", "3", "--out", str(out), "--budget", "0.0007", "--threads", "1",
            f"data.root={tmp_path}", "data.num_labeled_head=4", "data.num_unlabeled_head=8",
            "data.imbalance_labeled=4", "data.imbalance_unlabeled=4", "train.batch_size=2",
            "eval.pseudo_label_max=8", "eval.batch_size=32"]
    assert bench.main(args) == 0
    (row,) = bench.read_rows(out / "rows.jsonl")
    m = row["metrics"]
    assert (row["label"], row["seed"], row["budget"]) == ("FixMatch", 3, 0.0007)
    assert m["steps"] == 1 and m["images_seen"] == {"labeled": 2, "unlabeled": 4} and m["num_images"] == 20
    assert m["wall_seconds"] >= m["train_seconds"] > 0
    assert (row["workers"], row["threads"], row["resumed"]) == (1, 1, False)
    assert row["host"].endswith(f"cores, torch {torch.__version__}") and "torch kernels " in row["host"]
    assert Path(row["run_dir"]).parent == bench.runs_dir(out, 0.0007)
    assert bench.main(args) == 0 and "0 runs to do (1 rows" in capsys.readouterr().out
    assert len(bench.read_rows(out / "rows.jsonl")) == 1


def test_shown_command_is_the_line_to_rerun_without_the_rebuild_options():
    grid = sys.modules["_grid"]  # loaded by the benchmark script above
    bare = grid.shown_command("benchmarks/fashion_mnist.py", ["--aggregate-only"], None)
    assert bare == "python benchmarks/fashion_mnist.py"  # no trailing blank
    argv = ["--aggregate-only", "--out", "my runs", "--publish", "p.json"]
    assert grid.shown_command("benchmarks/fashion_mnist.py", argv, "p.json") == (
        "python benchmarks/fashion_mnist.py --out 'my runs'")
