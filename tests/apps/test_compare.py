"""The comparisons the demo and the accuracy benchmark run."""

from __future__ import annotations

from pathlib import Path

from ulfine.apps.compare import BENCHMARK_METHODS, DEMO_METHODS, run_dir_for


def test_demo_compares_the_five_methods_of_the_issue() -> None:
    assert [m.label for m in DEMO_METHODS] == [
        "zero-shot", "LP + FixMatch", "LFT + FixMatch", "FFT + FixMatch", "ULFine (LFT)"]
    assert len({m.slug for m in DEMO_METHODS}) == 5


def test_benchmark_methods_have_distinct_run_folders() -> None:
    dirs = {run_dir_for(m, "p", 0, Path("runs")) for m in BENCHMARK_METHODS}
    assert len(dirs) == len(BENCHMARK_METHODS) == 9
    assert run_dir_for(DEMO_METHODS[4], "p", 2, Path("runs")) == Path("runs/p-ulfine-lft-s2")
