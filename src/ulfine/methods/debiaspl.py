"""``debiaspl``: DebiasPL, debiased pseudo-labels with an adaptive margin (Wang, Wu, Lian & Yu,
CVPR 2022), as its own code does it [B] frank-xwang/debiased-pseudo-labeling@3d68ccb.

Followed line by line from ``train()`` and its helpers ``causal_inference``, ``initial_qhat`` and
``update_qhat`` in main_DebiasPL.py (the model: models/fixmatch.py), and checked against that code
executed (tests/golden/test_debiaspl_golden.py, vectors from scripts/golden/make_debiaspl.py).

FixMatch whose classifier z is debiased by an estimate q^ of its own mean prediction on unlabeled
data. Per optimiser step, with a labeled batch (x, y) and B unlabeled images seen as a weak view
a(u) and a strong view A(u):

- **Debiased pseudo-labels [B].** p_i = softmax(z(a(u_i)) - tau log q^) with the q^ of the steps
  before; y^_i = argmax p_i, m_i = [max p_i >= t] (main_DebiasPL.py:196-199, 588, 597-598).
- **The estimate [B].** q^ starts uniform (1/K) and moves once per step with the mean *class*
  probability over the step's unlabeled batch: q^ <- m q^ + (1 - m) mean_i softmax(z(a(u_i)))
  (a K-vector: the mean over samples, dim 0; main_DebiasPL.py:201-213, 602). It moves before the
  step's loss, so the margin below uses the moved q^.
- **Adaptive margin loss [B].** L_u = mean_i m_i CE(z(A(u_i)) + tau log q^, y^_i) over all B
  samples (main_DebiasPL.py:605-627): classes the model over-predicts (large q^) get a larger
  margin on the strong view.
- **Total [B].** L = CE(z(x), y) + lambda_u L_u (main_DebiasPL.py:613, 652).
- **Prediction [B].** The raw z(x) (``validate`` calls the model on images alone: ``self.main``).

USB's port of DebiasPL averages the predictions over every element of the batch (a scalar), so
log q^ is one constant for all classes and the method reduces to FixMatch; ulfine follows the
original's per-class mean.

Engine contract (``methods/base.py``): the original moves q^ once per training iteration, on each
GPU from that GPU's own batch (no all-reduce: its DDP processes hold different q^). Here the
step's sum of weak-view probabilities and its sample count are accumulated per micro-batch in
buffers, summed over processes (``ctx.collectives.all_reduce_sum``) and q^ moves in
:meth:`after_optimizer_step`, so 1 or N processes, with or without accumulation, hold one q^: the
original's on one GPU with the whole batch. Within a step, the margin of micro-batch j uses q^
moved by the mean of this process's micro-batches 1..j (with one micro-batch on one process: the
original's exactly). q^ is a registered buffer (checkpointed; the original keeps it in a local
variable of ``main_worker`` and restarts it uniform when resumed).

Deliberate deviations from the code:

- The weak view is scored by the trained network; the released scripts add ``--eman``, an EMA
  teacher (models/fixmatch.py:27-33) for the weak view, which a method cannot see here (the
  engine's ``train.ema`` only evaluates). The code's ``eman=False`` path is what is followed.
- Not ported (all switches of the released scripts beyond the method): ``--multiviews`` (two weak
  and two strong views, six averaged loss terms), ``--CLDLoss`` (instance-group discrimination),
  ``--use_clip`` (CLIP zero-shot labels for low-confidence samples), ``--masked-qhat`` (off by
  default; its code keeps per-sample rows instead of a mean).
- log q^ is taken of q^ clamped at the smallest normal float32, so a class whose estimate
  underflows stays finite (the original would give inf).
- Probabilities and losses in float32 under autocast.

On CLIP [R]: the classifier is the configured ``head`` (``prototype``: the text-initialised
cosine head; ``linear``: PyTorch's default ``nn.Linear`` initialisation, as the original's ``fc``,
models/fixmatch.py:10). Nothing is scratch-only: the original fine-tunes a pre-trained ResNet-50.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from ..batch import Batch
from ..config import Section
from ..models.heads import LinearHead
from .base import METHODS, MethodContext, MethodOptions, PseudoLabels, StepOutput
from .losses import cross_entropy, masked_consistency
from .supervised import Supervised


class DebiasPLOptions(Section):
    """debiaspl: the values of DebiasPL's code (main_DebiasPL.py and its scripts/*/train_DebiasPL*.sh)."""

    tau: float = Field(0.4, ge=0.0, description="debiasing strength: pseudo-labels from z - tau log q^, margin "
                       "tau log q^ (--tau 0.4 in every released script; argparse default 1.0, "
                       "main_DebiasPL.py:145)")
    qhat_momentum: float = Field(0.999, ge=0.0, lt=1.0, description="EMA momentum of q^, the mean unlabeled "
                                 "prediction (--qhat_m, main_DebiasPL.py:157 and scripts/1perc-ssl/"
                                 "train_DebiasPL.sh; 0.99 in the 0.2% and CLIP scripts)")


