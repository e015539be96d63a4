"""``acr``: the Adaptive Consistency Regulariser (Wei & Gan, CVPR 2023), docs/method.md section 5.

Two linear classifiers share the backbone's features: a *standard* branch g trained with plain
cross-entropy (it learns the labeled, long-tailed prior pi) and a *balanced* branch h trained with
the logit-adjusted loss CE(h + tau_bl * log pi). Unlabeled images give a weak view and two strong
views. The standard branch learns from pseudo-labels of its weak logits shifted by
-tau * log pi, where tau moves between 0 and tau_max with how close the estimated class
distribution of the unlabeled data is to three anchors (the labeled prior, uniform, and the
prior reversed): shifting by 0, 1 or 2 times log pi turns a pi-biased classifier into one whose
pseudo-labels follow a consistent, uniform or reversed unlabeled set. The balanced branch learns
from the standard logits shifted by a fixed -tau_bt * log pi. The test prediction is the
balanced branch's.

The unlabeled distribution is estimated from the balanced branch's confident weak-view
predictions: their per-class counts of each optimiser step (accumulated over micro-batches and
summed over processes, then normalised) move an EMA; the symmetric KL divergences from the EMA to
the three anchors are averaged over the epoch's steps that moved it, and at each epoch end
tau = tau_max * softmax(KL)[consistent]. All of it is registered buffers, so checkpoints carry it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ..batch import Batch
from ..config import Section
from ..models.heads import LinearHead
from .base import METHODS, Method, MethodContext, MethodOptions, PseudoLabels, StepOutput
from .losses import cross_entropy, logit_adjusted, masked_consistency, moved_distribution
from .supervised import xavier_init

ANCHORS = ("consistent", "uniform", "reversed")


class ACROptions(Section):
    """acr: the values of ACR's released code (train.py and its README commands)."""

    tau_max: float = Field(2.0, ge=0.0, description="largest (and initial) adjustment of the standard "
                           "branch's pseudo-labels (ACR --tau1)")
    tau_balanced_targets: float = Field(2.0, ge=0.0, description="adjustment of the standard logits "
                                        "that give the balanced branch's targets (--tau12)")
    tau_balanced_loss: float = Field(2.0, ge=0.0, description="logit adjustment of the balanced "
                                     "branch's labeled loss (--tau2)")
    ema_u: float = Field(0.99, ge=0.0, lt=1.0, description="EMA momentum of the unlabeled class "
                         "distribution estimate (--ema-u in the README commands)")
    estimate_from_epoch: int = Field(6, ge=0, description="first epoch (0-based) in which the "
                                     "unlabeled distribution is estimated (--est-epoch 5: epochs > 5)")
    adaptive: bool = Field(True, description="adapt tau from the anchors; false keeps tau = tau_max "
                           "(SimPro's ACR without anchor distributions)")
    estimate_counts: Literal["samples", "last_per_class"] = Field(
        "samples", description="what a step adds to the unlabeled estimate: 'samples' counts every "
        "confident balanced prediction [R]; 'last_per_class' counts a class once if its last weak "
        "view of the batch is predicted confidently, as ACR's indexed add does on the CPU")


# ---------------------------------------------------------------------------- pure functions
def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """0.5 KL(p || q) + 0.5 KL(q || p) along the last dimension (0 log 0 = 0)."""
    p, q = p.float(), q.float()
    kl_pq = (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)
    kl_qp = (torch.xlogy(q, q) - torch.xlogy(q, p)).sum(-1)
    return 0.5 * (kl_pq + kl_qp)


def anchor_distributions(prior: torch.Tensor) -> torch.Tensor:
    """(3, K): the labeled prior pi (consistent), uniform, and pi reversed by class rank (the most
    frequent labeled class gets the rarest class's share; for classes sorted by count, flip(pi))."""
    pi = prior.float() / prior.float().sum()
    order = torch.argsort(pi, descending=True, stable=True)
    reversed_pi = torch.empty_like(pi)
    reversed_pi[order] = pi[order.flip(0)]
    return torch.stack([pi, torch.full_like(pi, 1.0 / len(pi)), reversed_pi])


def adaptive_tau(kl_to_anchors: torch.Tensor, tau_max: float) -> torch.Tensor:
    """tau = tau_max * softmax(KL)[consistent]: near 0 when the estimate is the labeled prior,
    near tau_max / 2 when it is uniform, near tau_max when it is the reversed prior."""
    return tau_max * torch.softmax(kl_to_anchors.float(), dim=-1)[..., 0]


