"""The end of a run: the final record (the final model's metrics with the run's cost, the mean of
the last evaluations and the validation selection) and the files written last."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..safefiles import atomic_write_text
from .checkpoint import save_weights
from .ema import TrainableEMA
from .meter import training_cost
from .metrics import mean_of_last
from .reporting import print_summary
from .rundir import FINAL_METRICS
from .state import StepBudget, TrainState, compact, update_best

log = logging.getLogger("ulfine.engine")


def final_metrics(final: dict[str, Any], state: TrainState, cfg: Config, budget: StepBudget,
                  seen: dict[str, int], device: torch.device) -> dict[str, Any]:
    """``final_metrics.json``: the final model's evaluation ``final`` first, then what the run
    cost, the mean of the last ``eval.last_k`` evaluations and (``eval.select_on=val``) the
    evaluation with the best validation accuracy, each labelled as what it is."""
    series = list(state.history)
    record = {**final, "images_seen": seen, "cost": training_cost(seen, state.train_seconds, device),
              "nonfinite_skipped_steps": state.nonfinite_skipped}
    if not series or series[-1]["step"] != state.step:
        series.append(compact(record))
    record.pop("final", None)
    record["last_k_mean"] = mean_of_last(series, cfg.eval.last_k)
    record["best_test_over_training"] = best_on_test(series)
    record["stopped_early"] = budget.stopped_early
    record["steps"] = state.step
    if cfg.eval.select_on == "val":
        best = update_best(state.best_val, record) if record.get("val") else state.best_val
        if best is not None:
            best["note"] = ("test metrics of the evaluation with the best validation accuracy; "
                            "the top-level metrics are the final model's")
        record["selected_on_val"] = best
    return record


#: what the field's figure is, written beside it wherever it appears
BEST_ON_TEST_NOTE = ("best test accuracy over training (for comparison with published tables; selected on "
                     "the test set, so not an estimate of accuracy on new data)")


def best_on_test(series: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The evaluation with the highest test accuracy: what most LTSSL papers tabulate. Reported
    after the honest figures, labelled, and never used to choose anything."""
    scored = [e for e in series if e.get("overall_acc") is not None]
    if not scored:
        return None
    best = max(scored, key=lambda e: e["overall_acc"])
    return {"overall_acc": best["overall_acc"], "geometric_mean_recall": best.get("geometric_mean_recall"),
            "step": best["step"], "note": BEST_ON_TEST_NOTE}


def write_final(run_dir: Path, method: nn.Module, ema: TrainableEMA | None, record: dict[str, Any],
                summary: bool) -> None:
    """Weights (+ EMA), then final_metrics.json last (its presence means the run finished)."""
    save_weights(method, run_dir / "weights.safetensors")
    if ema is not None:
        save_weights(method, run_dir / "ema.safetensors", extra=ema.state_dict())
    atomic_write_text(run_dir / FINAL_METRICS, json.dumps(record, indent=2))
    if summary:
        print_summary(record, run_dir)
    log.info("final: test acc %.4f, balanced %.4f; written to %s", record["overall_acc"],
             record["balanced_acc"], run_dir / FINAL_METRICS)


__all__ = ["BEST_ON_TEST_NOTE", "best_on_test", "final_metrics", "write_final"]
