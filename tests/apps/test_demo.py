"""The demo runs the real engine, writes its report, and can be run again into the same folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ulfine.apps.compare import DEMO_METHODS
from ulfine.apps.demo import clear_previous_runs
from ulfine.microworld.task import CLASS_NAMES

TINY = ["train.max_steps=2", "train.steps_per_epoch=2", "train.epochs=1", "eval.last_k=1"]


def tiny(tmp_path: Path) -> list[str]:
    """TINY with the caches in tmp_path (nothing is written into the working folder)."""
    return [*TINY, f"cache.dir={tmp_path / 'cache'}", f"model.text_cache_dir={tmp_path / 'text-cache'}"]


def test_benchmark_section_shows_the_published_table_and_its_command(tmp_path: Path) -> None:
    from ulfine.apps.demo import benchmark_section

    assert benchmark_section(tmp_path / "none.json") == ""  # nothing published: nothing shown
    cell = lambda m, s: {"mean": m, "std": s}
    entry = {"preset": "microworld_n100_m200_g20_consistent", "method": "ULFine (LFT)", "seeds": [3, 4, 5],
             "overall": cell(0.612, 0.007), "head": cell(0.75, 0.02), "medium": cell(0.6, 0.0),
             "tail": cell(0.401, 0.013), "tail_pl_precision": cell(0.9, 0.05), "train_seconds": cell(120.0, 3.0)}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"command": "python benchmarks/accuracy.py --workers 2", "seeds": [3, 4, 5],
                                "budget": "5 epochs x 50 steps", "machine": "a CPU", "date": "2026-12-06",
                                "results": [entry]}))
    text = benchmark_section(path)
    assert "seeds 3, 4, 5" in text and "`python benchmarks/accuracy.py --workers 2`" in text
    assert "### microworld_n100_m200_g20_consistent" in text
    row = next(line for line in text.splitlines() if line.startswith("| ULFine (LFT)"))
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "ULFine (LFT)", "3", "61.2 ± 0.7", "75.0 ± 2.0", "60.0 ± 0.0", "40.1 ± 1.3", "90.0 ± 5.0", "120.0 ± 3.0"]
    # one budget per label regime: each preset's is named
    record = json.loads(path.read_text())
    record["budget"] = {"microworld_n100_m200_g20_consistent": "5 epochs x 50 steps",
                        "microworld_n25_m200_g20_consistent": "10 epochs x 50 steps"}
    path.write_text(json.dumps(record))
    assert ("(microworld_n100_m200_g20_consistent: 5 epochs x 50 steps, microworld_n25_m200_g20_consistent: "
            "10 epochs x 50 steps; a CPU;") in benchmark_section(path)
    # one budget for every preset: said once
    record["budget"] = dict.fromkeys(record["budget"], "5 epochs x 50 steps")
    path.write_text(json.dumps(record))
    assert "(5 epochs x 50 steps, every preset; a CPU;" in benchmark_section(path)


def test_clear_previous_runs_only_removes_run_folders(tmp_path: Path) -> None:
    run, other, missing = tmp_path / "run", tmp_path / "notes", tmp_path / "absent"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert clear_previous_runs([run, other, missing]) == [run]
    assert not run.exists() and (other / "keep.txt").is_file()


@pytest.mark.slow
def test_demo_writes_its_report(tmp_path: Path) -> None:
    from ulfine.apps.demo import run_demo

    res = run_demo(tmp_path, methods=[DEMO_METHODS[0], DEMO_METHODS[4]], progress=False, overrides=tiny(tmp_path))
    assert [r.label for r in res.rows] == ["zero-shot", "ULFine (LFT)"]
    for name in ("report.md", "results.json", "results.csv", "group_accuracy.png", "per_class_accuracy.png"):
        assert (tmp_path / name).is_file()
    assert not math.isnan(res.rows[0].overall) and res.rows[0].overall > 0.3
    # class names are those of the split the engine trained on (its split.json)
    assert json.loads((tmp_path / "results.json").read_text())["class_names"] == list(CLASS_NAMES)


@pytest.mark.slow
def test_demo_runs_twice_into_the_same_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ulfine.apps.demo import run_demo

    methods = [DEMO_METHODS[0], DEMO_METHODS[1]]
    first = run_demo(tmp_path, methods=methods, progress=False, overrides=tiny(tmp_path))
    assert "removed" not in capsys.readouterr().out
    second = run_demo(tmp_path, methods=methods, progress=False, overrides=tiny(tmp_path))
    out = capsys.readouterr().out
    assert f"removed 2 run folder(s) of a previous demo under {tmp_path / 'runs'}" in out
    assert [r.run_dir for r in second.rows] == [r.run_dir for r in first.rows]
    assert [r.overall for r in second.rows] == [r.overall for r in first.rows]  # same seed, same numbers
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(Path(r.run_dir).name for r in second.rows)
