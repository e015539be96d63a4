"""Deterministic, resumable, rank-sliced batch streams of uint8 images.

Reproducibility by construction, not by luck:

- the index stream of a role is a pure function of (seed, role, position): epoch e of the
  labeled (unlabeled) set is a permutation seeded by (seed, role, e), and the global batch of
  step s takes stream positions s*B .. s*B+B-1 (s*mu*B .. for unlabeled images);
- each sample's augmentation draws from a torch generator seeded by (seed, role, step,
  position in the global batch), set inside ``__getitem__``;

so batch s is the same for any ``num_workers``, after a resume at ``start_step=s``, and the
ranks' slices of a global batch (contiguous, in rank order) concatenate to the single-process
batch. Unlabeled ground truth never leaves this module: :class:`~ulfine.batch.Batch` has no
field for it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..batch import Batch
from ..config.schema import RANDAUGMENT_OPS
from ..errors import ConfigError
from .base import ImageSet
from .splits import SSLData
from .views import Views, build_views

LABELED, UNLABELED = 0, 1  # role ids mixed into the seeds


def sample_seed(seed: int, role: int, step: int, position: int) -> int:
    """Seed of one sample's augmentation: a hash of (seed, role, step, position)."""
    return int(np.random.SeedSequence([seed, role, step, position]).generate_state(1, np.uint64)[0] >> 1)


class IndexStream:
    """Positions of an endless stream over ``n`` items: concatenated seeded epoch permutations."""

    def __init__(self, n: int, seed: int, role: int) -> None:
        if n <= 0:
            raise ConfigError("cannot stream an empty image set")
        self.n, self.seed, self.role = n, seed, role
        self._cache: dict[int, np.ndarray] = {}

    def epoch(self, e: int) -> np.ndarray:
        perm = self._cache.get(e)
        if perm is None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.role, e]))
            perm = rng.permutation(self.n)
            if len(self._cache) > 4:
                self._cache.pop(min(self._cache))
            self._cache[e] = perm
        return perm

    def take(self, start: int, count: int) -> np.ndarray:
        """Items at stream positions start .. start+count-1."""
        pos = np.arange(start, start + count)
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(pos // self.n):
            sel = pos // self.n == e
            out[sel] = self.epoch(int(e))[pos[sel] % self.n]
        return out


class _StepSampler:
    """Yields, per step, the requests (role, step, position, index) of this rank's slice."""

    def __init__(self, n_l: int, n_u: int, batch_size: int, mu: int, seed: int, start_step: int,
                 rank: int, world_size: int) -> None:
        self.b, self.ub = batch_size, mu * batch_size if n_u else 0
        self.lo_l, self.hi_l = rank_range(self.b, rank, world_size, "batch_size")
        self.lo_u, self.hi_u = rank_range(self.ub, rank, world_size, "mu x batch_size")
        self.stream_l = IndexStream(n_l, seed, LABELED)
        self.stream_u = IndexStream(n_u, seed, UNLABELED) if n_u else None
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        step = self.start_step
        while True:
            reqs = []
            idx_l = self.stream_l.take(step * self.b + self.lo_l, self.hi_l - self.lo_l)
            reqs += [(LABELED, step, self.lo_l + j, int(i)) for j, i in enumerate(idx_l)]
            if self.stream_u is not None:
                idx_u = self.stream_u.take(step * self.ub + self.lo_u, self.hi_u - self.lo_u)
                reqs += [(UNLABELED, step, self.lo_u + j, int(i)) for j, i in enumerate(idx_u)]
            yield reqs
            step += 1


def rank_range(total: int, rank: int, world_size: int, what: str) -> tuple[int, int]:
    """[lo, hi): this rank's contiguous share of a global batch of ``total`` positions."""
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world_size {world_size}")
    if total % world_size:
        raise ConfigError(f"{what} = {total} must be divisible by the number of processes ({world_size})")
    share = total // world_size
    return rank * share, (rank + 1) * share


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run tiny per-image ops on one thread: on a busy machine torch's thread pool makes a
    3x32x32 reflect-pad take ~15 ms instead of ~10 us (workers already run single-threaded)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _to_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy())  # one copy, writable


@dataclass(frozen=True)
class LabeledSample:
    """One labeled image of a step (augmented, or raw for the device views), its label and index."""

    step: int
    image: torch.Tensor
    label: int
    index: int


@dataclass(frozen=True)
class UnlabeledSample:
    """One unlabeled image of a step: its weak view (the raw image for the device views), its
    strong views (none when the device makes them) and its index into the unlabeled set."""

    step: int
    weak: torch.Tensor
    strong: tuple[torch.Tensor, ...]
    index: int


class _SSLDataset(Dataset):
    """Turns a request into an augmented sample, with randomness seeded by the request."""

    def __init__(self, labeled: ImageSet, unlabeled: ImageSet | None, views: Views, spec: StreamSpec,
                 raw: bool) -> None:
        self.labeled, self.unlabeled, self.views, self.spec, self.raw = labeled, unlabeled, views, spec, raw

    def __len__(self) -> int:
        return len(self.labeled)

    def __getitem__(self, req: tuple[int, int, int, int]) -> LabeledSample | UnlabeledSample:
        role, step, pos, index = req
        if self.raw:  # the device makes the views (data.augment_on=device)
            if role == LABELED:
                return LabeledSample(step, _to_chw(self.labeled.load(index)), int(self.labeled.labels[index]), index)
            return UnlabeledSample(step, _to_chw(self.unlabeled.load(index)), (), index)
        with torch.random.fork_rng(devices=[]), _single_thread():
            # CPU generator only: torch.manual_seed also queues a CUDA seeding with a traceback
            torch.default_generator.manual_seed(sample_seed(self.spec.seed, role, step, pos))
            if role == LABELED:
                img = _to_chw(self.labeled.load(index))
                x = self.views.weak(img) if self.spec.augment else img
                return LabeledSample(step, x, int(self.labeled.labels[index]), index)
            assert self.unlabeled is not None
            img = _to_chw(self.unlabeled.load(index))
            weak = self.views.weak(img)  # drawn first: one strong view gives the same stream as ever
            strong = tuple(self.views.strong(img) for _ in range(self.spec.strong_views))
            return UnlabeledSample(step, weak, strong, index)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.stack(tensors) if tensors else None


