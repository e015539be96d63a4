"""The one learning-rate schedule: linear warm-up, then cosine (or FixMatch's cosine, or constant).

Used by the engine's optimiser (``ulfine.engine.optim``) and by micro-CLIP pretraining
(``ulfine.microworld.pretrain``); it lives at the bottom of the house because both need it.
"""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "cosine") -> float:
    """Multiplier of the base lr at optimiser step ``step``: linear warm-up then ``cosine`` (half a
    cosine period, to 0), ``cosine_7_16`` (cos(7 pi t / 16): FixMatch's schedule, which ACR and USB
    keep; it ends at 0.2 of the base lr) or ``constant``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine_7_16":
        return math.cos(7.0 * math.pi * progress / 16.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


__all__ = ["lr_factor"]
