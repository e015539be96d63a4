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
from ..data.device_augment import DeviceAugmenter
from ..errors import ConfigError, NumericalError
from ..methods import METHODS, Method, StepOutput
from ..safefiles import atomic_write_text
from .assemble import RunParts, assemble_run, trainable_parameter_count
from .cached import feature_batches, set_features
from .checkpoint import CHECKPOINT_DIR, load_checkpoint, save_checkpoint, save_weights
from .ema import TrainableEMA
from .evaluation import build_eval_sets, evaluate_sets
from .metrics import mean_of_last
from .optim import build_optimizer, build_scheduler
from .reporting import Reporter, attach_file_log, check_trackers, print_summary
from .rundir import FINAL_METRICS, check_batch, discard_unfinished, prepare_run_dir
from .runtime import Runtime, make_runtime, resource_advice
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


#: above this fraction of step time spent waiting for data, the run says how to fix it
DATA_WAIT_HINT = 0.10


def device_utilization(device: torch.device) -> float | None:
    """The accelerator's utilisation in % (NVML through torch), None where it cannot be read."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except (ModuleNotFoundError, RuntimeError):  # pynvml missing or NVML unavailable
        return None
def _terms(logs: list[dict[str, torch.Tensor | float]]) -> str:
    """``loss=nan, loss_x=0.693, ...`` of the first micro-batch whose loss is not finite."""
    bad = next((lg for lg in logs if not torch.isfinite(torch.as_tensor(_scalar(lg["loss"])))), logs[0])
    return ", ".join(f"{k}={float(_scalar(v)):.4g}" for k, v in bad.items())


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
        self.last_checkpoint: int | None = None  # step of the newest checkpoint on disk
        self.sets = build_eval_sets(parts, rt)
        self.reporter: Reporter | None = None
        self.augmenter = self._augmenter()
        self.waited = {"data_s": 0.0, "step_s": 0.0}  # where this invocation's time went

    def _augmenter(self) -> DeviceAugmenter | None:
        """The batched device views when ``data.augment_on`` asks for them (auto: on CUDA)."""
        cfg, rt = self.cfg, self.rt
        on = cfg.data.augment_on
        if self.parts.feature_mode or on == "host" or (on == "auto" and rt.device.type != "cuda"):
            return None
        return DeviceAugmenter(cfg.seed, cfg.train.batch_size, cfg.ssl.mu, rt.rank, rt.world_size,
                               augment_labeled=cfg.data.augment, strong_views=self.method.strong_views)

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
        saved, ema_state, folder = load_checkpoint(self.run_dir, self.method)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainState.from_dict(saved)
        set_rng_state(self.state.rng)
        if self.ema is not None and ema_state is not None:
            self.ema.load_state_dict(ema_state)
        if "scaler" in saved and self.rt.accelerator.scaler is not None:
            self.rt.accelerator.scaler.load_state_dict(saved["scaler"])
        self.last_checkpoint = self.state.step
        log.info("resumed from %s/ (step %d)", folder.name, self.state.step)
        if folder.name != CHECKPOINT_DIR:
            log.warning("%s/ was incomplete or older (the last save was interrupted); resumed from %s/",
                        CHECKPOINT_DIR, folder.name)

    def wrap(self) -> None:
        """Hand model and optimiser to Accelerate (DDP on several processes)."""
        self.model, self.optimizer = self.rt.accelerator.prepare(StepModule(self.method), self.optimizer)

    # -- one optimiser step ---------------------------------------------------------------------
    def step(self, host: Batch, window: dict[str, list[torch.Tensor | float]]) -> int:
        """One optimiser step over ``host`` (this rank's slice); returns the images it used."""
        rt, cfg = self.rt, self.cfg
        batch = host.to(rt.device)
        if self.augmenter is not None:
            batch = self.augmenter(batch)
        if not self.parts.feature_mode:
            batch = batch.map_images(self.parts.normalizer)
        micro = batch.split(cfg.optim.grad_accum)
        buffers = self.buffer_snapshot() if cfg.train.on_nonfinite == "skip" else None
        logs = []
        for i, batch in enumerate(micro):
            self.seen["labeled"] += batch.num_labeled
            self.seen["unlabeled"] += batch.num_unlabeled
            sync = contextlib.nullcontext() if i == len(micro) - 1 else rt.accelerator.no_sync(self.model)
            with sync:
                with rt.autocast():
                    loss, out = self.model(batch)
                rt.accelerator.backward(loss / len(micro))
            logs.append(_step_logs(loss, out))
        if self.finite([lg["loss"] for lg in logs]):
            for lg in logs:
                for k, v in lg.items():
                    window[k].append(_scalar(v))
            self.optimizer_step()
        else:
            self.on_nonfinite(logs, buffers)
        self.scheduler.step()
        self.state.step += 1
        return (host.num_labeled + host.num_unlabeled) * rt.world_size

    def optimizer_step(self) -> None:
        """Clip, step, zero the gradients, then the method's and the EMA's updates."""
        if self.cfg.optim.clip_grad_norm:
            self.rt.accelerator.clip_grad_norm_(self.method.parameters(), self.cfg.optim.clip_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_optimizer_step()
        if self.ema is not None:
            self.ema.update()

    def finite(self, losses: list[torch.Tensor]) -> bool:
        """Whether every micro-batch loss of every rank is finite (one scalar sync per step)."""
        ok = torch.isfinite(torch.stack([loss.detach().float().reshape(()) for loss in losses])).all()
        return self.rt.all_true(ok)

    def buffer_snapshot(self) -> dict[str, torch.Tensor]:
        """The method's buffers (e.g. PAF memories, updated in the forward), to undo a skipped step."""
        return {n: b.detach().clone() for n, b in self.method.named_buffers()}

    def on_nonfinite(self, logs: list[dict[str, torch.Tensor | float]],
                     buffers: dict[str, torch.Tensor] | None) -> None:
        """``train.on_nonfinite``: stop with a NumericalError, or drop this step's update (the
        gradients, and the buffers the forward changed, from ``buffers``) and count it."""
        where = f"non-finite loss at optimiser step {self.state.step + 1} ({_terms(logs)})"
        if self.cfg.train.on_nonfinite == "stop" or buffers is None:
            kept = (f"the last checkpoint (step {self.last_checkpoint}) in {self.run_dir / CHECKPOINT_DIR} is "
                    "kept: continue it with resume=true train.on_nonfinite=skip"
                    if self.last_checkpoint is not None else "no checkpoint was written yet")
            raise NumericalError(f"{where}; stopped (train.on_nonfinite=stop): {kept}, or start again with a "
                                 "lower optim.lr or with optim.clip_grad_norm")
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in self.method.named_buffers():
                b.copy_(buffers[name])
        self.state.nonfinite_skipped += 1
        log.warning("%s: step skipped (train.on_nonfinite=skip; %d so far)", where, self.state.nonfinite_skipped)

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
                           augment=cfg.data.augment, raw=self.augmenter is not None,
                           strong_views=self.method.strong_views)

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

    def check_weights_finite(self) -> None:
        """A finite loss can still come with overflowing gradients: never checkpoint what followed."""
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in self.method.parameters() if p.requires_grad])
        if not self.rt.all_true(finite.all()):
            kept = ("none was saved" if self.last_checkpoint is None
                    else f"the checkpoint of step {self.last_checkpoint} is kept")
            raise NumericalError(f"the trained weights are not finite at step {self.state.step} (a finite loss with "
                                 f"overflowing gradients); no checkpoint written, {kept}: lower optim.lr or set "
                                 "optim.clip_grad_norm and start again")

    def checkpoint(self) -> None:
        """Write the resumable checkpoint of the current step (every rank takes part); never one
        whose weights are not finite."""
        self.check_weights_finite()
        images_seen = self.global_seen()
        if self.rt.is_main:
            state = {**self.state.to_dict(), "images_seen": images_seen,
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
            if self.rt.accelerator.scaler is not None:
                state["scaler"] = self.rt.accelerator.scaler.state_dict()
            save_checkpoint(self.run_dir, self.method, state,
                            self.ema.state_dict() if self.ema is not None else None)
        self.last_checkpoint = self.state.step
        self.rt.barrier()

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train from the current step to :attr:`stop`, evaluating per epoch and checkpointing per
        ``train.checkpoint_every`` epochs and ``train.checkpoint_every_steps`` steps."""
        self.method.train()
        stream = self.batches() if self.state.step < self.stop else iter(())
        window: dict[str, list[torch.Tensor | float]] = defaultdict(list)
        window_images, window_wait, t_window = 0, 0.0, time.perf_counter()
        while self.state.step < self.stop:
            t0 = time.perf_counter()
            host = next(stream)
            wait = time.perf_counter() - t0
            window_images += self.step(host, window)
            step_s = time.perf_counter() - t0
            self.state.train_seconds += step_s
            window_wait += wait
            self.waited["data_s"] += wait
            self.waited["step_s"] += step_s
            if self.state.step % self.cfg.train.log_every == 0 or self.state.step == self.stop:
                self.log_window(window, window_images, window_wait, time.perf_counter() - t_window)
                window.clear()
                window_images, window_wait, t_window = 0, 0.0, time.perf_counter()
            self.reporter.progress(1, {})
            epoch_end = self.state.step % self.cfg.train.steps_per_epoch == 0
            if epoch_end:
                self.end_of_epoch()
            if self.state.step < self.stop and self.checkpoint_due(epoch_end):
                self.checkpoint()
        self.checkpoint()  # the resumable state at the stop point (history: scheduled evals only)

    def checkpoint_due(self, epoch_end: bool) -> bool:
        """Every ``train.checkpoint_every`` epochs, and every ``train.checkpoint_every_steps`` steps."""
        t, step = self.cfg.train, self.state.step
        by_epoch = epoch_end and (step // t.steps_per_epoch) % t.checkpoint_every == 0
        return by_epoch or bool(t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0)

    def log_window(self, window: dict[str, list[torch.Tensor | float]], images: int, waited: float,
                   seconds: float) -> None:
        """Means of the window's scalars (one device sync per window), lr, images/s, the fraction
        of the time spent waiting for data and the device's utilisation, to train.log,
        TensorBoard and the bar."""
        if not window:  # every step of the window was skipped (train.on_nonfinite=skip)
            return
        logs = {k: sum(float(x) for x in v) / len(v) for k, v in window.items()}
        logs["lr"] = self.scheduler.get_last_lr()[0]
        seconds = max(1e-9, seconds)
        logs["images_per_s"] = images / seconds
        logs["data_wait_fraction"] = waited / seconds
        util = device_utilization(self.rt.device)
        if util is not None:
            logs["device_utilization"] = util
        self.reporter.scalars("train", logs, self.state.step)
        self.reporter.progress(0, {"loss": f"{logs['loss']:.3f}", "acc": f"{logs.get('acc_l', float('nan')):.3f}",
                                   "img/s": f"{logs['images_per_s']:.0f}"})
        log.info("step %d: %.1f images/s, waiting for data %.0f%% of the time%s", self.state.step,
                 logs["images_per_s"], 100 * logs["data_wait_fraction"],
                 "" if util is None else f", device utilisation {util:.0f}%")
        log.debug("step %d %s", self.state.step, logs)

    def waiting_hint(self) -> str | None:
        """One line when this run waited for data more than 10% of its step time."""
        total = self.waited["step_s"]
        if total <= 0 or self.waited["data_s"] / total <= DATA_WAIT_HINT:
            return None
        where = ("raise data.num_workers" if self.augmenter is not None else
                 "set data.augment_on=device (batched views on the training device) or raise data.num_workers")
        return (f"the loop waited for data {100 * self.waited['data_s'] / total:.0f}% of its step time "
                f"(data.num_workers={self.cfg.data.num_workers}); {where}")

    def end_of_epoch(self) -> None:
        """Scheduled evaluation at an epoch boundary."""
        step, cfg = self.state.step, self.cfg
        epoch = step // cfg.train.steps_per_epoch
        if epoch % cfg.eval.every_epochs == 0 or step == self.total_steps:
            entry = self.evaluate()
            self.state.record(entry)
            self.last_entry = entry
            self.reporter.evaluation(entry)
            log.info("epoch %d step %d: test acc %.4f balanced %.4f", epoch, step,
                     entry["overall_acc"], entry["balanced_acc"])

    # -- the end --------------------------------------------------------------------------------
    def final_metrics(self) -> dict[str, Any]:
        """The final model's evaluation (re-used when the last scheduled one was at this step)."""
        series = list(self.state.history)
        if self.last_entry is not None and self.last_entry["step"] == self.state.step:
            final = self.last_entry
        else:  # the stop point is not a scheduled evaluation (max_steps, zero-shot, resumed at the end)
            final = self.evaluate()
            if not series or series[-1]["step"] != self.state.step:  # not logged before the resume
                self.reporter.evaluation({**final, "final": True})
        self.reporter.close()
        seen = self.global_seen()
        final = {**final, "images_seen": seen, "cost": _cost(seen, self.state.train_seconds, self.rt.device),
                 "nonfinite_skipped_steps": self.state.nonfinite_skipped}
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
        final["cost"]["data_wait_fraction"] = (self.waited["data_s"] / self.waited["step_s"]
                                               if self.waited["step_s"] > 0 else None)
        hint = self.waiting_hint()
        if hint is not None and self.rt.is_main:
            log.warning(hint)
        if self.rt.is_main:
            save_weights(self.method, self.run_dir / "weights.safetensors")
            if self.ema is not None:
                save_weights(self.method, self.run_dir / "ema.safetensors", extra=self.ema.state_dict())
            atomic_write_text(self.run_dir / FINAL_METRICS, json.dumps(final, indent=2))  # written last
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


def setup_trainer(cfg: Config, rt: Runtime, run_dir: Path) -> Trainer:
    """Assemble the run and set up its trainer (optimisation and resume for methods that train)."""
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
    _log_params(parts, trainable_parameter_count(parts.method) if trains else 0)
    trainer = Trainer(parts, rt, run_dir)
    if trains:
        trainer.prepare_training()
        if cfg.resume:
            trainer.resume()
        trainer.wrap()
    return trainer


def _run(cfg: Config, rt: Runtime, run_dir: Path) -> Path:
    """Train (or only evaluate) a run whose folder is ready."""
    trainer = setup_trainer(cfg, rt, run_dir)
    trainer.reporter = Reporter(run_dir, rt.is_main, cfg.train.progress, trainer.stop, trainer.state.step, cfg)
    if trainer.optimizer is not None:  # zero-shot and the like: evaluate-only, same finish()
        trainer.fit()
    return trainer.finish()


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
            result = _run(cfg, rt, run.path)
        done = True
        return result
    finally:
        if handler is not None:
            logging.getLogger("ulfine").removeHandler(handler)
            handler.close()
        if not done and rt.is_main and not cfg.resume:
            discard_unfinished(run)


__all__ = ["StepModule", "Trainer", "setup_trainer", "train"]