def last_per_class(labels: torch.Tensor, keep: torch.Tensor, k: int) -> torch.Tensor:
    """(k,): for each class, ``keep`` of its last sample in ``labels`` (0 if absent). ACR's
    ``now_mask[targets] += mask`` leaves this on the CPU; here it is deterministic on any device."""
    position = torch.arange(len(labels), device=labels.device)
    last = torch.full((k,), -1, dtype=torch.long, device=labels.device)
    last = last.scatter_reduce(0, labels, position, reduce="amax")
    return torch.where(last >= 0, keep[last.clamp_min(0)].float(), torch.zeros(k, device=labels.device))


@dataclass
class ACRTargets:
    """Pseudo-labels and masks of both branches for one batch of weak views."""

    standard: torch.Tensor  # argmax(g - tau log pi)
    standard_conf: torch.Tensor  # its softmax confidence
    standard_mask: torch.Tensor  # conf(g - tau log pi) >= t  or  conf(g) >= t
    balanced: torch.Tensor  # argmax(g - tau_bt log pi)
    balanced_mask: torch.Tensor  # conf(h) >= t  or  conf(g - tau_bt log pi) >= t
    balanced_pred: torch.Tensor  # argmax h (the distribution estimate counts these)
    balanced_pred_mask: torch.Tensor  # conf(h) >= t


