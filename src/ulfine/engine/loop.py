"""The one training loop of every method: ``train(cfg) -> run folder``.

Per optimiser step: the rank's slice of the global batch (``train.batch_size`` labeled images,
``mu`` times as many unlabeled) is cut into ``optim.grad_accum`` micro-batches; each is moved to
the device, normalised there, run through ``method.training_step`` under autocast and
back-propagated (loss / grad_accum; DDP gradient averaging only on the last micro-batch); then
gradient clipping, the optimiser and the scheduler step, ``method.after_optimizer_step()`` and the
EMA update follow. Hence 1 process or N processes, with or without accumulation, take the same
optimiser steps on the same samples (up to floating-point summation order).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ConfigError
from .build import RunParts, build_parts, trainable_parameter_count
from .checkpoint import load_checkpoint, save_checkpoint, save_weights
from .ema import TrainableEMA
from .evaluate import EvalSets, build_eval_sets, evaluate_sets, to_device_images
from .metrics import mean_of_last
from .optim import build_optimizer, build_scheduler
from .reporting import Reporter, attach_file_log, default_run_dir, print_summary
from .runtime import Runtime, make_runtime
from .seeding import rng_state, seed_everything, set_rng_state

if TYPE_CHECKING:
    from ..config import Config
    from ..methods.base import Method, SSLBatch, StepOutput

log = logging.getLogger("ulfine.engine")

# keys that may differ between an interrupted run and its resumption
RESUMABLE_CHANGES = {"resume", "train.max_steps", "train.progress", "train.log_every",
                     "train.checkpoint_every", "data.num_workers", "data.root", "output_dir"}


class StepModule(nn.Module):
    """What DDP wraps: ``forward(batch) -> (loss, StepOutput)`` of the method."""

    def __init__(self, method: "Method") -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: "SSLBatch") -> tuple[torch.Tensor, "StepOutput"]:
        out = self.method.training_step(batch)
        return out.loss, out


# ------------------------------------------------------------------------------ run folder
def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def prepare_run_dir(cfg: "Config", rt: Runtime) -> tuple["Config", Path]:
    """Resolve output_dir (same on every rank), check resume compatibility, save config.yaml."""
    from ..config import config_to_dict, load_saved_config, save_config

    run_dir = Path(cfg.output_dir) if cfg.output_dir is not None else default_run_dir(cfg)
    run_dir = Path(rt.broadcast_object(str(run_dir)))
    cfg = cfg.model_copy(update={"output_dir": run_dir})
    saved = run_dir / "config.yaml"
    if cfg.resume:
        if not saved.is_file():
            raise ConfigError(f"resume=true but {run_dir} holds no run (config.yaml missing)")
        old = _flatten(config_to_dict(load_saved_config(saved)))
        new = _flatten(config_to_dict(cfg))
        diff = sorted(k for k in set(old) | set(new)
                      if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
        if diff:
            raise ConfigError(f"resume=true with a different config than {saved}: {', '.join(diff)}")
    elif (run_dir / "checkpoint").exists() or (run_dir / "final_metrics.json").exists():
        raise ConfigError(f"{run_dir} already holds a run; pass resume=true to continue it or "
                          "choose another output_dir")
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, saved)
    rt.barrier()
    return cfg, run_dir


def check_batch(cfg: "Config", world_size: int) -> int:
    """Per-rank micro-batch size; the global batch must split evenly over ranks x accumulation."""
    parts = world_size * cfg.optim.grad_accum
    if cfg.train.batch_size % parts:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} must be divisible by processes x "
            f"optim.grad_accum = {world_size} x {cfg.optim.grad_accum}"
        )
    return cfg.train.batch_size // parts


# ----------------------------------------------------------------------------- batches
def _chunk(t: torch.Tensor | None, n: int) -> list[torch.Tensor | None]:
    return [None] * n if t is None else list(torch.chunk(t, n))


def micro_batches(host: Any, n: int, device: torch.device, normalizer: nn.Module | None) -> list["SSLBatch"]:
    """Split a host batch into ``n`` device micro-batches (images normalised on the device)."""
    from ..methods.base import SSLBatch

    def dev_img(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        if normalizer is None:  # precomputed features
            return t.to(device, non_blocking=True)
        return to_device_images(t, device, normalizer)

    def dev(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else torch.as_tensor(t).to(device, non_blocking=True)

    fields = [_chunk(getattr(host, k, None), n) for k in ("x_l", "y_l", "u_w", "u_s", "idx_u")]
    return [SSLBatch(dev_img(x), dev(y).long(), dev_img(uw), dev_img(us), dev(iu))
            for x, y, uw, us, iu in zip(*fields)]


def host_stream(parts: RunParts, cfg: "Config", rt: Runtime, start_step: int,
                features: torch.Tensor | None) -> Any:
    """The rank's endless batch stream from ``start_step``: images, or labeled features."""
    method = parts.method
    if features is not None:
        from types import SimpleNamespace

        from .feature_mode import feature_batches

        stream = feature_batches(features, parts.data.labeled.labels, cfg.train.batch_size, cfg.seed,
                                 start_step, rt.rank, rt.world_size)
        return (SimpleNamespace(x_l=x, y_l=y) for x, y in stream)
    from ..data.loaders import ssl_batches

    return ssl_batches(parts.data, cfg.train.batch_size, cfg.ssl.mu, cfg.seed, start_step=start_step,
                       num_workers=cfg.data.num_workers, rank=rt.rank, world_size=rt.world_size,
                       unlabeled=method.uses_unlabeled, augment=cfg.data.augment)


