"""The one training loop of every method: :func:`train` ``(cfg) -> run folder``.

Per optimiser step: the rank's slice of the global batch (``train.batch_size`` labeled images,
``mu`` times as many unlabeled) is cut into ``optim.grad_accum`` micro-batches; each is moved to
the device, normalised there, run through ``method.training_step`` under autocast and
back-propagated (loss / grad_accum; DDP gradient averaging only on the last micro-batch); then
gradient clipping, the optimiser and the scheduler step, ``method.after_optimizer_step()`` and the
EMA update follow. Hence 1 process or N processes, with or without accumulation, take the same
optimiser steps on the same samples (up to floating-point summation order).

A method that does not train (zero-shot) takes the evaluate-only path: no optimiser, no loop,
the same :meth:`Trainer.finish`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..batch import Batch
from ..config import Config
from ..data import ssl_batches
from ..errors import ConfigError
from ..methods import METHODS, Method, StepOutput
from .assemble import RunParts, assemble_run, trainable_parameter_count
from .cached import feature_batches, set_features
from .checkpoint import load_checkpoint, save_checkpoint, save_weights
from .ema import TrainableEMA
from .evaluation import build_eval_sets, evaluate_sets
from .metrics import mean_of_last
from .optim import build_optimizer, build_scheduler
from .reporting import Reporter, attach_file_log, print_summary
from .rundir import check_batch, prepare_run_dir
from .runtime import Runtime, make_runtime
from .seeding import set_rng_state
from .state import TrainState, compact, update_best

log = logging.getLogger("ulfine.engine")


class StepModule(nn.Module):
    """What DDP wraps: ``forward(batch) -> (loss, StepOutput)`` of the method."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Batch) -> tuple[torch.Tensor, StepOutput]:
        out = self.method.training_step(batch)
        return out.loss, out


def _scalar(v: torch.Tensor | float) -> torch.Tensor | float:
    """A log value kept on its device: converting to a Python float every step would force a
    device synchronisation per logged key; the window is converted once per ``log_every``."""
    return v.detach().float().mean() if isinstance(v, torch.Tensor) else float(v)


def _step_logs(loss: torch.Tensor, out: StepOutput) -> dict[str, torch.Tensor | float]:
    """The method's scalars, the loss, and what the engine reads of the step's pseudo-labels."""
    logs = dict(out.logs)
    if out.pseudo is not None:
        logs["mask_rate"] = out.pseudo.mask.float().mean()
        logs["pl_confidence"] = out.pseudo.confidence.float().mean()
    logs["loss"] = loss
    return logs


def _cost(seen: dict[str, int], train_seconds: float, device: torch.device) -> dict[str, Any]:
    """Training cost figures: images per second of optimiser steps, and peak accelerator memory."""
    images = sum(seen.values())
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"train_images_per_s": images / train_seconds if train_seconds > 0 else None,
            "peak_memory_mib": None if peak is None else round(peak, 1), "device": str(device)}


