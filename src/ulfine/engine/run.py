"""``train(cfg) -> run folder``: resolve the folder, build the :class:`~ulfine.engine.trainer.Trainer`
whole (assembly, optimisation, resume, reporter) and run it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from ..config import Config
from ..methods import METHODS
from ..validation import damaged
from .assemble import RunParts, assemble_run
from .checkpoint import CHECKPOINT_DIR, check_loop_state, check_optimizer_state, load_checkpoint, start_over_hint
from .evaluation import build_eval_sets
from .optim import Optimization, build_optimization
from .reporting import Reporter, attach_file_log, check_trackers
from .rundir import FINAL_METRICS, check_batch, discard_unfinished, prepare_run_dir
from .runtime import Runtime, make_runtime, resource_advice
from .seeding import set_rng_state
from .state import TrainState, step_budget
from .trainer import StepModule, Trainer

log = logging.getLogger("ulfine.engine")


def resume_state(run_dir: Path, method: nn.Module, opt: Optimization, rt: Runtime,
                 max_step: int | None = None) -> TrainState:
    """Load weights, optimiser, schedule, scaler and EMA from checkpoint/ and return its
    :class:`TrainState` (RNG states restored); the state is checked first (its step at most
    ``max_step``, the run's budget), and a part that does not fit is one line naming it."""
    saved, ema_state, folder = load_checkpoint(run_dir, method, max_step)
    source, fix = folder / "state.json", start_over_hint(run_dir)
    check_loop_state(saved, source, fix)
    check_optimizer_state(saved["optimizer"], opt.optimizer, source, fix)
    with _damaged_part(source, "optimizer", fix):
        opt.optimizer.load_state_dict(saved["optimizer"])
    with _damaged_part(source, "scheduler", fix):
        opt.scheduler.load_state_dict(saved["scheduler"])
    state = TrainState.from_dict(saved)
    with _damaged_part(source, "rng", fix):
        set_rng_state(state.rng)
    if opt.ema is not None and ema_state is not None:
        with _damaged_part(folder / "ema.safetensors", "the EMA tensors", fix):
            opt.ema.load_state_dict(ema_state)
    if "scaler" in saved and rt.accelerator.scaler is not None:
        with _damaged_part(source, "scaler", fix):
            rt.accelerator.scaler.load_state_dict(saved["scaler"])
    log.info("resumed from %s/ (step %d)", folder.name, state.step)
    if folder.name != CHECKPOINT_DIR:
        log.warning("%s/ was incomplete or older (the last save was interrupted); resumed from %s/",
                    CHECKPOINT_DIR, folder.name)
    return state


@contextmanager
def _damaged_part(source: Path, part: str, fix: str) -> Iterator[None]:
    """A part of the checkpoint that torch refuses (a tampered RNG or scheduler state) becomes one
    line naming it, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise damaged(source, part, f"does not fit this run ({type(exc).__name__}: {reason})", fix) from None


def _log_params(parts: RunParts, n_trainable: int) -> None:
    cfg, s = parts.cfg, parts.param_summary
    log.info("method %s | finetune %s | peft %s | head %s", cfg.method, cfg.finetune, cfg.peft, cfg.head)
    log.info("backbone %s (%s): %s trainable of %s parameters; with the method's heads: %s trainable",
             cfg.model.arch, cfg.model.pretrained, f"{s.trainable:,}", f"{s.total:,}", f"{n_trainable:,}")


def build_trainer(cfg: Config, rt: Runtime, run_dir: Path, report: bool = True) -> Trainer:
    """Assemble the run and build its trainer complete: optimisation and resume for methods that
    train, the wrapped model, and the reporter (``report=False``: a silent one, for benchmarks)."""
    trains = METHODS.get(cfg.method).trains
    if trains:
        check_batch(cfg, rt.world_size)  # fails early on an uneven batch split
    log.info("run folder %s; autocast %s", run_dir, rt.autocast_dtype or "off (fp32)")
    parts = assemble_run(cfg, rt, run_dir if cfg.resume else None)
    if rt.is_main:
        parts.data.save_split(run_dir)
        parts.data.save_skipped(run_dir)
    if cfg.train.compile and trains and not parts.feature_mode:
        parts.backbone.visual.compile()
        log.info("image tower compiled with torch.compile")
    sets = build_eval_sets(parts, rt)  # before any resume restores the RNG states
    budget, state = step_budget(cfg.train, trains), TrainState()
    opt = model = None
    if trains:
        opt = build_optimization(parts.method, cfg, budget.total)
    _log_params(parts, opt.n_trainable if opt is not None else 0)
    if opt is not None:
        if cfg.resume:
            state = resume_state(run_dir, parts.method, opt, rt, budget.total)
        model, opt.optimizer = rt.accelerator.prepare(StepModule(parts.method), opt.optimizer)
    reporter = Reporter(run_dir, rt.is_main and report, cfg.train.progress and report, budget.stop, state.step, cfg)
    return Trainer(parts, rt, run_dir, reporter, budget, state, sets, opt, model)


def train(cfg: Config) -> Path:
    """Train (or, for methods that do not train, just evaluate) ``cfg``; returns the run folder.

    Writes config.yaml, split.json, train.log, metrics.jsonl, tb/, checkpoint/,
    weights.safetensors (+ ema.safetensors) and final_metrics.json (see docs/engine.md). Resuming
    a finished run does nothing; a fresh run that fails before its first checkpoint removes its
    folder; running out of memory or disk raises a ResourceError naming the settings to change.
    """
    check_trackers(cfg.train.log_with)
    rt = make_runtime(cfg.train.device, cfg.train.precision)
    cfg, run = prepare_run_dir(cfg, rt)
    if run.finished is not None:
        log.warning("%s already finished (%d steps, %s): nothing to do", run.path, run.finished, FINAL_METRICS)
        return run.path
    handler = attach_file_log(run.path) if rt.is_main else None
    log.info(rt.describe())
    done = False
    try:
        with resource_advice(cfg):
            trainer = build_trainer(cfg, rt, run.path)
            if trainer.opt is not None:  # zero-shot and the like: evaluate-only, same finish()
                trainer.fit()
            result = trainer.finish()
        done = True
        return result
    finally:
        if handler is not None:
            logging.getLogger("ulfine").removeHandler(handler)
            handler.close()
        if not done and rt.is_main and not cfg.resume:
            discard_unfinished(run)


__all__ = ["build_trainer", "resume_state", "train"]
