"""``simpro``: SimPro (Du et al., ICML 2024) as its code does it [B] LeapLabTHU/SimPro@aa2425d.

Followed line by line from ``train()`` in its ``SimPro/train.py`` (options: its argparse in
``main()`` and the values of ``sh/SimPro.sh``), and checked against that code executed
(``tests/golden/test_simpro_golden.py``, vectors from ``scripts/golden/make_simpro.py``).

One classifier z on the backbone's features (``head``). SimPro reads it as the *balanced*
log-likelihood of each class and keeps two class distributions beside it, both estimated
(an EM algorithm: the pseudo-labels are the E-step, the per-epoch prior updates the M-step):

- pi_t, the class distribution of the training data, labeled and unlabeled together
  (``adapt_dis``; starts at the labeled prior pi, train.py:443, 577);
- pi_u, the class distribution of the unlabeled data (``estimated_dis``; starts uniform,
  train.py:444, 578).

Both enter as the logit adjustment a(p) = log(p^tau + 1e-12) (train.py:90-93), with tau =
``simpro.tau``, computed from the estimates as they stand at the start of the epoch
(train.py:587-588; here from the buffers, which only move at epoch ends). Per optimiser step,
with a labeled batch (x, y) and N unlabeled images seen as a weak view a(u) and two strong views
A_1(u), A_2(u) (train.py:623-635):

- **Pseudo-labels (E-step).** q_i = softmax(z(a(u_i)) + a(pi_u)), the Bayes-optimal posterior of
  the unlabeled distribution, kept *soft*; m_i = [max_k q_ik >= t], t = ``ssl.tau``
  (train.py:637-642).
- **Labeled loss.** L_x = w_x * CE(z(x) + a(pi_t), y) (train.py:659-662), w_x = 1 / scale_ratio
  = l_len / u_len, the ratio of the labeled to the unlabeled loader's batches per pass
  (train.py:568): mu * N_l / N_u here (``simpro.labeled_weight`` overrides it).
- **Unlabeled loss.** L_u = 1/(2N) sum_{v=1,2} sum_i m_i H(q_i, softmax(z(A_v(u_i)) + a(pi_t)))
  over all 2N strong samples (train.py:653-671).
- L = L_x + lambda_u L_u (``ssl.lambda_u``; SimPro adds them with weight 1, train.py:673).
- **Statistics of the epoch.** S = sum of q_i over the confident samples (``dis_unlabeled``,
  train.py:648) and C = the labeled batches' class counts (``count_labeled_dataset``,
  train.py:644-646).

At each epoch end (M-step, train.py:688-705), with e = ``simpro.ema_u``:
pi_u <- e pi_u + (1 - e) S / (sum S + 1) (not renormalised: SimPro's "+ 1") and
pi_t <- e pi_t + (1 - e) (C + S) / sum(C + S).
Prediction: z(x), the raw (balanced) logits (``test()``: ``model(inputs)``, train.py:834).

Engine contract (``methods/base.py``): S and C are accumulated per micro-batch in
``pending_stats``, summed over processes (``ctx.collectives``) once per optimiser step into the
epoch's sums, and applied in :meth:`on_epoch_end`; the estimates and the epoch's sums are
registered buffers, so checkpoints carry them (resume mid-epoch is exact).

Deliberate deviations from the code:

- Labeled views: SimPro's L_x averages the CE over a weak *and* a strong view of every labeled
  image (``TransformFixMatch2``, dataset/cifar.py; train.py:623, 656-657); ulfine's batch has one
  labeled view (``x_l``), so L_x is the CE over it. The two agree when both views are the same
  image (the golden fixture's case); C counts each labeled image once in both.
- w_x: SimPro's loader lengths are floor(N_u / (B mu)) / floor(N_l / B) (``drop_last``); a method
  does not know the batch size, so w_x = mu N_l / N_u, the same when both sets divide into whole
  batches (the fixture's case).
- Several processes: SimPro's estimates are per process (no reduction of ``dis_unlabeled``; its
  scripts run one GPU); here the step's statistics are summed over processes and micro-batches,
  so 1 or N processes, with or without accumulation, hold the estimates of one process seeing
  the global batch.
- SimPro logs the symmetric KL between its estimate and the true unlabeled distribution
  (train.py:696-699); that reads unlabeled ground truth and is not computed.
- An epoch with no statistics at all (no labeled batch) leaves pi_t unchanged (SimPro: 0/0).
- Statistics of a step the engine skips as non-finite are dropped (never applied).
- ``--T`` and ``--est-epoch`` are parsed but never read by SimPro's train.py: no options here.
- Head: ``head=linear`` is SimPro's fc (Xavier-normal weight, zero bias, models/wideresnet.py);
  ``head=prototype`` (CLIP) is the text-initialised cosine head [R]. Nothing in SimPro is specific
  to the scratch network, so it runs on CLIP unchanged (the threshold is ``ssl.tau``: SimPro's
  0.95 for CIFAR-10, 0.2 for CIFAR-100, sh/SimPro.sh:13, 36).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import nn

from ..batch import Batch
from ..config import Section
from .base import METHODS, Method, MethodContext, MethodOptions, PseudoLabels, StepOutput
from .losses import cross_entropy, masked_consistency
from .supervised import xavier_head

PRIOR_EPS = 1e-12  # SimPro's compute_adjustment_by_py: log(p ** tau + 1e-12)


class SimProOptions(Section):
    """simpro: SimPro's options with the values of its CIFAR-10 script (LeapLabTHU/SimPro@aa2425d).
    Its threshold ``--threshold`` is ``ssl.tau``."""

    tau: float = Field(2.0, ge=0.0, description="power of both priors in the logit adjustments "
                       "log(p^tau + 1e-12) (SimPro --tau: 2.0 for CIFAR-10/STL-10, sh/SimPro.sh:12, 58; "
                       "1.0 for CIFAR-100/ImageNet, :35, 82; argparse default 1, train.py:209-211)")
    ema_u: float = Field(0.9, ge=0.0, lt=1.0, description="momentum of both per-epoch prior "
                         "estimates (SimPro --ema-u 0.9: train.py:212-217, sh/SimPro.sh:11)")
    labeled_weight: float | None = Field(
        None, ge=0.0, description="weight of the labeled loss; null: SimPro's 1/scale_ratio = "
        "mu * N_labeled / N_unlabeled (train.py:568, 659-662)")


# ---------------------------------------------------------------------------- pure functions
def prior_adjustment(prior: torch.Tensor, tau: float) -> torch.Tensor:
    """a(p) = log(p^tau + 1e-12) in float32: SimPro's adjustment (no renormalisation of p)."""
    return torch.log(prior.float() ** tau + PRIOR_EPS)


