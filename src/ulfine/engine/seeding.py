"""Seeds and RNG states (saved in resumable checkpoints)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) identically on every rank.

    Every rank builds the same random initialisation (PEFT modules, heads, random backbones);
    the data streams take their own seeds from (seed, step), not from these generators.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: role id of the per-step training randomness (the data roles are 0 and 1)
STEP_ROLE = 2


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed torch's generators (all devices) for optimiser step ``step`` on ``rank``.

    Why: the randomness of a training forward (AdaptFormer's dropout) must not depend on how the
    run got to this step; with the generators seeded from (seed, step, rank) a resumed run draws
    exactly what the uninterrupted one drew, whatever else (a data loader starting its workers)
    consumed random numbers before.
    """
    state = np.random.SeedSequence([seed, STEP_ROLE, step, rank]).generate_state(1, np.uint64)[0]
    torch.manual_seed(int(state >> 1))


def rng_state() -> dict[str, Any]:
    """Snapshot of every global generator."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a :func:`rng_state` snapshot."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["STEP_ROLE", "rng_state", "seed_everything", "seed_step", "set_rng_state"]
