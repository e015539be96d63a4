"""The process/device/precision runtime of a run, on Hugging Face Accelerate.

One :class:`Runtime` per run wraps an ``accelerate.Accelerator``: it knows the device, the rank
and world size (``torchrun`` / ``accelerate launch`` set them; a plain ``python`` is one
process), and gives the autocast context that really enables bf16/fp16 (the dtype is logged).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState, GradientState

from ..methods.base import Collectives, LocalCollectives
from .precision import ACCELERATE_NAMES, AUTOCAST_DTYPES, resolve_device, resolve_precision

log = logging.getLogger("ulfine.engine")


class TorchCollectives:
    """Collectives over the initialised ``torch.distributed`` process group."""

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t)
        return torch.cat(parts)


@dataclass
class Runtime:
    """Accelerator plus the resolved precision name ('fp32' | 'bf16' | 'fp16')."""

    accelerator: Accelerator
    precision: str

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast computes matmuls in (None = fp32, autocast off)."""
        return AUTOCAST_DTYPES[self.precision]

    def autocast(self) -> AbstractContextManager[None]:
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        return self.accelerator.autocast()

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (a one-element list without distribution)."""
        if self.world_size == 1 or not dist.is_initialized():
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (e.g. the run folder's timestamped name)."""
        if self.world_size == 1 or not dist.is_initialized():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def collectives(self) -> Collectives:
        """What a method uses to keep its state identical across processes."""
        if self.world_size > 1 and dist.is_initialized():
            return TorchCollectives()
        return LocalCollectives()


def make_runtime(device: str, precision: str) -> Runtime:
    """Create the Accelerator for ``train.device`` / ``train.precision``.

    Accelerate keeps process-wide singletons; they are reset first so that several runs in one
    process (tests, notebooks) may use different precisions. The process group is kept.
    """
    # DDP must not re-broadcast method buffers each forward (methods keep them rank-consistent);
    # torch >= 2.14 warns that the flag is being renamed, which is noise for users.
    warnings.filterwarnings("ignore", message=".*broadcast_buffers.*is deprecated", category=FutureWarning)
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    accelerator = Accelerator(
        cpu=dev == "cpu",
        mixed_precision=ACCELERATE_NAMES[prec],
        kwargs_handlers=[ddp],
        step_scheduler_with_optimizer=False,
    )
    rt = Runtime(accelerator, prec)
    log.info(
        "runtime: %s, %d process(es), precision %s (autocast dtype %s)",
        rt.device, rt.world_size, prec, rt.autocast_dtype,
    )
    return rt


__all__ = ["Runtime", "TorchCollectives", "make_runtime"]