@dataclass
class SimProTargets:
    """Soft pseudo-labels of one batch of weak views, their argmax, confidence and mask."""

    probs: torch.Tensor  # q = softmax(z_w + a(pi_u)), (N, K)
    label: torch.Tensor  # argmax q
    confidence: torch.Tensor  # max q
    mask: torch.Tensor  # max q >= threshold (bool)


@torch.no_grad()
def simpro_targets(z_weak: torch.Tensor, adjustment_u: torch.Tensor, threshold: float) -> SimProTargets:
    """The E-step: the posterior under the unlabeled prior, and which samples are confident."""
    probs = torch.softmax(z_weak.detach().float() + adjustment_u, dim=-1)
    confidence, label = probs.max(dim=-1)
    return SimProTargets(probs, label, confidence, confidence >= threshold)


def em_priors(unlabeled: torch.Tensor, training: torch.Tensor, soft_sum: torch.Tensor,
              labeled_counts: torch.Tensor, ema: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The M-step: (pi_u, pi_t) moved towards the epoch's S / (sum S + 1) and (C + S) / sum(C + S);
    pi_t stays put when the epoch saw nothing (no device synchronisation)."""
    new_u = ema * unlabeled + (1.0 - ema) * soft_sum / (soft_sum.sum() + 1.0)
    forward = labeled_counts + soft_sum
    total = forward.sum()
    moved = ema * training + (1.0 - ema) * forward / total.clamp_min(1e-12)
    return new_u, torch.where(total > 0, moved, training)


def default_labeled_weight(ctx: MethodContext, mu: int) -> float:
    """SimPro's 1 / scale_ratio: batches of the labeled loader per batch of the unlabeled one,
    mu * N_l / N_u (1 without unlabeled data)."""
    n_l, n_u = float(ctx.labeled_counts.sum()), float(ctx.num_unlabeled)
    return mu * n_l / n_u if n_u > 0 else 1.0


# ----------------------------------------------------------------------------------- method
@METHODS.register("simpro", options=SimProOptions)
class SimPro(Method):
    """One classifier, logit-adjusted by two EM-estimated priors (training and unlabeled)."""

    uses_unlabeled = True
    strong_views = 2
    prototype_initialises = "the classifier"
    opts: SimProOptions

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(backbone, ctx, options)
        k = ctx.num_classes
        # linear: SimPro's fc (Xavier-normal weight, zero bias); prototype: the baselines' text head [R]
        self.head = xavier_head(options.head, ctx)
        self.labeled_weight = (self.opts.labeled_weight if self.opts.labeled_weight is not None
                               else default_labeled_weight(ctx, self.ssl.mu))
        self.register_buffer("training_prior", ctx.labeled_prior.float().clone())  # pi_t (adapt_dis)
        self.register_buffer("unlabeled_prior", torch.full((k,), 1.0 / k))  # pi_u (estimated_dis)
        self.register_buffer("epoch_soft_sum", torch.zeros(k))  # S of the epoch's finished steps
        self.register_buffer("epoch_labeled_counts", torch.zeros(k))  # C of the epoch's finished steps
        self.register_buffer("pending_stats", torch.zeros(2, k), persistent=False)  # this step: S, C
        self._pending_step: int | None = None

    # -- losses ---------------------------------------------------------------------------------
    def adjustments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a(pi_t), a(pi_u)): the loss adjustment and the pseudo-label adjustment of this epoch."""
        return (prior_adjustment(self.training_prior, self.opts.tau),
                prior_adjustment(self.unlabeled_prior, self.opts.tau))

    def record(self, t: SimProTargets, y_l: torch.Tensor, step: int) -> None:
        """Add this micro-batch's S and C to the step's; a new step first drops what a skipped
        step left (its statistics are never applied)."""
        if self._pending_step != step:
            self.pending_stats.zero_()
            self._pending_step = step
        self.pending_stats[0] += (t.probs * t.mask.unsqueeze(1).float()).sum(0)
        self.pending_stats[1].index_add_(0, y_l, torch.ones_like(y_l, dtype=self.pending_stats.dtype))

    def training_step(self, batch: Batch) -> StepOutput:
        if batch.u_w is None or batch.u_s2 is None:
            raise RuntimeError("simpro needs unlabeled batches with two strong views")
        f = self.view_features(batch)
        adj_t, adj_u = self.adjustments()
        z_l = self.head(f["x_l"])
        with torch.no_grad():
            t = simpro_targets(self.head(f["u_w"]), adj_u, self.ssl.tau)
            self.record(t, batch.y_l, batch.step)
        z_s = self.head(torch.cat([f["u_s"], f["u_s2"]]))
        loss_x = cross_entropy(z_l.float() + adj_t, batch.y_l) * self.labeled_weight
        loss_u = masked_consistency(z_s.float() + adj_t, t.probs.repeat(2, 1), t.mask.repeat(2))
        loss = loss_x + self.ssl.lambda_u * loss_u
        pseudo = PseudoLabels.of_batch(batch, t.label, t.confidence, t.mask)
        logs = {"loss_s": loss_x.detach(), "loss_u": loss_u.detach(),
                "acc_l": (z_l.detach().argmax(-1) == batch.y_l).float().mean()}
        return StepOutput(loss, logs, pseudo)

    # -- the estimates ---------------------------------------------------------------------------
    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """Add the step's statistics, summed over processes, to the epoch's."""
        stats = self.take_pending(self.pending_stats)
        self._pending_step = None
        self.epoch_soft_sum += stats[0]
        self.epoch_labeled_counts += stats[1]

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        """SimPro's M-step from the epoch's statistics, which then start again from zero."""
        new_u, new_t = em_priors(self.unlabeled_prior, self.training_prior, self.epoch_soft_sum,
                                 self.epoch_labeled_counts, self.opts.ema_u)
        self.unlabeled_prior.copy_(new_u)
        self.training_prior.copy_(new_t)
        self.epoch_soft_sum.zero_()
        self.epoch_labeled_counts.zero_()

    # -- prediction -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The raw, balanced logits z(x): SimPro's test prediction."""
        return self.head(self.features(images))

    @torch.no_grad()
    def predict_branches(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Also z(x) + a(pi_u): the posterior SimPro's pseudo-labels follow (the estimated
        unlabeled distribution)."""
        z = self.head(self.features(images))
        return {"decision": z, "unlabeled_posterior": z.float() + self.adjustments()[1]}

    def diagnostics(self) -> dict[str, Any]:
        return {"unlabeled_prior": [round(float(v), 6) for v in self.unlabeled_prior],
                "training_prior": [round(float(v), 6) for v in self.training_prior],
                "labeled_weight": self.labeled_weight}


__all__ = ["SimPro", "SimProOptions", "SimProTargets", "default_labeled_weight", "em_priors",
           "prior_adjustment", "simpro_targets"]
