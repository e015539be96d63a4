"""What a resumable checkpoint stores of the loop (:class:`TrainState`), and the evaluation
history kept in it (for the mean of the last evaluations and validation-based selection)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import TrainConfig
from .seeding import rng_state


@dataclass(frozen=True)
class StepBudget:
    """The schedule's length (``train.epochs x train.steps_per_epoch``; 0 for a method that does
    not train) and where this invocation stops (``train.max_steps`` may cut it)."""

    total: int
    stop: int

    @property
    def stopped_early(self) -> bool:
        return self.stop < self.total


def step_budget(train: TrainConfig, trains: bool) -> StepBudget:
    """The one computation of a run's step budget (the loop, the schedule and resume read it)."""
    total = train.epochs * train.steps_per_epoch if trains else 0
    return StepBudget(total, min(total, train.max_steps) if train.max_steps else total)


def _no_images() -> dict[str, int]:
    return {"labeled": 0, "unlabeled": 0}


@dataclass
class TrainState:
    """The loop's position: step, images seen (all processes), train seconds, evaluation history,
    selection state and the RNG states (the data stream itself is a pure function of (seed, step),
    so the step is the sampler state). Optimiser, scheduler and weights are checkpointed beside it.
    """

    step: int = 0
    train_seconds: float = 0.0
    images_seen: dict[str, int] = field(default_factory=_no_images)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    nonfinite_skipped: int = 0  # optimiser steps skipped for a non-finite loss (train.on_nonfinite=skip)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's entries (RNG states taken now)."""
        return {**asdict(self), "rng": rng_state()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        """Read the entries of a checkpoint (older checkpoints may lack ``images_seen``)."""
        return cls(step=d["step"], train_seconds=d["train_seconds"],
                   images_seen=d.get("images_seen", _no_images()), history=d["history"],
                   best_val=d.get("best_val"), rng=d["rng"], nonfinite_skipped=d.get("nonfinite_skipped", 0))

    def record(self, entry: dict[str, Any]) -> None:
        """Keep an evaluation in the history and update the validation selection."""
        self.history.append(compact(entry))
        self.best_val = update_best(self.best_val, entry)


def compact(entry: dict[str, Any]) -> dict[str, Any]:
    """What the history keeps of an evaluation (for last_k_mean and val selection)."""
    keep = ("step", "overall_acc", "balanced_acc", "group_acc", "ece")
    out = {k: entry[k] for k in keep}
    out["geometric_mean_recall"] = entry.get("geometric_mean_recall")  # older checkpoints lack it
    if entry.get("val"):
        out["val_overall_acc"] = entry["val"]["overall_acc"]
    return out


def update_best(best: dict[str, Any] | None, entry: dict[str, Any]) -> dict[str, Any] | None:
    """Track the evaluation with the best *validation* accuracy (never the test accuracy)."""
    val = entry.get("val")
    if not val:
        return best
    if best is None or val["overall_acc"] > best["val_overall_acc"]:
        test = {k: entry[k] for k in ("overall_acc", "balanced_acc", "group_acc", "ece")}
        return {"step": entry["step"], "val_overall_acc": val["overall_acc"],
                "val_balanced_acc": val["balanced_acc"], "test": test}
    return best


__all__ = ["TrainState", "compact", "update_best"]
