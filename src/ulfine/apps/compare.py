"""Run several methods on one preset through the real engine, one table row per run.

Why: the demo (one seed, five methods) and the accuracy benchmark (every method, three seeds,
three settings) ask the same question of the same engine; this module is the one place that
turns a method spec into a run. It uses the engine only through its two public calls,
``load_config`` and ``train``; the numbers are the engine's ``final_metrics.json``, read by
:mod:`ulfine.apps.results`, and each run gets the report ``ulfine train`` writes (:mod:`.report`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import load_config, recipe_overrides
from ..engine import train
from ..engine.checkpoint import find_checkpoint
from ..microworld.task import strategy_overrides
from .report import write_report
from .results import METRICS_FILE, Row, row_from_metrics


@dataclass(frozen=True)
class MethodSpec:
    """A row of a comparison: a label and the config overrides that make it."""

    label: str
    overrides: tuple[str, ...]

    @property
    def slug(self) -> str:
        """Folder-safe name of the row."""
        return "".join(c if c.isalnum() else "-" for c in self.label.lower()).strip("-").replace("--", "-")


def tuned(method: str) -> tuple[str, ...]:
    """``method``'s own options as the micro-world study chose them on its dev seeds (0, 1, 2,
    consistent; docs/microworld.md 7.4-7.5; ``configs/recipes/microworld.yaml``, ``tuned:``),
    with the same budget per option family as ULFine's [R] choices (the code's defaults); the code
    keeps the published [B] defaults, so these apply to this world's demo and benchmark only."""
    return recipe_overrides("microworld", "tuned", method)


def scaled(method: str) -> tuple[str, ...]:
    """``method``'s settings tied to its paper's budget or class count (pre-training steps,
    schedules, class-rank cut-offs), scaled to this world by one declared rule each
    (``configs/recipes/microworld.yaml``, ``scaled:``); empty for methods without such settings."""
    return recipe_overrides("microworld", "scaled", method)


def spec(label: str, method: str, finetune: str) -> MethodSpec:
    """A row: ``method`` with its world-scaled and tuned options on ``finetune`` at that strategy's
    recipe."""
    return MethodSpec(label, (f"method={method}", *strategy_overrides(finetune), *scaled(method),
                              *tuned(method)))


#: the demo's comparison: the paper's three ways to use the foundation model, plus ULFine
DEMO_METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("zero-shot", ("method=zeroshot", "finetune=lp")),
    spec("LP + FixMatch", "fixmatch", "lp"),
    spec("LFT + FixMatch", "fixmatch", "lft"),
    spec("FFT + FixMatch", "fixmatch", "fft"),
    spec("ULFine (LFT)", "ulfine", "lft"),
)
#: the benchmark adds the supervised and long-tailed baselines (all on LFT, like ULFine): DASO's
#: FixMatch-LA and FineSSL's own algorithm, both proven against their code (docs/method.md 6), and
#: the field's baselines of issue 24 (docs/method.md 7)
BENCHMARK_METHODS: tuple[MethodSpec, ...] = DEMO_METHODS[:4] + (
    spec("LFT supervised", "supervised", "lft"),
    spec("LFT + FixMatch-LA", "fixmatch_la", "lft"),
    spec("LFT + FineSSL", "finessl", "lft"),
    spec("LFT + LoFT", "loft", "lft"),
    spec("LFT + ABC", "abc", "lft"),
    spec("LFT + DASO", "daso", "lft"),
    spec("LFT + DebiasPL", "debiaspl", "lft"),
    spec("LFT + SimPro", "simpro", "lft"),
    spec("LFT + CDMAD", "cdmad", "lft"),
    spec("LFT + CPE", "cpe", "lft"),
    DEMO_METHODS[4],
)


def run_dir_for(spec: MethodSpec, preset: str, seed: int, runs_dir: Path) -> Path:
    """The run folder :func:`run_method` writes (so callers can find or clear it)."""
    return Path(runs_dir) / f"{preset}-{spec.slug}-s{seed}"


def continue_unfinished(run_dir: Path) -> list[str]:
    """``["resume=true"]`` for a run killed after a checkpoint and before its final metrics, else
    nothing: a grid re-run after a kill (a session's end, a reboot) continues such a run exactly
    instead of being refused by the engine (a folder that holds a run is never trained afresh)."""
    run_dir = Path(run_dir)
    unfinished = not (run_dir / METRICS_FILE).is_file() and find_checkpoint(run_dir) is not None
    return ["resume=true"] if unfinished else []


def run_method(
    spec: MethodSpec,
    preset: str,
    seed: int,
    runs_dir: Path,
    overrides: Sequence[str] = (),
    progress: bool = True,
    report: bool = True,
) -> Row:
    """Train (or, for zero-shot, just evaluate) one method with the engine, write its report
    (``RUN_DIR/report/``, unless ``report`` is false); return its row.

    ``overrides`` apply after the method's own, so they win. A run killed after a checkpoint is
    continued (:func:`continue_unfinished`).
    """
    run_dir = run_dir_for(spec, preset, seed, runs_dir)
    cfg = load_config(preset, [
        *spec.overrides, f"seed={seed}", f"output_dir={run_dir}", f"train.progress={str(progress).lower()}",
        *overrides, *continue_unfinished(run_dir),
    ])
    out = Path(train(cfg))
    if report:
        write_report(out)
    metrics = json.loads((out / METRICS_FILE).read_text())
    return row_from_metrics(spec.label, preset, seed, metrics, out)


__all__ = ["BENCHMARK_METHODS", "DEMO_METHODS", "MethodSpec", "continue_unfinished", "run_dir_for", "run_method",
           "scaled", "spec", "tuned"]