def _confident(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    conf, label = torch.softmax(logits.float(), dim=-1).max(dim=-1)
    return label, conf, conf >= threshold


@torch.no_grad()
def acr_targets(z_std: torch.Tensor, z_bal: torch.Tensor, prior: torch.Tensor, tau: float | torch.Tensor,
                tau_bt: float, threshold: float) -> ACRTargets:
    """Both branches' pseudo-labels from the weak-view logits of g (``z_std``) and h (``z_bal``)."""
    label, conf, mask = _confident(logit_adjusted(z_std, prior, -tau), threshold)
    _, _, mask_raw = _confident(z_std, threshold)
    label_bt, _, mask_bt = _confident(logit_adjusted(z_std, prior, -tau_bt), threshold)
    pred_b, _, mask_b = _confident(z_bal, threshold)
    return ACRTargets(label, conf, mask | mask_raw, label_bt, mask_b | mask_bt, pred_b, mask_b)


# ----------------------------------------------------------------------------------- method
@METHODS.register("acr", options=ACROptions)
class ACR(Method):
    """Dual standard/balanced branches with ACR's adaptive consistency regulariser."""

    uses_unlabeled = True
    strong_views = 2
    opts: ACROptions

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(backbone, ctx, options)
        k = ctx.num_classes
        # linear classifiers initialised as ACR's (Xavier-normal weights, zero bias)
        self.head_standard = xavier_init(LinearHead(ctx.feature_dim, k, zero_init=False))
        self.head_balanced = xavier_init(LinearHead(ctx.feature_dim, k, zero_init=False))
        self.register_buffer("prior", ctx.labeled_prior.float().clone())  # pi of the labeled set
        self.register_buffer("anchors", anchor_distributions(ctx.labeled_prior))
        self.register_buffer("u_estimate", torch.full((k,), 1.0 / k))
        self.register_buffer("tau", torch.tensor(float(self.opts.tau_max)))
        self.register_buffer("kl_sum", torch.zeros(len(ANCHORS)))
        self.register_buffer("kl_steps", torch.zeros(()))  # steps of this epoch that moved the estimate
        self.register_buffer("pending_counts", torch.zeros(k))
        self._from_labeled: torch.Tensor | None = None  # ctx.unlabeled_from_labeled on the device

    def estimating(self, step: int) -> bool:
        """Is the unlabeled distribution estimated during optimiser step ``step``?"""
        return self.epoch_of(step) >= self.opts.estimate_from_epoch

    # -- losses ---------------------------------------------------------------------------------
    def balanced_labeled_loss(self, f_l: torch.Tensor, y: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CE(g(x), y) and CE(h(x) + tau_bl log pi, y); also h(x) for the batch accuracy."""
        z_bal = self.head_balanced(f_l)
        loss_std = cross_entropy(self.head_standard(f_l), y)
        loss_bal = cross_entropy(logit_adjusted(z_bal, self.prior, self.opts.tau_balanced_loss), y)
        return loss_std, loss_bal, z_bal

    def balanced_unlabeled_loss(self, f_strong: torch.Tensor, t: ACRTargets) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked CE of both branches on both strong views (mean over all strong samples)."""
        v = f_strong.shape[0] // t.standard.shape[0]  # targets of view 1, then the same for view 2
        loss_std = masked_consistency(self.head_standard(f_strong), t.standard.repeat(v), t.standard_mask.repeat(v))
        loss_bal = masked_consistency(self.head_balanced(f_strong), t.balanced.repeat(v), t.balanced_mask.repeat(v))
        return loss_std, loss_bal

    def count_for_estimate(self, t: ACRTargets, idx_u: torch.Tensor | None) -> None:
        """Add this micro-batch's confident balanced predictions to the step's class counts
        (unlabeled copies of labeled images excluded, as ACR's code does)."""
        keep = t.balanced_pred_mask
        if self.ctx.unlabeled_from_labeled is not None and idx_u is not None:
            if self._from_labeled is None or self._from_labeled.device != idx_u.device:
                self._from_labeled = self.ctx.unlabeled_from_labeled.to(idx_u.device)
            keep = keep & ~self._from_labeled[idx_u]
        if self.opts.estimate_counts == "last_per_class":
            self.pending_counts += last_per_class(t.balanced_pred, keep, len(self.pending_counts))
            return
        # an index_add, not bincount of a masked selection: no device synchronisation
        self.pending_counts.index_add_(0, t.balanced_pred, keep.to(self.pending_counts.dtype))

    def training_step(self, batch: Batch) -> StepOutput:
        if batch.u_w is None or batch.u_s2 is None:
            raise RuntimeError("acr needs unlabeled batches with two strong views")
        f = self.view_features(batch)
        loss_s, loss_s_bal, z_l_bal = self.balanced_labeled_loss(f["x_l"], batch.y_l)
        with torch.no_grad():
            t = acr_targets(self.head_standard(f["u_w"]), self.head_balanced(f["u_w"]), self.prior,
                            self.tau, self.opts.tau_balanced_targets, self.ssl.tau)
            if self.estimating(batch.step):
                self.count_for_estimate(t, batch.idx_u)
        loss_u, loss_u_bal = self.balanced_unlabeled_loss(torch.cat([f["u_s"], f["u_s2"]]), t)
        loss = loss_s + loss_s_bal + self.ssl.lambda_u * (loss_u + loss_u_bal)
        pseudo = PseudoLabels.of_batch(batch, t.standard, t.standard_conf, t.standard_mask)
        logs = {"loss_s": loss_s.detach(), "loss_s_balanced": loss_s_bal.detach(), "loss_u": loss_u.detach(),
                "loss_u_balanced": loss_u_bal.detach(), "tau_acr": self.tau.clone(),
                "acc_l": (z_l_bal.detach().argmax(-1) == batch.y_l).float().mean()}
        return StepOutput(loss, logs, pseudo)

    # -- the distribution estimate ----------------------------------------------------------------
    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """Move the estimate with the step's counts (all processes)."""
        if not self.estimating(step):
            return
        counts = self.take_pending(self.pending_counts)
        if self.opts.estimate_counts == "last_per_class":  # a class once, over micro-batches and processes
            counts = (counts > 0).to(counts.dtype)
        total = counts.sum()
        self.u_estimate.copy_(moved_distribution(self.u_estimate, counts, total, self.opts.ema_u))
        kl = symmetric_kl(self.u_estimate.unsqueeze(0), self.anchors)
        self.kl_sum += torch.where(total > 0, kl, torch.zeros_like(kl))
        self.kl_steps += (total > 0).float()

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        """tau from the epoch's mean KLs to the anchors (unchanged after an epoch without estimates)."""
        if self.opts.adaptive:
            tau = adaptive_tau(self.kl_sum / self.kl_steps.clamp_min(1.0), self.opts.tau_max)
            self.tau.copy_(torch.where(self.kl_steps > 0, tau, self.tau))
        self.kl_sum.zero_()
        self.kl_steps.zero_()

    # -- prediction -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The balanced branch h: ACR's reported test accuracy."""
        return self.head_balanced(self.features(images))

    @torch.no_grad()
    def predict_branches(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {"decision": self.head_balanced(f), "standard": self.head_standard(f)}

    def diagnostics(self) -> dict[str, Any]:
        kl = symmetric_kl(self.u_estimate.unsqueeze(0), self.anchors)
        return {"tau": float(self.tau), "unlabeled_estimate": [round(float(v), 6) for v in self.u_estimate],
                "kl_to_anchors": {a: float(v) for a, v in zip(ANCHORS, kl)}}


__all__ = ["ACR", "ACROptions", "ACRTargets", "acr_targets", "adaptive_tau", "anchor_distributions",
           "symmetric_kl"]
