"""The one training loop of every method: :class:`Trainer` (built whole by
:func:`ulfine.engine.run.build_trainer`).

Per optimiser step: the rank's slice of the global batch (``train.batch_size`` labeled images,
``mu`` times as many unlabeled) is cut into ``optim.grad_accum`` micro-batches; each is moved to
the device, given its views there when the data layer says so, normalised, run through
``method.training_step`` under autocast and back-propagated (loss / grad_accum; DDP gradient
averaging only on the last micro-batch); then gradient clipping, the optimiser and the scheduler
step, ``method.after_optimizer_step(step)`` and the EMA update follow, and at an epoch's end
``method.on_epoch_end(epoch)``. Hence 1 process or N processes, with or without accumulation,
take the same optimiser steps on the same samples (up to floating-point summation order).

A method that does not train (zero-shot) has no :class:`~ulfine.engine.optim.Optimization`: no
loop, the same :meth:`Trainer.finish`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..batch import Batch
from ..config.schema import strong_ops
from ..data import StreamSpec, TrainingStream, training_stream
from ..methods import Method, StepOutput
from .assemble import RunParts
from .cached import feature_batches, set_features
from .checkpoint import save_checkpoint
from .evaluation import EvalSets, evaluate_sets
from .finish import final_metrics, write_final
from .guards import all_finite, check_weights_finite, nonfinite_stop, restore_buffers, snapshot_buffers
from .meter import StepMeter, nonfinite_terms, step_logs
from .optim import Optimization
from .reporting import Reporter
from .runtime import Runtime
from .seeding import seed_step
from .state import StepBudget, TrainState

log = logging.getLogger("ulfine.engine")


class StepModule(nn.Module):
    """What DDP wraps: ``forward(batch) -> (loss, StepOutput)`` of the method."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Batch) -> tuple[torch.Tensor, StepOutput]:
        out = self.method.training_step(batch)
        return out.loss, out