def _collate(items: list[LabeledSample | UnlabeledSample]) -> Batch:
    """One step's samples (labeled first, then unlabeled) as a :class:`Batch`, by field name."""
    lab = [it for it in items if isinstance(it, LabeledSample)]
    unl = [it for it in items if isinstance(it, UnlabeledSample)]
    views = len(unl[0].strong) if unl else 0
    return Batch(
        x_l=torch.stack([it.image for it in lab]),
        y_l=torch.tensor([it.label for it in lab], dtype=torch.int64),
        u_w=_stack([it.weak for it in unl]),
        u_s=_stack([it.strong[0] for it in unl]) if views >= 1 else None,
        u_s2=_stack([it.strong[1] for it in unl]) if views >= 2 else None,
        idx_u=torch.tensor([it.index for it in unl], dtype=torch.int64) if unl else None,
        step=items[0].step,
    )


def _worker_init(worker_id: int) -> None:
    # samples are seeded per request; this only keeps stray library randomness reproducible
    info = torch.utils.data.get_worker_info()
    base = info.seed if info is not None else worker_id
    np.random.seed(base % 2**32)
    random.seed(base)
    torch.set_num_threads(1)


def _loader(dataset: Dataset, batch_sampler, num_workers: int, collate,  # noqa: ANN001
            persistent: bool) -> DataLoader:
    kwargs = {}
    if num_workers > 0:
        kwargs = {"persistent_workers": persistent, "prefetch_factor": 4, "worker_init_fn": _worker_init}
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers,
                      collate_fn=collate, pin_memory=torch.cuda.is_available(), **kwargs)


@dataclass(frozen=True)
class StreamSpec:
    """What a training stream draws: the global labeled batch, mu, the seed and the views.

    ``unlabeled``: whether unlabeled images are drawn at all (a supervised method needs none);
    ``strong_views``: strong views per unlabeled image (1, or 2 for ACR and FineSSL).
    """

    batch_size: int
    mu: int = 1
    seed: int = 0
    unlabeled: bool = True
    augment: bool = True
    strong_views: int = 1
    num_workers: int = 0
    strong_ops: tuple[str, ...] = RANDAUGMENT_OPS  # the RandAugment ops the strong views draw from

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.mu < 1 or self.strong_views not in (1, 2):
            raise ConfigError("batch_size and mu must be >= 1 and strong_views 1 or 2")


def ssl_batches(data: SSLData, spec: StreamSpec, start_step: int = 0, rank: int = 0, world_size: int = 1,
                raw: bool = False) -> Iterator[Batch]:
    """Endless training batches from ``start_step`` on; ``spec.batch_size`` is global (all ranks).

    Each yield is this rank's slice of step s (``Batch.step == s``): batch_size/world_size labeled
    images and, when ``spec.unlabeled`` and the data has an unlabeled set, mu*batch_size/world_size
    unlabeled images (a weak and ``spec.strong_views`` strong views of the same image, plus its
    index into ``data.unlabeled``). With ``raw`` the images come unaugmented (``u_w`` the
    unlabeled image, no strong view) for :class:`~ulfine.data.device_augment.DeviceAugmenter` to
    make the same views on the device (:func:`ulfine.data.stream.training_stream` decides).
    """
    if start_step < 0:
        raise ConfigError("start_step must be >= 0")
    unl = data.unlabeled if spec.unlabeled else None
    sampler = _StepSampler(len(data.labeled), len(unl) if unl is not None else 0, spec.batch_size, spec.mu,
                           spec.seed, start_step, rank, world_size)
    dataset = _SSLDataset(data.labeled, unl, build_views(data.native_size, spec.strong_ops), spec, raw)
    yield from _loader(dataset, sampler, spec.num_workers, _collate, True)


class _EvalDataset(Dataset):
    def __init__(self, images: ImageSet) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):  # noqa: ANN204
        return _to_chw(self.images.load(index)), int(self.images.labels[index]), index


def _eval_collate(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.stack([it[0] for it in items]),
            torch.tensor([it[1] for it in items], dtype=torch.int64),
            torch.tensor([it[2] for it in items], dtype=torch.int64))


def eval_batches(images: ImageSet, batch_size: int, num_workers: int = 0, rank: int = 0,
                 world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x uint8 (b,3,h,w), y int64, idx int64) over this rank's contiguous shard, in order.

    The shards of ranks 0..world_size-1 concatenate to the whole set; ``y`` is -1 where unknown.
    """
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world_size {world_size}")
    shard = np.array_split(np.arange(len(images)), world_size)[rank]
    batches = [shard[i:i + batch_size].tolist() for i in range(0, len(shard), batch_size)]
    if not batches:
        return iter(())
    return iter(_loader(_EvalDataset(images), batches, num_workers, _eval_collate, False))
