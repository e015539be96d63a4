"""The engine: one training loop for every method, evaluation, checkpoints and logs.

Public API::

    from ulfine.engine import train, evaluate_run, load_run
    run_dir = train(cfg)                      # -> Path of the run folder
    metrics = evaluate_run(run_dir, "test")   # reload config.yaml + weights, recompute metrics
    parts, rt, weights = load_run(run_dir)    # a finished run, assembled as it was trained
"""

from .assemble import RunParts, assemble_run
from .reevaluate import evaluate_run, load_run
from .run import build_trainer, train
from .state import TrainState
from .trainer import Trainer

__all__ = ["RunParts", "TrainState", "Trainer", "assemble_run", "build_trainer", "evaluate_run", "load_run", "train"]
