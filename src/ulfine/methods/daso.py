"""``daso``: DASO, Distribution-Aware Semantics-Oriented pseudo-labels (Oh, Kim & Kweon, CVPR 2022)
on FixMatch, as its own code does it [B] ytaek-oh/daso@3541a6c.

Followed line by line from ``DASOModel.forward_train`` (lib/models/daso_model.py), its
``FeatureQueue`` (lib/models/feature_queue.py), ``DASO.run_step`` (lib/algorithm/daso.py) and the
``DistributionLogger`` methods it calls (lib/utils/dist_logger.py); defaults from
lib/config/defaults.py and configs/cifar10/fixmatch_daso.yaml. Checked against that code executed
(tests/golden/test_daso_golden.py, vectors from scripts/golden/make_daso_method.py).

Per optimiser step t, with a labeled batch (x, y) and B unlabeled images seen as a weak view a(u)
and a strong view A(u); f(.) the backbone's features, z(.) = W f(.) the classifier's logits:

- **Class-wise queue [B].** Each class keeps the features of its last S labeled images (S = 256
  for every class: ``MODEL.QUEUE.MAX_SIZE`` with ``bal_queue=True``); the step's labeled features
  are pushed *before* the prototypes are read, so c_k = mean of class k's queue including this
  batch (c_k = 0 while class k has none) (daso_model.py:66-68, feature_queue.py:19-36).
- **Semantic pseudo-label [B]** (from step ``pretrain_steps`` on): s_w = cos(f(a(u)), c) / T_proto,
  q_sem = softmax(s_w), T_proto = 0.05 (daso_model.py:75-85).
- **Semantic alignment loss [B].** L_align = mean_i H(q_sem_i, softmax(cos(f(A(u_i)), c) / T_proto)),
  weighted by ``align_weight`` = 1 (daso_model.py:88-96); the gradient flows through f(A(u)) only.
- **Distribution-aware blend [B].** p = softmax(z(a(u))), y_lin = argmax p. With N_k the number of
  final pseudo-labels of class k over the last completed window of ``dist_update_period`` = 100
  steps (every unlabeled sample counted, confident or not), d = N / sum N, d' = d^(1/T_dist) /
  sum d^(1/T_dist), w = d' / max d' and p~ = (1 - w[y_lin]) p + w[y_lin] q_sem, T_dist = 1.5
  (daso_model.py:158-177, dist_logger.py:25-45, daso.py:85-90). Over-predicted classes lean on
  the class-balanced semantic label, rare ones keep the linear one. ``dist_aware=false`` uses the
  fixed weight ``interp_alpha`` instead of w[y_lin].
- **Consistency [B].** y^ = argmax p~, m = [max p~ >= t]; L_u = mean_i m_i CE(z(A(u_i)), y^_i)
  (``ul_loss(..., weight=m, avg_factor=B)``, daso_model.py:177-186).
- **Total [B].** L = CE(z(x), y) + lambda_u L_u + align_weight L_align; before ``pretrain_steps``
  (5000) only CE + lambda_u L_u with p~ = p, the queue and the window filling all along
  (daso.py:81-82: the semantic part starts at step ``pretrain_steps``).
- **Prediction [B].** z(x) (``forward_test``); ``predict_branches`` adds the semantic scores
  cos(f(x), c) / T_proto as ``semantic``.

Engine contract (``methods/base.py``): the queue, the window counts and the distribution are
registered buffers (checkpointed). A step's labeled features are kept per micro-batch and pushed in
:meth:`after_optimizer_step`, gathered over processes (``ctx.collectives.all_gather``, rank order);
its pseudo-label counts are summed over micro-batches and processes. So 1 or N processes, with or
without accumulation, hold one queue and one distribution, equal to a single process's with the
whole batch. Within a step, micro-batch j reads prototypes of the queue with micro-batches 1..j of
this process pushed provisionally (with one micro-batch on one process: DASO's exactly).

Deliberate deviations from the code:

- Queue features come from the trained network's forward pass (detached), where DASO runs its EMA
  teacher's encoder on the labeled batch (``ema_model(x, return_features=True)``, daso_model.py:67):
  the engine's EMA (``train.ema``) is for evaluation and is not visible to a method. With a frozen
  encoder (CLIP ``finetune=lp``) the two are the same; with BatchNorm the features come from the
  joint pass of all views (``Method.view_features``), not a labeled-only pass.
- An empty distribution (no completed window, e.g. ``pretrain_steps < dist_update_period``) is
  read as uniform (w = 1: the semantic label alone); DASO's code divides 0 by 0 there (NaN).
  DASO's first step is always a pre-training step (``pretraining`` starts True and is switched off
  after a step); here ``pretrain_steps=0`` uses the semantic part from step 0.
- The distribution is also replaced after the run's last step (DASO skips that update,
  daso.py:87; nothing reads it afterwards).
- Cosine similarities are ``normalise(f) @ normalise(c)^T`` in float32 (one matmul) instead of
  ``nn.CosineSimilarity`` on (B, 1, D) x (1, K, D); equal up to rounding.
- With gradient accumulation or several processes, a micro-batch's prototypes include only the
  labeled features this process has seen this step (the committed queue is exact, see above).
- Not ported: DASO on ReMixMatch/MeanTeacher/MixMatch, the ABC and logit-adjustment switches
  (``ALGORITHM.ABC``, ``ALGORITHM.LOGIT_ADJUST``; both off in ``fixmatch_daso.yaml``), DARP.
  ``ALGORITHM.DASO.QUEUE_SIZE`` (defaults.py:94) is read by nothing in DASO's code; the queue's size
  is ``MODEL.QUEUE.MAX_SIZE`` (defaults.py:25).

On CLIP [R]: the queue holds CLIP image features (the joint space), the classifier is the
configured ``head`` (``prototype``: the text-initialised cosine head; ``linear``: Xavier-normal
weights and zero bias, as DASO's ``Classifier``). Nothing else is scratch-only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..batch import Batch
from ..config import Section
from ..models.heads import LinearHead, cosine_logits
from .base import METHODS, MethodContext, MethodOptions, PseudoLabels, StepOutput
from .losses import cross_entropy, masked_consistency, soft_cross_entropy
from .supervised import Supervised, xavier_init


class DASOOptions(Section):
    """daso: the values of DASO's code (lib/config/defaults.py, configs/cifar10/fixmatch_daso.yaml)."""

    queue_size: int = Field(256, ge=1, description="labeled features kept per class (MODEL.QUEUE.MAX_SIZE, "
                            "defaults.py:25; every class the same size: bal_queue=True, daso_model.py:17)")
    proto_temp: float = Field(0.05, gt=0.0, description="temperature of the similarities to the prototypes "
                              "(ALGORITHM.DASO.PROTO_TEMP, defaults.py:85)")
    dist_temp: float = Field(1.5, gt=0.0, description="temperature of the pseudo-label distribution in the "
                             "blend (DIST_TEMP: 1.5 in configs/cifar10/fixmatch_daso.yaml:7, 0.3 in the "
                             "cifar100/stl10 configs and for CIFAR-10 with gamma_l != gamma_u; defaults.py:90: 1.0)")
    dist_aware: bool = Field(True, description="blend weight from the distribution; false: the fixed "
                             "interp_alpha (WITH_DIST_AWARE, fixmatch_daso.yaml:5)")
    interp_alpha: float = Field(0.5, ge=0.0, le=1.0, description="fixed blend weight when dist_aware=false "
                                "(INTERP_ALPHA, fixmatch_daso.yaml:9)")
    align_weight: float = Field(1.0, ge=0.0, description="weight of the semantic alignment loss "
                                "(PSA_LOSS_WEIGHT, fixmatch_daso.yaml:10)")
    pretrain_steps: int = Field(5000, ge=0, description="optimiser steps before the semantic pseudo-labels "
                                "and the alignment loss start (PRETRAIN_STEPS, defaults.py:84)")
    dist_update_period: int = Field(100, ge=1, description="steps per window of pseudo-label counts behind "
                                    "the distribution (PL_DIST_UPDATE_PERIOD, defaults.py:86)")