# ---------------------------------------------------------------------------- pure functions
def log_qhat(qhat: torch.Tensor) -> torch.Tensor:
    """log q^ in float32, q^ clamped at the smallest normal float32 (finite for an underflowed class)."""
    q = qhat.float()
    return torch.log(q.clamp_min(torch.finfo(torch.float32).tiny))


@torch.no_grad()
def debiased_pseudo_labels(logits_weak: torch.Tensor, qhat: torch.Tensor, tau: float, threshold: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(argmax p, max p, max p >= t) with p = softmax(z(a(u)) - tau log q^) (``causal_inference``)."""
    p = torch.softmax(logits_weak.detach().float() - tau * log_qhat(qhat), dim=-1)
    confidence, label = p.max(dim=-1)
    return label, confidence, confidence >= threshold


def moved_qhat(qhat: torch.Tensor, prob_sum: torch.Tensor, count: torch.Tensor | float, momentum: float
               ) -> torch.Tensor:
    """m q^ + (1 - m) prob_sum / count: ``update_qhat`` with the per-class mean over ``count`` samples
    (q^ unchanged when there are none)."""
    mean = prob_sum.float() / torch.as_tensor(count, dtype=torch.float32, device=qhat.device).clamp_min(1.0)
    moved = momentum * qhat + (1.0 - momentum) * mean
    return torch.where(torch.as_tensor(count, device=qhat.device) > 0, moved, qhat)


def adaptive_margin_logits(logits_strong: torch.Tensor, qhat: torch.Tensor, tau: float) -> torch.Tensor:
    """z(A(u)) + tau log q^: the adaptive margin of the strong view's loss."""
    return logits_strong.float() + tau * log_qhat(qhat)


# ----------------------------------------------------------------------------------- method
@METHODS.register("debiaspl", options=DebiasPLOptions)
class DebiasPL(Supervised):
    """FixMatch with DebiasPL's debiased pseudo-labels and adaptive margin loss."""

    uses_unlabeled = True
    opts: DebiasPLOptions

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(backbone, ctx, options)
        if options.head == "linear":  # the original's fc: nn.Linear's default initialisation
            self.head = LinearHead(ctx.feature_dim, ctx.num_classes, zero_init=False)
        k = ctx.num_classes
        self.register_buffer("qhat", torch.full((k,), 1.0 / k))  # initial_qhat
        self.register_buffer("pending_prob_sum", torch.zeros(k))  # this step's sum of weak probabilities
        self.register_buffer("pending_count", torch.zeros(()))  # and its number of unlabeled samples

    def training_step(self, batch: Batch) -> StepOutput:
        if batch.u_w is None:
            raise RuntimeError("debiaspl needs unlabeled batches")
        f_l, f_w, f_s = self.ssl_features(batch)
        z_l = self.logits(f_l)
        with torch.no_grad():
            z_w = self.logits(f_w).float()
            probs_w = torch.softmax(z_w, dim=-1)
            label, confidence, mask = debiased_pseudo_labels(z_w, self.qhat, self.opts.tau, self.ssl.tau)
            self.pending_prob_sum += probs_w.sum(0)
            self.pending_count += len(probs_w)
            qhat_step = moved_qhat(self.qhat, self.pending_prob_sum, self.pending_count, self.opts.qhat_momentum)
        loss_s = cross_entropy(z_l, batch.y_l)
        loss_u = masked_consistency(adaptive_margin_logits(self.logits(f_s), qhat_step, self.opts.tau), label, mask)
        loss = loss_s + self.ssl.lambda_u * loss_u
        logs: dict[str, Any] = {"loss_s": loss_s.detach(), "loss_u": loss_u.detach(),
                                "acc_l": (z_l.detach().argmax(-1) == batch.y_l).float().mean()}
        return StepOutput(loss, logs, PseudoLabels.of_batch(batch, label, confidence, mask))

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """Move q^ once with the step's mean weak-view prediction over all micro-batches and processes."""
        total = self.ctx.collectives.all_reduce_sum(torch.cat([self.pending_prob_sum, self.pending_count[None]]))
        self.qhat.copy_(moved_qhat(self.qhat, total[:-1], total[-1], self.opts.qhat_momentum))
        self.pending_prob_sum.zero_()
        self.pending_count.zero_()

    def diagnostics(self) -> dict[str, Any]:
        return {"qhat": [round(float(v), 6) for v in self.qhat]}


__all__ = ["DebiasPL", "DebiasPLOptions", "adaptive_margin_logits", "debiased_pseudo_labels", "log_qhat",
           "moved_qhat"]