# ------------------------------------------------------------------------------ training
def _scalar(v: Any) -> torch.Tensor | float:
    """A log value kept on its device: converting to a Python float every step would force a
    device synchronisation per logged key; the window is converted once per ``log_every``."""
    return v.detach().float().mean() if isinstance(v, torch.Tensor) else float(v)


def _log_params(parts: RunParts, n_trainable: int, rt: Runtime, cfg: "Config") -> None:
    s = parts.param_summary
    total = getattr(s, "total", None)
    log.info("method %s | finetune %s | peft %s | head %s", cfg.method, cfg.finetune, cfg.peft, cfg.head)
    log.info("backbone %s (%s): %s trainable of %s parameters; with the method's heads: %s trainable",
             cfg.model.arch, cfg.model.pretrained, f"{getattr(s, 'trainable', 0):,}",
             f"{total:,}" if total is not None else "?", f"{n_trainable:,}")


def train(cfg: "Config") -> Path:
    """Train (or, for methods that do not train, just evaluate) ``cfg``; returns the run folder.

    Writes config.yaml, split.json, train.log, metrics.jsonl, tb/, checkpoint/,
    weights.safetensors (+ ema.safetensors) and final_metrics.json (see docs/engine.md).
    """
    from ..methods.base import METHODS
    from .feature_mode import set_features, uses_features

    from .. import methods as _methods  # noqa: F401  (registration)

    method_cls = METHODS.get(cfg.method)
    rt = make_runtime(cfg.train.device, cfg.train.precision,
                      find_unused_parameters=bool(getattr(method_cls, "find_unused_parameters", False)))
    cfg, run_dir = prepare_run_dir(cfg, rt)
    handler = attach_file_log(run_dir) if rt.is_main else None
    try:
        return _train(cfg, run_dir, rt, method_cls, uses_features(cfg, method_cls), set_features)
    finally:
        if handler is not None:
            logging.getLogger("ulfine").removeHandler(handler)
            handler.close()


