"""The weak and strong views computed on the training device, batched (``data.augment_on=device``).

Why: per-image RandAugment in loader workers cannot feed a GPU step (and competes with the model
for a laptop's cores). Here the host only gathers raw uint8 images; the device applies the views
to the whole batch.

Same samples, not just the same distribution: each sample's random draws are made from a
generator seeded exactly as the host path seeds it (``loaders.sample_seed(seed, role, step,
position)``) and in the order torchvision's v2 transforms draw them (RandomCrop: top, left;
RandomHorizontalFlip: one uniform; RandAugment: per op an index and, for signed ops, a sign). The
ops themselves are torchvision's (``F.pad``/crop indexing, ``v2.RandAugment``'s own op table),
applied to the sub-batch of samples that drew the same op and sign. So the device path yields the
host path's views (equal on the CPU, to a grey level on accelerators), and resume and
multi-process runs stay exact. Only the per-sample grouping is written here: torchvision and
kornia apply one draw to a whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import RandAugment

from ..batch import Batch
from .loaders import LABELED, UNLABELED, rank_range, sample_seed
from .views import STRONG_MAGNITUDE, STRONG_NUM_OPS, crop_padding

_RA = RandAugment(num_ops=STRONG_NUM_OPS, magnitude=STRONG_MAGNITUDE)
OPS: tuple[str, ...] = tuple(_RA._AUGMENTATION_SPACE)  # torchvision's op table, in its order


@dataclass
class ViewParams:
    """One batch's draws: crop offsets and flips (N,), RandAugment op indices and signs (N, ops)."""

    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor
    ops: torch.Tensor | None = None  # index into OPS
    negate: torch.Tensor | None = None  # the op's magnitude is negated


def _draw_weak(g: torch.Generator, pad: int) -> tuple[int, int, bool]:
    top = int(torch.randint(0, 2 * pad + 1, size=(), generator=g))
    left = int(torch.randint(0, 2 * pad + 1, size=(), generator=g))
    flip = bool(torch.rand(1, generator=g) < 0.5)  # v2: no flip when rand >= p
    return top, left, flip


def _draw_ops(g: torch.Generator, size: int, allowed: tuple[str, ...]) -> tuple[list[int], list[bool]]:
    """RandAugment's draws over the ``allowed`` ops (in the table's order, as the host's restricted
    table); the op is stored as its index into the full :data:`OPS`."""
    ops, negate = [], []
    for _ in range(STRONG_NUM_OPS):
        name = allowed[int(torch.randint(len(allowed), (), generator=g))]
        fn, signed = _RA._AUGMENTATION_SPACE[name]
        neg = fn(_RA.num_magnitude_bins, size, size) is not None and signed and bool(torch.rand((), generator=g) <= 0.5)
        ops.append(OPS.index(name))
        negate.append(neg)
    return ops, negate


def draw_params(seeds: list[int], size: int, strong_views: int = 0,
                allowed: tuple[str, ...] = OPS) -> tuple[ViewParams, list[ViewParams]]:
    """Per-sample draws of the weak view, then of ``strong_views`` strong views (unlabeled images),
    in the host path's order on generators seeded like the host path's."""
    pad = crop_padding(size)
    weak: list[tuple[int, int, bool]] = []
    strong: list[list[tuple]] = [[] for _ in range(strong_views)]
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        weak.append(_draw_weak(g, pad))
        for view in strong:
            view.append((*_draw_weak(g, pad), *_draw_ops(g, size, allowed)))
    as_params = lambda rows: ViewParams(*(torch.tensor(c) for c in zip(*rows)))
    return as_params(weak), [as_params(rows) for rows in strong]


def weak_views(x: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """Reflect-pad, crop each sample at its (top, left), flip the samples that drew a flip."""
    n, _, h, w = x.shape
    pad = crop_padding(h)
    padded = torch.nn.functional.pad(x, [pad] * 4, mode="reflect") if x.dtype.is_floating_point else \
        torch.nn.functional.pad(x.float(), [pad] * 4, mode="reflect").to(x.dtype)
    dev = x.device
    rows = (p.top.to(dev)[:, None] + torch.arange(h, device=dev))[:, :, None]
    cols = (p.left.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, :]
    out = padded[torch.arange(n, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    return torch.where(p.flip.to(dev)[:, None, None, None], out.flip(-1), out).contiguous()


def randaugment(x: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """RandAugment with each sample's own ops and signs: torchvision's op on every group of
    samples that drew the same (op, sign) in a slot."""
    size = x.shape[-1]
    for slot in range(p.ops.shape[1]):
        out = x.clone()
        keys = p.ops[:, slot] * 2 + p.negate[:, slot].long()
        for key in keys.unique().tolist():
            sel = (keys == key).nonzero().flatten().to(x.device)
            op, neg = OPS[key // 2], bool(key % 2)
            fn, _ = _RA._AUGMENTATION_SPACE[op]
            mags = fn(_RA.num_magnitude_bins, size, size)
            magnitude = 0.0 if mags is None else float(mags[_RA.magnitude]) * (-1.0 if neg else 1.0)
            out[sel] = _RA._apply_image_or_video_transform(x[sel], op, magnitude, interpolation=_RA.interpolation,
                                                           fill=_RA._fill)
        x = out
    return x


class DeviceAugmenter:
    """Turns a raw device batch (``x_l``: labeled, ``u_w``: unlabeled images, both unaugmented
    uint8) into the augmented batch the host path would have produced for the same step."""

    def __init__(self, seed: int, batch_size: int, mu: int, rank: int = 0, world_size: int = 1,
                 augment_labeled: bool = True, strong_views: int = 1, strong_ops: tuple[str, ...] = OPS) -> None:
        self.seed, self.augment_labeled, self.strong_views = seed, augment_labeled, strong_views
        self.strong_ops = strong_ops
        self.lo_l, _ = rank_range(batch_size, rank, world_size, "batch_size")
        self.lo_u, _ = rank_range(mu * batch_size, rank, world_size, "mu x batch_size")

    def _seeds(self, role: int, step: int, lo: int, n: int) -> list[int]:
        return [sample_seed(self.seed, role, step, lo + j) for j in range(n)]

    def __call__(self, batch: Batch) -> Batch:
        x_l, size = batch.x_l, batch.x_l.shape[-1]
        if self.augment_labeled:
            weak, _ = draw_params(self._seeds(LABELED, batch.step, self.lo_l, len(x_l)), size)
            x_l = weak_views(x_l, weak)
        if batch.u_w is None:
            return Batch(x_l, batch.y_l, step=batch.step)
        raw = batch.u_w
        seeds = self._seeds(UNLABELED, batch.step, self.lo_u, len(raw))
        weak, strong = draw_params(seeds, size, self.strong_views, self.strong_ops)
        views = [randaugment(weak_views(raw, p), p) for p in strong]
        return Batch(x_l, batch.y_l, weak_views(raw, weak), views[0], batch.idx_u, batch.step,
                     views[1] if len(views) > 1 else None)


__all__ = ["OPS", "DeviceAugmenter", "ViewParams", "draw_params", "randaugment", "weak_views"]
