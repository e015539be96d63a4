"""``ulfine compare`` aggregates seeds on hand-made run folders: mean ± sample std per cell, one
value for a single run, and a note when a cell's runs differ in more than their seed."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from ulfine.apps.run_table import compare_runs
from ulfine.cli import main


def _run(root: Path, name: str, method: str, preset: str, seed: int, overall: float, tail: float,
         **extra: object) -> Path:
    run = root / name
    run.mkdir(parents=True)
    config = {"preset": preset, "method": method, "finetune": "lft", "peft": "adaptformer", "seed": seed,
              "output_dir": str(run), "ssl": {"tau": 0.7}, "train": {"device": "cpu"}, **extra}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {"overall_acc": overall, "group_acc": {"head": 0.9, "medium": 0.5, "tail": tail}}
    (run / "final_metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        _run(tmp_path, "a0", "ulfine", "p1", 0, 0.50, 0.10),
        _run(tmp_path, "a1", "ulfine", "p1", 1, 0.60, 0.20, train={"device": "cuda"}),  # where it ran: fine
        _run(tmp_path, "a2", "ulfine", "p1", 2, 0.70, 0.30),
        _run(tmp_path, "b0", "fixmatch", "p1", 0, 0.40, 0.05),
        _run(tmp_path, "c0", "ulfine", "p2", 0, 0.30, 0.10),
        _run(tmp_path, "c1", "ulfine", "p2", 1, 0.50, 0.30, ssl={"tau": 0.95}),  # another experiment
    ]


def test_cells_are_mean_and_sample_std_over_seeds(runs: list[Path]) -> None:
    c = compare_runs(runs)
    lines = c.markdown.splitlines()
    assert lines[0] == "| method \\ setting | p1 | p2 |"
    assert "| ulfine (lft/adaptformer) | 60.0 ± 10.0 / 20.0 ± 10.0 | 40.0 ± 14.1 / 20.0 ± 14.1 |" in lines
    assert "| fixmatch (lft/adaptformer) | 40.0 / 5.0 | - |" in lines
    assert len(c.notes) == 1 and "p2" in c.notes[0] and "ssl.tau" in c.notes[0] and "train.device" not in c.notes[0]


def test_by_method_and_by_seed(runs: list[Path]) -> None:
    by_method = compare_runs(runs, by="method").markdown.splitlines()
    assert by_method[0] == "| setting \\ method | ulfine (lft/adaptformer) | fixmatch (lft/adaptformer) |"
    by_seed = compare_runs(runs[:3], by="seed").markdown.splitlines()
    assert by_seed[0] == "| run \\ seed | seed 0 | seed 1 | seed 2 |"
    assert by_seed[2] == "| ulfine (lft/adaptformer) @ p1 | 50.0 / 10.0 | 60.0 / 20.0 | 70.0 / 30.0 |"


def test_repeated_seed_is_said(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "x", "ulfine", "p", 0, 0.5, 0.1), _run(tmp_path, "y", "ulfine", "p", 0, 0.5, 0.1)]
    (note,) = compare_runs(runs).notes
    assert "share seeds [0, 0]" in note


def test_cli_writes_csv_with_raw_numbers(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "table.csv"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    assert "60.0 ± 10.0" in capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    first = rows[0]
    assert (first["row"], first["column"], first["runs"], first["seeds"]) == ("ulfine (lft/adaptformer)", "p1", "3", "0 1 2")
    assert float(first["overall_mean"]) == pytest.approx(0.6) and float(first["overall_std"]) == pytest.approx(0.1)
    assert float(first["tail_mean"]) == pytest.approx(0.2)


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    assert "is not a finished run" in capsys.readouterr().err


def test_the_fields_figures_follow_the_honest_table_labelled(tmp_path: Path) -> None:
    """compare adds, after the final-model table, the geometric mean of per-class recall and the
    best test accuracy over training, said to be selected on the test set."""
    runs = [_run(tmp_path, f"s{i}", "ulfine", "p1", i, 0.5, 0.1) for i in range(2)]
    for run, (gm, best) in zip(runs, [(0.40, 0.55), (0.50, 0.65)]):
        m = json.loads((run / "final_metrics.json").read_text())
        m.update({"geometric_mean_recall": gm, "best_test_over_training": {"overall_acc": best, "step": 3}})
        (run / "final_metrics.json").write_text(json.dumps(m))
    text = compare_runs(runs).text()
    honest, field = text.index("| ulfine (lft/adaptformer) | 50.0 ± 0.0 / 10.0 ± 0.0 |"), text.index("45.0 ± 7.1 / 60.0 ± 7.1")
    assert honest < field and "selected on the test set" in text[field:]