class Trainer:
    """Holds a run (config, runtime, parts, run folder, :class:`TrainState`) and does
    :meth:`resume`, :meth:`step`, :meth:`evaluate`, :meth:`checkpoint` and :meth:`finish`."""

    def __init__(self, parts: RunParts, rt: Runtime, run_dir: Path) -> None:
        self.parts, self.rt, self.run_dir, self.cfg = parts, rt, run_dir, parts.cfg
        self.method = parts.method
        self.state = TrainState()
        self.seen = {"labeled": 0, "unlabeled": 0}  # images this rank trained on since (re)start
        self.total_steps = 0  # the schedule's length (the budget), 0 when nothing trains
        self.stop = 0  # where this invocation stops (train.max_steps may cut the budget)
        self.n_trainable = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.ema: TrainableEMA | None = None
        self.model: nn.Module | None = None
        self.last_entry: dict[str, Any] | None = None
        self.sets = build_eval_sets(parts, rt)
        self.reporter: Reporter | None = None

    # -- set-up -------------------------------------------------------------------------------
    def prepare_training(self) -> None:
        """Budget, optimiser, schedule and EMA over the method's trainable parameters."""
        cfg = self.cfg
        self.n_trainable = trainable_parameter_count(self.method)
        if self.n_trainable == 0:
            raise ConfigError(f"method {cfg.method!r} with finetune={cfg.finetune} has nothing to train")
        self.total_steps = cfg.train.epochs * cfg.train.steps_per_epoch
        self.stop = min(self.total_steps, cfg.train.max_steps) if cfg.train.max_steps else self.total_steps
        self.optimizer = build_optimizer(self.method, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps)
        self.ema = TrainableEMA(self.method, cfg.train.ema) if cfg.train.ema else None

    def resume(self) -> None:
        """Load weights, optimiser, schedule, scaler, EMA and :class:`TrainState` from checkpoint/."""
        saved, ema_state = load_checkpoint(self.run_dir, self.method)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainState.from_dict(saved)
        set_rng_state(self.state.rng)
        if self.ema is not None and ema_state is not None:
            self.ema.load_state_dict(ema_state)
        if "scaler" in saved and self.rt.accelerator.scaler is not None:
            self.rt.accelerator.scaler.load_state_dict(saved["scaler"])
        log.info("resumed from step %d", self.state.step)

    def wrap(self) -> None:
        """Hand model and optimiser to Accelerate (DDP on several processes)."""
        self.model, self.optimizer = self.rt.accelerator.prepare(StepModule(self.method), self.optimizer)

    # -- one optimiser step ---------------------------------------------------------------------
    def step(self, host: Batch, window: dict[str, list[torch.Tensor | float]]) -> int:
        """One optimiser step over ``host`` (this rank's slice); returns the images it used."""
        rt, cfg = self.rt, self.cfg
        normalize = None if self.parts.feature_mode else self.parts.normalizer
        micro = host.to(rt.device, normalize).split(cfg.optim.grad_accum)
        for i, batch in enumerate(micro):
            self.seen["labeled"] += batch.num_labeled
            self.seen["unlabeled"] += batch.num_unlabeled
            sync = contextlib.nullcontext() if i == len(micro) - 1 else rt.accelerator.no_sync(self.model)
            with sync:
                with rt.autocast():
                    loss, out = self.model(batch)
                rt.accelerator.backward(loss / len(micro))
            for k, v in _step_logs(loss, out).items():
                window[k].append(_scalar(v))
        if cfg.optim.clip_grad_norm:
            rt.accelerator.clip_grad_norm_(self.method.parameters(), cfg.optim.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_optimizer_step()
        if self.ema is not None:
            self.ema.update()
        self.state.step += 1
        return (host.num_labeled + host.num_unlabeled) * rt.world_size

    def batches(self) -> Iterator[Batch]:
        """This rank's endless stream from the current step: images, or labeled features."""
        cfg, rt, parts = self.cfg, self.rt, self.parts
        if parts.feature_mode:
            feats = set_features(parts, parts.data.labeled, "labeled", rt)
            return feature_batches(feats, parts.data.labeled.labels, cfg.train.batch_size, cfg.seed,
                                   self.state.step, rt.rank, rt.world_size)
        return ssl_batches(parts.data, cfg.train.batch_size, cfg.ssl.mu, cfg.seed,
                           start_step=self.state.step, num_workers=cfg.data.num_workers, rank=rt.rank,
                           world_size=rt.world_size, unlabeled=self.method.uses_unlabeled,
                           augment=cfg.data.augment, strong_views=self.method.strong_views)

    # -- evaluation and checkpoints -----------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """One evaluation (with the EMA weights when there are some) at the current step."""
        ctx = self.ema.applied() if self.ema is not None else contextlib.nullcontext()
        with ctx:
            m = evaluate_sets(self.parts, self.sets, self.rt)
        step = self.state.step
        m.update({"step": step, "epoch": step / max(1, self.cfg.train.steps_per_epoch),
                  "train_seconds": round(self.state.train_seconds, 3), "trainable_params": self.n_trainable,
                  "weights": "ema" if self.ema is not None else "raw"})
        return m

    def global_seen(self) -> dict[str, int]:
        """Images trained on, all ranks, since the run began (a collective)."""
        per_rank = self.rt.gather_objects(dict(self.seen))
        return {k: self.state.images_seen[k] + sum(r[k] for r in per_rank) for k in self.seen}

    def checkpoint(self) -> None:
        """Write the resumable checkpoint of the current step (every rank takes part)."""
        images_seen = self.global_seen()
        if self.rt.is_main:
            state = {**self.state.to_dict(), "images_seen": images_seen,
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
            if self.rt.accelerator.scaler is not None:
                state["scaler"] = self.rt.accelerator.scaler.state_dict()
            save_checkpoint(self.run_dir, self.method, state,
                            self.ema.state_dict() if self.ema is not None else None)
        self.rt.barrier()

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train from the current step to :attr:`stop`, evaluating and checkpointing per epoch."""
        self.method.train()
        stream = self.batches() if self.state.step < self.stop else iter(())
        window: dict[str, list[torch.Tensor | float]] = defaultdict(list)
        window_images, t_window = 0, time.perf_counter()
        while self.state.step < self.stop:
            t0 = time.perf_counter()
            window_images += self.step(next(stream), window)
            self.state.train_seconds += time.perf_counter() - t0
            if self.state.step % self.cfg.train.log_every == 0 or self.state.step == self.stop:
                self.log_window(window, window_images, time.perf_counter() - t_window)
                window.clear()
                window_images, t_window = 0, time.perf_counter()
            self.reporter.progress(1, {})
            if self.state.step % self.cfg.train.steps_per_epoch == 0:
                self.end_of_epoch()
        self.checkpoint()  # the resumable state at the stop point (history: scheduled evals only)

    def log_window(self, window: dict[str, list[torch.Tensor | float]], images: int, seconds: float) -> None:
        """Means of the window's scalars (one device sync), lr and images/s to TensorBoard and the bar."""
        logs = {k: sum(float(x) for x in v) / len(v) for k, v in window.items()}
        logs["lr"] = self.scheduler.get_last_lr()[0]
        logs["images_per_s"] = images / max(1e-9, seconds)
        self.reporter.scalars("train", logs, self.state.step)
        self.reporter.progress(0, {"loss": f"{logs['loss']:.3f}", "acc": f"{logs.get('acc_l', float('nan')):.3f}",
                                   "img/s": f"{logs['images_per_s']:.0f}"})
        log.debug("step %d %s", self.state.step, logs)

    def end_of_epoch(self) -> None:
        """Scheduled evaluation and checkpoint at an epoch boundary."""
        step, cfg = self.state.step, self.cfg
        epoch = step // cfg.train.steps_per_epoch
        if epoch % cfg.eval.every_epochs == 0 or step == self.total_steps:
            entry = self.evaluate()
            self.state.record(entry)
            self.last_entry = entry
            self.reporter.evaluation(entry)
            log.info("epoch %d step %d: test acc %.4f balanced %.4f", epoch, step,
                     entry["overall_acc"], entry["balanced_acc"])
        if epoch % cfg.train.checkpoint_every == 0 and step < self.stop:
            self.checkpoint()

    # -- the end --------------------------------------------------------------------------------
    def final_metrics(self) -> dict[str, Any]:
        """The final model's evaluation (re-used when the last scheduled one was at this step)."""
        if self.last_entry is not None and self.last_entry["step"] == self.state.step:
            final = self.last_entry
        else:  # the stop point is not a scheduled evaluation (max_steps, zero-shot, resumed at the end)
            final = self.evaluate()
            self.reporter.evaluation({**final, "final": True})
        self.reporter.close()
        seen = self.global_seen()
        final = {**final, "images_seen": seen, "cost": _cost(seen, self.state.train_seconds, self.rt.device)}
        series = list(self.state.history)
        if not series or series[-1]["step"] != self.state.step:
            series.append(compact(final))
        final.pop("final", None)
        final["last_k_mean"] = mean_of_last(series, self.cfg.eval.last_k)
        final["stopped_early"] = self.stop < self.total_steps
        final["steps"] = self.state.step
        if self.cfg.eval.select_on == "val":
            best = update_best(self.state.best_val, final) if final.get("val") else self.state.best_val
            if best is not None:
                best["note"] = ("test metrics of the evaluation with the best validation accuracy; "
                                "the top-level metrics are the final model's")
            final["selected_on_val"] = best
        return final

    def finish(self) -> Path:
        """Final evaluation, weights (+ EMA) and final_metrics.json; the summary table."""
        final = self.final_metrics()
        if self.rt.is_main:
            save_weights(self.method, self.run_dir / "weights.safetensors")
            if self.ema is not None:
                save_weights(self.method, self.run_dir / "ema.safetensors", extra=self.ema.state_dict())
            (self.run_dir / "final_metrics.json").write_text(json.dumps(final, indent=2))
            if self.cfg.train.progress:
                print_summary(final, self.run_dir)
            log.info("final: test acc %.4f, balanced %.4f; written to %s", final["overall_acc"],
                     final["balanced_acc"], self.run_dir / "final_metrics.json")
        self.rt.barrier()
        return self.run_dir


def _log_params(parts: RunParts, n_trainable: int) -> None:
    cfg, s = parts.cfg, parts.param_summary
    log.info("method %s | finetune %s | peft %s | head %s", cfg.method, cfg.finetune, cfg.peft, cfg.head)
    log.info("backbone %s (%s): %s trainable of %s parameters; with the method's heads: %s trainable",
             cfg.model.arch, cfg.model.pretrained, f"{s.trainable:,}", f"{s.total:,}", f"{n_trainable:,}")


def _trainer(cfg: Config, rt: Runtime, run_dir: Path) -> Trainer:
    """Assemble the run and set up its trainer (optimisation and resume for methods that train)."""
    trains = METHODS.get(cfg.method).trains
    if trains:
        check_batch(cfg, rt.world_size)  # fails early on an uneven batch split
    log.info("run folder %s; autocast %s", run_dir, rt.autocast_dtype or "off (fp32)")
    parts = assemble_run(cfg, rt, run_dir if cfg.resume else None)
    if rt.is_main:
        parts.data.save_split(run_dir)
    if cfg.train.compile and trains and not parts.feature_mode:
        parts.backbone.visual.compile()
        log.info("image tower compiled with torch.compile")
    _log_params(parts, trainable_parameter_count(parts.method) if trains else 0)
    trainer = Trainer(parts, rt, run_dir)
    if trains:
        trainer.prepare_training()
        if cfg.resume:
            trainer.resume()
        trainer.wrap()
    return trainer


def train(cfg: Config) -> Path:
    """Train (or, for methods that do not train, just evaluate) ``cfg``; returns the run folder.

    Writes config.yaml, split.json, train.log, metrics.jsonl, tb/, checkpoint/,
    weights.safetensors (+ ema.safetensors) and final_metrics.json (see docs/engine.md).
    """
    rt = make_runtime(cfg.train.device, cfg.train.precision)
    cfg, run_dir = prepare_run_dir(cfg, rt)
    handler = attach_file_log(run_dir) if rt.is_main else None
    try:
        trainer = _trainer(cfg, rt, run_dir)
        trainer.reporter = Reporter(run_dir, rt.is_main, cfg.train.progress, trainer.stop, trainer.state.step)
        if trainer.optimizer is not None:  # zero-shot and the like: evaluate-only, same finish()
            trainer.fit()
        return trainer.finish()
    finally:
        if handler is not None:
            logging.getLogger("ulfine").removeHandler(handler)
            handler.close()


__all__ = ["StepModule", "Trainer", "train"]
