"""Where a run's time goes: the log window's scalars, images and data wait, and the totals of
this invocation. Kept beside the reporting code so the trainer only says what happened."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch

from ..methods import StepOutput

#: above this fraction of step time spent waiting for data, the run says how to fix it
DATA_WAIT_HINT = 0.10
#: ... but only after this many steps: the first batch of a few-step run (workers starting) is not
#: a steady-state wait worth a warning
DATA_WAIT_MIN_STEPS = 20


def scalar(v: torch.Tensor | float) -> torch.Tensor | float:
    """A log value kept on its device: converting to a Python float every step would force a
    device synchronisation per logged key; the window is converted once per ``log_every``."""
    return v.detach().float().mean() if isinstance(v, torch.Tensor) else float(v)


def step_logs(loss: torch.Tensor, out: StepOutput) -> dict[str, torch.Tensor | float]:
    """The method's scalars, the loss, and what the engine reads of the step's pseudo-labels."""
    logs = dict(out.logs)
    if out.pseudo is not None:
        logs["mask_rate"] = out.pseudo.mask.float().mean()
        logs["pl_confidence"] = out.pseudo.confidence.float().mean()
    logs["loss"] = loss
    return logs


def nonfinite_terms(logs: list[dict[str, torch.Tensor | float]]) -> str:
    """``loss=nan, loss_x=0.693, ...`` of the first micro-batch whose loss is not finite."""
    bad = next((lg for lg in logs if not torch.isfinite(torch.as_tensor(scalar(lg["loss"])))), logs[0])
    return ", ".join(f"{k}={float(scalar(v)):.4g}" for k, v in bad.items())


def device_utilization(device: torch.device) -> float | None:
    """The accelerator's utilisation in % (NVML through torch), None where it cannot be read."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except (ModuleNotFoundError, RuntimeError):  # pynvml missing or NVML unavailable
        return None


class StepMeter:
    """Accumulates the steps of one log window (scalars on device, images, data wait) and the
    data-wait and step seconds of the whole invocation."""

    def __init__(self) -> None:
        self.window: dict[str, list[torch.Tensor | float]] = defaultdict(list)
        self.images, self.waited, self.started = 0, 0.0, time.perf_counter()
        self.data_s, self.step_s = 0.0, 0.0
        self.steps = 0  # optimiser steps of this invocation

    def add_logs(self, logs: list[dict[str, torch.Tensor | float]]) -> None:
        """The scalars of one optimiser step's micro-batches (not of a step skipped as non-finite)."""
        for lg in logs:
            for k, v in lg.items():
                self.window[k].append(scalar(v))

    def add_time(self, images: int, wait_s: float, step_s: float) -> None:
        """One optimiser step's images, its wait for data and its whole duration."""
        self.images += images
        self.waited += wait_s
        self.data_s += wait_s
        self.step_s += step_s
        self.steps += 1

    def flush(self, device: torch.device) -> dict[str, float] | None:
        """The window's means (one device sync), images/s, data-wait fraction and utilisation;
        starts the next window. None when every step of the window was skipped."""
        seconds = max(1e-9, time.perf_counter() - self.started)
        out: dict[str, Any] | None = None
        if self.window:
            out = {k: sum(float(x) for x in v) / len(v) for k, v in self.window.items()}
            out["images_per_s"] = self.images / seconds
            out["data_wait_fraction"] = self.waited / seconds
            util = device_utilization(device)
            if util is not None:
                out["device_utilization"] = util
        self.window.clear()
        self.images, self.waited, self.started = 0, 0.0, time.perf_counter()
        return out

    def data_wait_fraction(self) -> float | None:
        """Fraction of this invocation's step time spent waiting for data."""
        return self.data_s / self.step_s if self.step_s > 0 else None

    def waiting_hint(self, num_workers: int, views_on_device: bool) -> str | None:
        """One line when this invocation waited for data more than 10% of its step time, over at
        least :data:`DATA_WAIT_MIN_STEPS` steps."""
        frac = self.data_wait_fraction()
        if frac is None or frac <= DATA_WAIT_HINT or self.steps < DATA_WAIT_MIN_STEPS:
            return None
        where = ("raise data.num_workers" if views_on_device else
                 "set data.augment_on=device (batched views on the training device) or raise data.num_workers")
        return (f"the loop waited for data {100 * frac:.0f}% of its step time "
                f"(data.num_workers={num_workers}); {where}")


def training_cost(seen: dict[str, int], train_seconds: float, device: torch.device) -> dict[str, Any]:
    """Training cost figures: images per second of optimiser steps, and peak accelerator memory."""
    images = sum(seen.values())
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"train_images_per_s": images / train_seconds if train_seconds > 0 else None,
            "peak_memory_mib": None if peak is None else round(peak, 1), "device": str(device)}


__all__ = ["DATA_WAIT_HINT", "DATA_WAIT_MIN_STEPS", "StepMeter", "device_utilization", "nonfinite_terms",
           "scalar", "step_logs",
           "training_cost"]
