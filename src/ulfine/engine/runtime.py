"""The process/device/precision runtime of a run, on Hugging Face Accelerate.

One :class:`Runtime` per run wraps an ``accelerate.Accelerator``: it knows the device, the rank
and world size (``torchrun`` / ``accelerate launch`` set them; a plain ``python`` is one
process), and gives the autocast context that really enables bf16/fp16 (the dtype is logged).
"""

from __future__ import annotations

import errno
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState, GradientState

from ..config import Config
from ..errors import ResourceError
from ..methods.base import Collectives, LocalCollectives
from ..registry import FINETUNE_MODES
from .precision import ACCELERATE_NAMES, AUTOCAST_DTYPES, resolve_device, resolve_precision


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

    def all_true(self, flag: torch.Tensor) -> bool:
        """Whether a boolean scalar is true on every rank (one device sync; a collective)."""
        flag = flag.to(torch.int32)
        if self.world_size > 1 and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag)

    def describe(self) -> str:
        """The line logged at the start of a run (device, processes, precision)."""
        return (f"runtime: {self.device}, {self.world_size} process(es), precision {self.precision} "
                f"(autocast dtype {self.autocast_dtype})")

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
    return Runtime(accelerator, prec)


def out_of_memory_advice(cfg: Config, exc: BaseException) -> str:
    """One line for an accelerator out-of-memory error: what ran out and the settings to change."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    t, o = cfg.train, cfg.optim
    heavy = FINETUNE_MODES.get(cfg.finetune).trains_whole_tower
    lighter = ", or train fewer weights (finetune=lft instead of fft)" if heavy else ""
    return (f"out of accelerator memory ({first}); lower train.batch_size (now {t.batch_size}) or raise "
            f"optim.grad_accum (now {o.grad_accum}): the same samples per step in smaller micro-batches; use "
            f"train.precision=bf16 (now {t.precision}); lower eval.batch_size (now {cfg.eval.batch_size}) "
            f"if it failed while evaluating{lighter}")


@contextmanager
def resource_advice(cfg: Config) -> Iterator[None]:
    """Turn running out of accelerator memory or disk space into a one-line ResourceError that
    names the settings to change (the CLI prints it and exits non-zero)."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise ResourceError(out_of_memory_advice(cfg, exc)) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise ResourceError(f"out of disk space writing {exc.filename or 'a file'}; free space (or point "
                            "output_dir / cache.dir elsewhere) and continue with resume=true") from None


__all__ = ["Runtime", "TorchCollectives", "make_runtime", "out_of_memory_advice", "resource_advice"]
