"""The engine: one training loop for every method, evaluation, checkpoints and logs.

Public API::

    from ulfine.engine import train, evaluate_run
    run_dir = train(cfg)                      # -> Path of the run folder
    metrics = evaluate_run(run_dir, "test")   # reload config.yaml + weights, recompute metrics
"""

from .evaluate import evaluate_run
from .loop import train

__all__ = ["evaluate_run", "train"]