def _train(cfg: "Config", run_dir: Path, rt: Runtime, method_cls: Any, feature_mode: bool,
           set_features: Any) -> Path:
    from ..data import build_ssl_data, check_split
    from ..data.splits import SPLIT_FILE

    if method_cls.trains:
        check_batch(cfg, rt.world_size)  # fails early on an uneven batch split
    log.info("run folder %s; autocast %s", run_dir, rt.autocast_dtype or "off (fp32)")
    seed_everything(cfg.seed)
    data = build_ssl_data(cfg.data, cfg.seed)
    if cfg.resume and (run_dir / SPLIT_FILE).is_file():
        # data.root may change on resume: the data found there must give the same split
        check_split(data, run_dir)
    if rt.is_main:
        data.save_split(run_dir)
    parts = build_parts(cfg, rt.device, data)
    method = parts.method
    if cfg.train.compile and method_cls.trains and not feature_mode and hasattr(torch, "compile"):
        parts.backbone.visual.compile()
        log.info("image tower compiled with torch.compile")
    n_trainable = trainable_parameter_count(method) if method_cls.trains else 0
    _log_params(parts, n_trainable, rt, cfg)
    sets = build_eval_sets(parts, cfg, rt, feature_mode)
    labeled_feats = (set_features(parts, data.labeled, "labeled", cfg, rt)
                     if feature_mode and method_cls.trains else None)
    counts = list(data.labeled_counts)

    total_steps = cfg.train.epochs * cfg.train.steps_per_epoch if method_cls.trains else 0
    stop = min(total_steps, cfg.train.max_steps) if cfg.train.max_steps else total_steps
    history: list[dict[str, Any]] = []
    step, train_seconds = 0, 0.0
    seen = {"labeled": 0, "unlabeled": 0}  # images this rank trained on (summed over ranks at the end)
    seen_before = {"labeled": 0, "unlabeled": 0}  # global counts restored from a checkpoint
    best_val: dict[str, Any] | None = None

    optimizer = scheduler = ema = model = None
    if method_cls.trains:
        if n_trainable == 0:
            raise ConfigError(f"method {cfg.method!r} with finetune={cfg.finetune} has nothing to train")
        optimizer = build_optimizer(method, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
        ema = TrainableEMA(method, cfg.train.ema) if cfg.train.ema else None
        if cfg.resume:
            state, ema_state = load_checkpoint(run_dir, method)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, train_seconds = state["step"], state["train_seconds"]
            history, best_val = state["history"], state.get("best_val")
            seen_before = state.get("images_seen", seen_before)
            set_rng_state(state["rng"])
            if ema is not None and ema_state is not None:
                ema.load_state_dict(ema_state)
            log.info("resumed from step %d", step)
        model, optimizer = rt.accelerator.prepare(StepModule(method), optimizer)
        if cfg.resume and "scaler" in state and rt.accelerator.scaler is not None:
            rt.accelerator.scaler.load_state_dict(state["scaler"])

    def evaluate(at_step: int) -> dict[str, Any]:
        ctx = ema.applied() if ema is not None else contextlib.nullcontext()
        with ctx:
            m = evaluate_sets(method, parts, sets, cfg, rt, counts)
        m.update({"step": at_step, "epoch": at_step / max(1, cfg.train.steps_per_epoch),
                  "train_seconds": round(train_seconds, 3), "trainable_params": n_trainable,
                  "weights": "ema" if ema is not None else "raw"})
        return m

    def global_seen() -> dict[str, int]:
        per_rank = rt.gather_objects(dict(seen))
        return {k: seen_before[k] + sum(r[k] for r in per_rank) for k in seen}

    def checkpoint(at_step: int) -> None:
        images_seen = global_seen()  # collective: every rank takes part
        if not rt.is_main:
            return
        state = {"images_seen": images_seen, "step": at_step, "train_seconds": train_seconds,
                 "history": history, "best_val": best_val, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": rng_state()}
        if rt.accelerator.scaler is not None:
            state["scaler"] = rt.accelerator.scaler.state_dict()
        save_checkpoint(run_dir, method, state, ema.state_dict() if ema is not None else None)

    reporter = Reporter(run_dir, rt.is_main, cfg.train.progress, stop, step)
    last_entry: dict[str, Any] | None = None
    if method_cls.trains and step < stop:
        stream = host_stream(parts, cfg, rt, step, labeled_feats)
        method.train()
        window: dict[str, list[torch.Tensor | float]] = defaultdict(list)
        window_images, t_window = 0, time.perf_counter()
        normalizer = None if feature_mode else parts.normalizer
        while step < stop:
            t0 = time.perf_counter()
            host = next(stream)
            batches = micro_batches(host, cfg.optim.grad_accum, rt.device, normalizer)
            for i, batch in enumerate(batches):
                seen["labeled"] += len(batch.y_l)
                seen["unlabeled"] += 0 if batch.u_s is None else len(batch.u_s)
                last = i == len(batches) - 1
                sync = contextlib.nullcontext() if last else rt.accelerator.no_sync(model)
                with sync:
                    with rt.autocast():
                        loss, out = model(batch)
                    rt.accelerator.backward(loss / len(batches))
                for k, v in out.logs.items():
                    window[k].append(_scalar(v))
                window["loss"].append(_scalar(loss))
            if cfg.optim.clip_grad_norm:
                rt.accelerator.clip_grad_norm_(method.parameters(), cfg.optim.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            method.after_optimizer_step()
            if ema is not None:
                ema.update()
            step += 1
            train_seconds += time.perf_counter() - t0
            n_img = len(host.y_l) * (1 + (cfg.ssl.mu if method.uses_unlabeled else 0)) * rt.world_size
            window_images += n_img
            if step % cfg.train.log_every == 0 or step == stop:
                dt = max(1e-9, time.perf_counter() - t_window)
                logs = {k: sum(float(x) for x in v) / len(v) for k, v in window.items()}
                logs["lr"] = scheduler.get_last_lr()[0]
                logs["images_per_s"] = window_images / dt
                reporter.scalars("train", logs, step)
                reporter.progress(0, {"loss": f"{logs['loss']:.3f}",
                                      "acc": f"{logs.get('acc_l', float('nan')):.3f}",
                                      "img/s": f"{logs['images_per_s']:.0f}"})
                log.debug("step %d %s", step, logs)
                window.clear()
                window_images, t_window = 0, time.perf_counter()
            reporter.progress(1, {})
            if step % cfg.train.steps_per_epoch == 0:
                epoch = step // cfg.train.steps_per_epoch
                if epoch % cfg.eval.every_epochs == 0 or step == total_steps:
                    entry = evaluate(step)
                    history.append(_compact(entry))
                    last_entry = entry
                    best_val = _update_best(best_val, entry)
                    reporter.evaluation(entry)
                    log.info("epoch %d step %d: test acc %.4f balanced %.4f", epoch, step,
                             entry["overall_acc"], entry["balanced_acc"])
                if epoch % cfg.train.checkpoint_every == 0 and step < stop:
                    checkpoint(step)
                    rt.barrier()
    if method_cls.trains:
        checkpoint(step)  # the resumable state at the stop point (history: scheduled evals only)
        rt.barrier()
    if last_entry is not None and last_entry["step"] == step:
        final = last_entry
    else:  # the stop point is not a scheduled evaluation (max_steps, zero-shot, resumed at the end)
        final = evaluate(step)
        reporter.evaluation({**final, "final": True})
    reporter.close()
    seen_all = global_seen()
    final = {**final, "images_seen": seen_all, "cost": _cost(seen_all, train_seconds, rt.device)}
    return _finish(cfg, run_dir, rt, method, ema, final, history, best_val, step, stop < total_steps)


def _cost(seen: dict[str, int], train_seconds: float, device: torch.device) -> dict[str, Any]:
    """Training cost figures: images per second of optimiser steps, and peak accelerator memory."""
    images = sum(seen.values())
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"train_images_per_s": images / train_seconds if train_seconds > 0 else None,
            "peak_memory_mib": None if peak is None else round(peak, 1), "device": str(device)}


def _compact(entry: dict[str, Any]) -> dict[str, Any]:
    """What the history keeps of an evaluation (for last_k_mean and val selection)."""
    keep = ("step", "overall_acc", "balanced_acc", "group_acc", "ece")
    out = {k: entry[k] for k in keep}
    if entry.get("val"):
        out["val_overall_acc"] = entry["val"]["overall_acc"]
    return out


def _update_best(best: dict[str, Any] | None, entry: dict[str, Any]) -> dict[str, Any] | None:
    """Track the evaluation with the best *validation* accuracy (never the test accuracy)."""
    val = entry.get("val")
    if not val:
        return best
    if best is None or val["overall_acc"] > best["val_overall_acc"]:
        test = {k: entry[k] for k in ("overall_acc", "balanced_acc", "group_acc", "ece")}
        return {"step": entry["step"], "val_overall_acc": val["overall_acc"],
                "val_balanced_acc": val["balanced_acc"], "test": test}
    return best


def _finish(cfg: "Config", run_dir: Path, rt: Runtime, method: "Method", ema: TrainableEMA | None,
            final: dict[str, Any], history: list[dict[str, Any]], best_val: dict[str, Any] | None,
            step: int, stopped_early: bool) -> Path:
    """Write weights and final_metrics.json; print the summary table."""
    series = list(history)
    if not series or series[-1]["step"] != step:
        series.append(_compact(final))
    final = dict(final)
    final.pop("final", None)
    final["last_k_mean"] = mean_of_last(series, cfg.eval.last_k)
    final["stopped_early"] = stopped_early
    final["steps"] = step
    if cfg.eval.select_on == "val":
        final["selected_on_val"] = _update_best(best_val, final) if final.get("val") else best_val
        if final["selected_on_val"] is not None:
            final["selected_on_val"]["note"] = ("test metrics of the evaluation with the best "
                                                "validation accuracy; the top-level metrics are the "
                                                "final model's")
    if rt.is_main:
        save_weights(method, run_dir / "weights.safetensors")
        if ema is not None:
            save_weights(method, run_dir / "ema.safetensors", extra=ema.state_dict())
        (run_dir / "final_metrics.json").write_text(json.dumps(final, indent=2))
        if cfg.train.progress:
            print_summary(final, run_dir)
        log.info("final: test acc %.4f, balanced %.4f; written to %s", final["overall_acc"],
                 final["balanced_acc"], run_dir / "final_metrics.json")
    rt.barrier()
    return run_dir


__all__ = ["StepModule", "check_batch", "micro_batches", "prepare_run_dir", "train"]