# ---------------------------------------------------------------------------- the class-wise queue
class ClassQueue(nn.Module):
    """Per-class FIFO of the last ``size`` labeled features (DASO's balanced ``FeatureQueue``).

    Why ring buffers in registered buffers, not DASO's growing per-class lists: the queue must be
    checkpointed and move with the module; ``count`` and ``ptr`` say which slots hold features and
    which is the oldest. Features are float32 whatever the autocast dtype.
    """

    def __init__(self, num_classes: int, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("bank", torch.zeros(num_classes, size, dim))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))  # next slot to write

    def _kept_new(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Of new features, in order: one-hot classes, rank from the end within their class (0: the
        newest), and whether they survive the push (only a class's last ``size`` do)."""
        onehot = F.one_hot(labels, self.bank.shape[0])
        from_end = (onehot.flip(0).cumsum(0).flip(0) * onehot).sum(1) - 1
        return onehot, from_end, from_end < self.size

    def prototypes(self, feats: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(K, D) class means of the queue as it would be after pushing ``feats`` (not pushed);
        a class without features gets the zero vector (DASO's initial prototypes)."""
        with torch.autocast(self.bank.device.type, enabled=False):  # float32 means under bf16 autocast
            return self._prototypes(feats, labels)

    def _prototypes(self, feats: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        _, s, _ = self.bank.shape
        new_sum = torch.zeros_like(self.bank[:, 0])
        new_n = torch.zeros_like(self.count)
        if feats is not None and len(feats):
            onehot, _, keep = self._kept_new(labels)
            w = onehot * keep[:, None]
            new_sum = w.t().float() @ feats.float()
            new_n = w.sum(0)
        old_keep = torch.minimum(self.count, s - new_n)
        age = (self.ptr[:, None] - 1 - torch.arange(s, device=self.bank.device)[None]) % s  # 0: newest
        kept = (age < old_keep[:, None]).float()
        old_sum = (kept.unsqueeze(1) @ self.bank).squeeze(1)
        n = (old_keep + new_n).clamp_min(1)
        return (old_sum + new_sum) / n[:, None].float()

    @torch.no_grad()
    def push(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Append ``feats`` (in order) to their classes' queues, dropping the oldest beyond ``size``."""
        if not len(feats):
            return
        s = self.size
        onehot, from_end, keep = self._kept_new(labels)
        n_kept = onehot.sum(0).clamp_max(s)
        order = n_kept[labels] - 1 - from_end  # 0: the oldest survivor of its class
        slot = (self.ptr[labels] + order) % s
        self.bank[labels[keep], slot[keep]] = feats[keep].to(self.bank.dtype)
        self.ptr.copy_((self.ptr + n_kept) % s)
        self.count.copy_((self.count + n_kept).clamp_max(s))


# ---------------------------------------------------------------------------- pure functions
def semantic_scores(features: torch.Tensor, prototypes: torch.Tensor, proto_temp: float) -> torch.Tensor:
    """cos(f, c_k) / T_proto in float32 (a zero prototype scores 0, as ``nn.CosineSimilarity``)."""
    return cosine_logits(features, prototypes, 1.0 / proto_temp)


def blend_weights(pl_counts: torch.Tensor, dist_temp: float) -> torch.Tensor:
    """w = d' / max d' with d' = d^(1/T) / sum d^(1/T), d = N / sum N (uniform when N is empty)."""
    counts = pl_counts.float()
    total = counts.sum()
    d = torch.where(total > 0, counts / total.clamp_min(1e-12), torch.full_like(counts, 1.0 / len(counts)))
    d = d ** (1.0 / dist_temp)
    d = d / d.sum()
    return d / d.max()


def blended_pseudo_labels(p_linear: torch.Tensor, q_semantic: torch.Tensor, weights: torch.Tensor | float
                          ) -> torch.Tensor:
    """p~ = (1 - w[argmax p]) p + w[argmax p] q_sem; ``weights`` per class, or one fixed weight."""
    if isinstance(weights, torch.Tensor):
        w = weights[p_linear.argmax(-1)].unsqueeze(-1)
    else:
        w = weights
    return (1.0 - w) * p_linear + w * q_semantic


# ----------------------------------------------------------------------------------- method
@METHODS.register("daso", options=DASOOptions)
class DASO(Supervised):
    """FixMatch with DASO's blended pseudo-labels and semantic alignment loss."""

    uses_unlabeled = True
    opts: DASOOptions

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(backbone, ctx, options)
        if options.head == "linear":  # DASO's Classifier; head=prototype stays the text-initialised head [R]
            # (Xavier-normal weights, zero bias: lib/models/classifier.py)
            self.head = xavier_init(LinearHead(ctx.feature_dim, ctx.num_classes, zero_init=False))
        k = ctx.num_classes
        self.queue = ClassQueue(k, self.opts.queue_size, ctx.feature_dim)
        self.register_buffer("pl_pending", torch.zeros(k))  # this step's pseudo-label counts
        self.register_buffer("pl_window", torch.zeros(k))  # counts of the window in progress
        self.register_buffer("pl_dist", torch.zeros(k))  # counts of the last completed window
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # this step's labeled features
        self._pending_step: int | None = None

    def semantic_active(self, step: int) -> bool:
        """Does optimiser step ``step`` use the semantic pseudo-labels and the alignment loss?"""
        return step >= self.opts.pretrain_steps

    def _stage_labeled(self, feats: torch.Tensor, labels: torch.Tensor, step: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep a micro-batch's labeled features for the step's push; return the features pushed
        so far this step (a skipped step's leftovers are dropped: its step index has passed)."""
        if self._pending_step != step:
            self._pending, self._pending_step = [], step
        self._pending.append((feats.detach().float(), labels))
        return torch.cat([f for f, _ in self._pending]), torch.cat([y for _, y in self._pending])

    def training_step(self, batch: Batch) -> StepOutput:
        if batch.u_w is None:
            raise RuntimeError("daso needs unlabeled batches")
        f = self.view_features(batch)
        f_l, f_w, f_s = f["x_l"], f["u_w"], f["u_s"]
        staged_f, staged_y = self._stage_labeled(f_l, batch.y_l, batch.step)
        z_l = self.logits(f_l)
        loss_s = cross_entropy(z_l, batch.y_l)
        with torch.no_grad():
            p = torch.softmax(self.logits(f_w).float(), dim=-1)
        loss_align = torch.zeros((), device=z_l.device)
        logs: dict[str, Any] = {}
        if self.semantic_active(batch.step):
            prototypes = self.queue.prototypes(staged_f, staged_y)
            with torch.no_grad():
                q_sem = torch.softmax(semantic_scores(f_w, prototypes, self.opts.proto_temp), dim=-1)
                weights = (blend_weights(self.pl_dist, self.opts.dist_temp) if self.opts.dist_aware
                           else self.opts.interp_alpha)
                p = blended_pseudo_labels(p, q_sem, weights)
            if self.opts.align_weight > 0:
                s_s = semantic_scores(f_s, prototypes, self.opts.proto_temp)
                loss_align = soft_cross_entropy(s_s, q_sem).mean()
            logs["semantic_agree"] = (q_sem.argmax(-1) == p.argmax(-1)).float().mean()
        confidence, label = p.max(dim=-1)
        mask = confidence >= self.ssl.tau
        loss_u = masked_consistency(self.logits(f_s), label, mask)
        loss = loss_s + self.ssl.lambda_u * loss_u + self.opts.align_weight * loss_align
        with torch.no_grad():
            self.pl_pending.index_add_(0, label, torch.ones_like(label, dtype=self.pl_pending.dtype))
        logs.update({"loss_s": loss_s.detach(), "loss_u": loss_u.detach(), "loss_align": loss_align.detach(),
                     "acc_l": (z_l.detach().argmax(-1) == batch.y_l).float().mean()})
        return StepOutput(loss, logs, PseudoLabels.of_batch(batch, label, confidence, mask))

    # -- state updates ----------------------------------------------------------------------------
    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """Push the step's labeled features (all processes, rank order) and count its pseudo-labels;
        every ``dist_update_period`` steps the window becomes the distribution (daso.py:85-90)."""
        if self._pending and self._pending_step == step:
            feats = torch.cat([f for f, _ in self._pending])
            labels = torch.cat([y for _, y in self._pending])
            self.queue.push(self.ctx.collectives.all_gather(feats), self.ctx.collectives.all_gather(labels))
        self._pending, self._pending_step = [], None
        self.pl_window += self.take_pending(self.pl_pending)
        if (step + 1) % self.opts.dist_update_period == 0:
            self.pl_dist.copy_(self.pl_window)
            self.pl_window.zero_()

    # -- prediction -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_branches(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {"decision": self.logits(f),
                "semantic": semantic_scores(f, self.queue.prototypes(), self.opts.proto_temp)}

    def diagnostics(self) -> dict[str, Any]:
        return {"queue_filled": [int(c) for c in self.queue.count],
                "pl_distribution": [round(float(v), 6) for v in self.pl_dist / self.pl_dist.sum().clamp_min(1.0)],
                "blend_weights": [round(float(v), 6) for v in blend_weights(self.pl_dist, self.opts.dist_temp)]}


__all__ = ["DASO", "DASOOptions", "ClassQueue", "blend_weights", "blended_pseudo_labels", "semantic_scores"]