class Trainer:
    """A run ready to go: parts, runtime, folder, reporter, budget, loop state and (for methods
    that train) the optimisation and the wrapped model. Does :meth:`step`, :meth:`fit`,
    :meth:`evaluate`, :meth:`checkpoint` and :meth:`finish`; nothing is set on it from outside."""

    def __init__(self, parts: RunParts, rt: Runtime, run_dir: Path, reporter: Reporter, budget: StepBudget,
                 state: TrainState, sets: EvalSets, opt: Optimization | None = None,
                 model: nn.Module | None = None) -> None:
        self.parts, self.rt, self.run_dir, self.cfg, self.method = parts, rt, run_dir, parts.cfg, parts.method
        self.reporter, self.budget, self.state, self.opt, self.model = reporter, budget, state, opt, model
        self.meter = StepMeter()
        self.seen = {"labeled": 0, "unlabeled": 0}  # images this rank trained on since (re)start
        self.last_entry: dict[str, Any] | None = None
        self.last_checkpoint: int | None = state.step if state.step > 0 else None  # newest on disk
        self.sets = sets  # the evaluation sets (test, val)
        self.stream: TrainingStream | None = None

    # -- data -----------------------------------------------------------------------------------
    def start_stream(self) -> TrainingStream:
        """Open this rank's endless stream from the current step: images (views placed by the
        data layer), or labeled features of a frozen tower."""
        cfg, rt, parts = self.cfg, self.rt, self.parts
        if parts.feature_mode:
            feats = set_features(parts, parts.data.labeled, "labeled", rt)
            self.stream = TrainingStream(feature_batches(feats, parts.data.labeled.labels, cfg.train.batch_size,
                                                         cfg.seed, self.state.step, rt.rank, rt.world_size), None)
            return self.stream
        spec = StreamSpec(cfg.train.batch_size, cfg.ssl.mu, cfg.seed, self.method.uses_unlabeled,
                          cfg.data.augment, self.method.strong_views, cfg.data.num_workers,
                          strong_ops(cfg.data.strong_ops))
        self.stream = training_stream(parts.data, spec, rt.device, cfg.data.augment_on, self.state.step,
                                      rt.rank, rt.world_size)
        return self.stream

    def on_device(self, host: Batch) -> Batch:
        """The host batch on the device, with its views and the backbone's normalisation."""
        batch = host.to(self.rt.device)
        if self.stream is not None and self.stream.device_views is not None:
            batch = self.stream.device_views(batch)
        return batch if self.parts.feature_mode else batch.map_images(self.parts.normalizer)

    # -- one optimiser step ---------------------------------------------------------------------
    def step(self, host: Batch) -> int:
        """One optimiser step over ``host`` (this rank's slice); returns the images it used."""
        seed_step(self.cfg.seed, self.state.step, self.rt.rank)
        micro = self.on_device(host).split(self.cfg.optim.grad_accum)
        buffers = snapshot_buffers(self.method) if self.cfg.train.on_nonfinite == "skip" else None
        logs = []
        for i, batch in enumerate(micro):
            self.seen["labeled"] += batch.num_labeled
            self.seen["unlabeled"] += batch.num_unlabeled
            last = i == len(micro) - 1
            with contextlib.nullcontext() if last else self.rt.accelerator.no_sync(self.model):
                with self.rt.autocast():
                    loss, out = self.model(batch)
                self.rt.accelerator.backward(loss / len(micro))
            logs.append(step_logs(loss, out))
        if all_finite(self.rt, [lg["loss"] for lg in logs]):
            self.meter.add_logs(logs)
            self.optimizer_step()
        else:
            self.on_nonfinite(logs, buffers)
        self.opt.scheduler.step()
        self.state.step += 1
        return (host.num_labeled + host.num_unlabeled) * self.rt.world_size

    def optimizer_step(self) -> None:
        """Clip, step, zero the gradients, then the method's and the EMA's updates."""
        if self.cfg.optim.clip_grad_norm:
            self.rt.accelerator.clip_grad_norm_(self.method.parameters(), self.cfg.optim.clip_grad_norm)
        self.opt.optimizer.step()
        self.opt.optimizer.zero_grad(set_to_none=True)
        self.method.after_optimizer_step(self.state.step)
        if self.opt.ema is not None:
            self.opt.ema.update()

    def on_nonfinite(self, logs: list[dict[str, Any]], buffers: dict[str, torch.Tensor] | None) -> None:
        """``train.on_nonfinite``: stop with a NumericalError, or drop this step's update (the
        gradients, and the buffers the forward changed, from ``buffers``) and count it."""
        where = f"non-finite loss at optimiser step {self.state.step + 1} ({nonfinite_terms(logs)})"
        if self.cfg.train.on_nonfinite == "stop" or buffers is None:
            raise nonfinite_stop(where, self.last_checkpoint, self.run_dir)
        self.opt.optimizer.zero_grad(set_to_none=True)
        restore_buffers(self.method, buffers)
        self.state.nonfinite_skipped += 1
        log.warning("%s: step skipped (train.on_nonfinite=skip; %d so far)", where, self.state.nonfinite_skipped)

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train from the current step to the budget's stop, evaluating per epoch and
        checkpointing per ``train.checkpoint_every`` epochs and ``train.checkpoint_every_steps`` steps."""
        self.method.train()
        spe = self.cfg.train.steps_per_epoch
        if self.state.step < self.budget.stop:
            self.start_stream()
        while self.state.step < self.budget.stop:
            t0 = time.perf_counter()
            host = next(self.stream.batches)
            wait = time.perf_counter() - t0
            images = self.step(host)
            step_s = time.perf_counter() - t0
            self.state.train_seconds += step_s
            self.meter.add_time(images, wait, step_s)
            if self.state.step % self.cfg.train.log_every == 0 or self.state.step == self.budget.stop:
                self.log_window()
            self.reporter.progress(1, {})
            epoch_end = self.state.step % spe == 0
            if epoch_end:
                self.method.on_epoch_end(self.state.step // spe)
                self.end_of_epoch()
            if self.state.step < self.budget.stop and self.checkpoint_due(epoch_end):
                self.checkpoint()
        self.checkpoint()  # the resumable state at the stop point (history: scheduled evals only)

    def checkpoint_due(self, epoch_end: bool) -> bool:
        """Every ``train.checkpoint_every`` epochs, and every ``train.checkpoint_every_steps`` steps."""
        t, step = self.cfg.train, self.state.step
        by_epoch = epoch_end and (step // t.steps_per_epoch) % t.checkpoint_every == 0
        return by_epoch or bool(t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0)

    def log_window(self) -> None:
        """The window's means, lr, images/s, data wait and device utilisation to train.log,
        the trackers and the bar."""
        logs = self.meter.flush(self.rt.device)
        if logs is None:  # every step of the window was skipped (train.on_nonfinite=skip)
            return
        logs["lr"] = self.opt.scheduler.get_last_lr()[0]
        self.reporter.scalars("train", logs, self.state.step)
        self.reporter.progress(0, {"loss": f"{logs['loss']:.3f}", "acc": f"{logs.get('acc_l', float('nan')):.3f}",
                                   "img/s": f"{logs['images_per_s']:.0f}"})
        util = logs.get("device_utilization")
        log.info("step %d: %.1f images/s, waiting for data %.0f%% of the time%s", self.state.step,
                 logs["images_per_s"], 100 * logs["data_wait_fraction"],
                 "" if util is None else f", device utilisation {util:.0f}%")
        log.debug("step %d %s", self.state.step, logs)

    def end_of_epoch(self) -> None:
        """Scheduled evaluation at an epoch boundary."""
        step, cfg = self.state.step, self.cfg
        epoch = step // cfg.train.steps_per_epoch
        if epoch % cfg.eval.every_epochs == 0 or step == self.budget.total:
            entry = self.evaluate()
            self.state.record(entry)
            self.last_entry = entry
            self.reporter.evaluation(entry)
            log.info("epoch %d step %d: test acc %.4f balanced %.4f", epoch, step,
                     entry["overall_acc"], entry["balanced_acc"])

    # -- evaluation and checkpoints -----------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """One evaluation (with the EMA weights when there are some) at the current step."""
        ema = self.opt.ema if self.opt is not None else None
        with ema.applied() if ema is not None else contextlib.nullcontext():
            m = evaluate_sets(self.parts, self.sets, self.rt)
        step = self.state.step
        m.update({"step": step, "epoch": step / max(1, self.cfg.train.steps_per_epoch),
                  "train_seconds": round(self.state.train_seconds, 3),
                  "trainable_params": self.opt.n_trainable if self.opt is not None else 0,
                  "weights": "ema" if ema is not None else "raw"})
        return m

    def global_seen(self) -> dict[str, int]:
        """Images trained on, all ranks, since the run began (a collective)."""
        per_rank = self.rt.gather_objects(dict(self.seen))
        return {k: self.state.images_seen[k] + sum(r[k] for r in per_rank) for k in self.seen}

    def checkpoint(self) -> None:
        """Write the resumable checkpoint of the current step (every rank takes part); never one
        whose weights are not finite."""
        check_weights_finite(self.method, self.rt, self.state.step, self.last_checkpoint)
        images_seen = self.global_seen()
        if self.rt.is_main:
            opt = self.opt
            state = {**self.state.to_dict(), "images_seen": images_seen,
                     "optimizer": opt.optimizer.state_dict(), "scheduler": opt.scheduler.state_dict()}
            if self.rt.accelerator.scaler is not None:
                state["scaler"] = self.rt.accelerator.scaler.state_dict()
            save_checkpoint(self.run_dir, self.method, state, opt.ema.state_dict() if opt.ema is not None else None)
        self.last_checkpoint = self.state.step
        self.rt.barrier()

    # -- the end --------------------------------------------------------------------------------
    def finish(self) -> Path:
        """Final evaluation, weights (+ EMA) and final_metrics.json; the summary table."""
        final = self.last_entry if self.last_entry is not None and self.last_entry["step"] == self.state.step else None
        logged = bool(self.state.history) and self.state.history[-1]["step"] == self.state.step
        if final is None:  # the stop point is not a scheduled evaluation (max_steps, zero-shot, resumed at the end)
            final = self.evaluate()
            if not logged:  # not logged before the resume
                self.reporter.evaluation({**final, "final": True})
        self.reporter.close()
        record = final_metrics(final, self.state, self.cfg, self.budget, self.global_seen(), self.rt.device)
        record["cost"]["data_wait_fraction"] = self.meter.data_wait_fraction()
        views_on_device = self.stream is not None and self.stream.device_views is not None
        hint = self.meter.waiting_hint(self.cfg.data.num_workers, views_on_device)
        if self.rt.is_main:
            if hint is not None:
                log.warning(hint)
            write_final(self.run_dir, self.method, self.opt.ema if self.opt is not None else None, record,
                        self.cfg.train.progress)
        self.rt.barrier()
        return self.run_dir


__all__ = ["StepModule", "Trainer"]
