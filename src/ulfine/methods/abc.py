"""``abc``: the Auxiliary Balanced Classifier (Lee, Shin & Kim, NeurIPS 2021) on FixMatch [B]
LeeHyuck/ABC@f70e926, ``ABCcode0920/ABCfix.py`` (its ``train()``; heads: ``wideresnetwithABC.py``).

Followed line by line from ``train()`` and checked against that code executed
(``tests/golden/test_abc_golden.py``, vectors from ``scripts/golden/make_abc.py``, with the peer's
own Bernoulli draws fed to this module through :meth:`ABC.bernoulli_mask`).

Two classifiers share the backbone's features f: the FixMatch head g and the auxiliary balanced
head h. Per optimiser step, with a labeled batch (x, y), unlabeled images u_i seen as a weak view
a(u) and two strong views A_1(u), A_2(u), N_c labeled images of class c and e the 0-based epoch:

- FixMatch head (ABCfix.py:220-242, 269): y^ = argmax softmax(g(a(u))), m = [max softmax(g(a(u))) >= t];
  L_x = CE(g(x), y);  L_u = 1/(2N) sum_{v=1,2} sum_i m_i CE(g(A_v(u_i)), y^_i).
- Keep probabilities (ABCfix.py:94, 256): p_c = N_min / N_c (1 for the rarest class), and for the
  unlabeled data p_c(e) = 1 - (e / E) (1 - p_c), E = 500, moving from 1 to p_c over E epochs.
- Balanced head, labeled (ABCfix.py:244, 261): M_j ~ Bernoulli(p_{y_j});
  L_bx = -1/B sum_j M_j log softmax(h(x_j))_{y_j}.
- Balanced head, unlabeled (ABCfix.py:247-266): q_i = softmax(h(a(u_i))) (soft target, no gradient),
  k^_i = argmax q_i, m'_i = [max q_i >= t'], M'_i ~ Bernoulli(p_{k^_i}(e));
  L_bu = sum_{v=1,2} 1/N sum_i m'_i M'_i H(q_i, h(A_v(u_i)))  (each view's mean, summed).
- L = L_x + lambda_u L_u + w (L_bx + L_bu)  (ABCfix.py:268-270: lambda_u = w = 1).
- Prediction: the balanced head h (ABCfix.py:329-333, on its EMA model).

Options: t is ``ssl.tau`` and t' is ``abc.balanced_threshold`` (ssl.tau when unset): ABC fixes both
at 0.95 (ABCfix.py:234, 254; its ``--tau`` argument, :54, is never read), so the published recipe
sets ``ssl.tau=0.95``. ``ssl.lambda_u`` weights L_u (ABC: 1), ``abc.loss_weight`` weights the balanced
losses (ABC: 1; USB's ``abc_loss_ratio``), ``abc.schedule_epochs`` is E.

Randomness: the two Bernoulli masks are drawn (labeled first, then unlabeled, as ABC does) by
:meth:`ABC.bernoulli_mask` from torch's generator, which the engine seeds per optimiser step from
(seed, step, rank); that method is the seam the golden test replaces to replay ABC's own draws.

Heads: ``head=linear``: both heads linear with ABC's initialisation (Xavier-normal weights, zero
bias: wideresnetwithABC.py:77-79) [B]; ``head=prototype`` [R] (CLIP): both heads text-initialised
learnable cosine classifiers at CLIP's logit scale, the baselines' classifier
(:func:`~ulfine.methods.supervised.build_head`); scratch backbones have no text and are refused.

Deliberate deviations from ABC's code:

- Forward passes: ABC passes the weak view (without gradient), x and each strong view through the
  network separately (ABCfix.py:222, 228-230), so on its BatchNorm WRN every view is normalised
  with its own statistics; here :meth:`~ulfine.methods.base.Method.view_features` passes them
  jointly on batch-statistics backbones (as FixMatch's and ACR's code do) and separately otherwise
  (CLIP: no difference).
- Keep probability: ABC divides the *last* class's count (N_{K-1} / N_c, ABCfix.py:94; DASO
  fm_abc.py:17 too) because its classes are always sorted by decreasing count; here the smallest
  count (USB abc.py:67), which is the same for sorted counts and stays right for unsorted ones.
  An empty class counts as 1.
- Schedule: e / E is capped at 1 (ABC never runs past E = its 500 epochs; beyond them its
  probabilities would fall below p_c and then below 0).
- ABC takes ``log(softmax(.))`` (ABCfix.py:251, 261-266); here ``log_softmax`` (equal up to
  rounding, finite where a probability underflows).
- Batch sizes: ABC draws as many unlabeled as labeled images (ABCfix.py:104; its one-hot
  scatters at :233 and :255 assume it); here ``ssl.mu`` unlabeled per labeled image, every
  unlabeled mean over the unlabeled batch.
- Gradient accumulation: each micro-batch draws its own masks (the same distribution; other
  numbers than one batch would draw); the losses are plain means, so with equal masks two
  micro-batches give the one-batch gradient.
- Evaluation on ABC's EMA model (ABCfix.py:162, ``WeightEMA`` with its weight decay 0.02 lr at
  :424, 437) and its Adam optimiser (:129) are the engine's (``train.ema``, ``optim.*``).

Ports, for cross-checking (both differ from ABC's code): DASO ``lib/algorithm/fm_abc.py``
(ytaek-oh/daso@3541a6c) uses one strong view, one joint forward pass and epochs of exactly 500
iterations (:58-60); USB ``semilearn/imb_algorithms/abc/abc.py`` (microsoft/Semi-supervised-learning
@1ef4cbe) trains the balanced head on *hard* pseudo-labels (:145, ABC: soft q), one strong view
(:94), schedules over the run's own epochs (``epoch / epochs``, :139) and takes the smallest count (:67).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..batch import Batch
from ..config import Section
from .base import METHODS, Method, MethodContext, MethodOptions, PseudoLabels, StepOutput
from .losses import cross_entropy, masked_consistency, pseudo_label, soft_cross_entropy
from .supervised import xavier_head


class ABCOptions(Section):
    """abc: ABC's values (LeeHyuck/ABC@f70e926, ABCcode0920/ABCfix.py) [B]. Its FixMatch threshold
    is ``ssl.tau`` (ABC: 0.95, ABCfix.py:234; the published recipe sets it)."""

    balanced_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="confidence of the balanced head's weak-view prediction "
        "that admits a sample to its consistency loss; unset: ssl.tau (ABC: 0.95 for both heads, "
        "ABCfix.py:254; USB's abc_p_cutoff 0.95)")
    loss_weight: float = Field(1.0, ge=0.0, description="weight of the balanced head's losses (ABC: "
                               "their plain sum with the FixMatch losses, ABCfix.py:268-270; USB's "
                               "abc_loss_ratio 1.0)")
    schedule_epochs: int = Field(500, ge=1, description="epochs E over which the unlabeled mask "
                                 "probability moves from 1 to the labeled one, 1 - (e/E)(1 - p_c) "
                                 "(ABC: the constant 500, ABCfix.py:256, its --epochs default at :25)")


# ---------------------------------------------------------------------------- pure functions
def keep_probabilities(counts: torch.Tensor) -> torch.Tensor:
    """p_c = N_min / N_c: the Bernoulli parameter that makes the masked labeled set balanced in
    expectation (an empty class counts as 1)."""
    n = counts.float().clamp_min(1.0)
    return n.min() / n


def scheduled_probabilities(keep: torch.Tensor, epoch: int, schedule_epochs: int) -> torch.Tensor:
    """p_c(e) = 1 - min(e / E, 1) (1 - p_c): the unlabeled mask probability of 0-based epoch e."""
    ratio = min(epoch / schedule_epochs, 1.0)
    return 1.0 - ratio * (1.0 - keep)


@dataclass
class ABCTerms:
    """Everything one (micro-)batch computed: the loss terms and what selected and masked them."""

    loss: torch.Tensor
    loss_x: torch.Tensor  # L_x: FixMatch head, CE on the labeled batch
    loss_u: torch.Tensor  # L_u: FixMatch head, masked CE on both strong views (mean over 2N)
    loss_bx: torch.Tensor  # L_bx: balanced head, Bernoulli-masked CE on the labeled batch
    loss_bu: torch.Tensor  # (2,) the balanced head's consistency loss of each strong view
    label: torch.Tensor  # (N,) y^: FixMatch head's weak-view pseudo-labels
    confidence: torch.Tensor  # (N,) their confidence
    mask: torch.Tensor  # (N,) bool, confidence >= t
    target_balanced: torch.Tensor  # (N, K) q: balanced head's weak-view probabilities
    mask_balanced: torch.Tensor  # (N,) bool, max q >= t'
    keep_labeled: torch.Tensor  # (B,) M: Bernoulli draws of the labeled batch
    keep_unlabeled: torch.Tensor  # (N,) M': Bernoulli draws of the unlabeled batch
    p_labeled: torch.Tensor  # (B,) p_{y_j}
    p_unlabeled: torch.Tensor  # (N,) p_{k^_i}(e)
    logits: dict[str, torch.Tensor]  # z_x_l, zb_x_l, zb_u_w, ...


# ----------------------------------------------------------------------------------- method
@METHODS.register("abc", options=ABCOptions)
class ABC(Method):
    """FixMatch with ABC's auxiliary balanced classifier, which makes the test predictions."""

    uses_unlabeled = True
    strong_views = 2
    prototype_initialises = "both ABC heads"
    opts: ABCOptions

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(backbone, ctx, options)
        # a linear head initialised as ABC's WRN does, not from zero, so the two heads start apart
        self.head = xavier_head(options.head, ctx)  # FixMatch's classifier g
        self.head_balanced = xavier_head(options.head, ctx)  # the auxiliary balanced classifier h
        # derived from the labeled counts every time the method is built: not checkpointed
        self.register_buffer("keep_prob", keep_probabilities(ctx.labeled_counts), persistent=False)

    @property
    def balanced_threshold(self) -> float:
        """t': the balanced head's confidence threshold (``ssl.tau`` unless set)."""
        t = self.opts.balanced_threshold
        return self.ssl.tau if t is None else t

    def bernoulli_mask(self, p: torch.Tensor) -> torch.Tensor:
        """Draws of Bernoulli(p), one per sample, from torch's (per-step seeded) generator.

        Why a method: the golden test replays the peer's own draws through it, and the
        accumulation test fixes them, so both compare the losses on the same masks.
        """
        return torch.bernoulli(p)

    # -- losses ---------------------------------------------------------------------------------
    def step_terms(self, batch: Batch) -> ABCTerms:
        """ABC's losses on one (micro-)batch."""
        if batch.u_w is None or batch.u_s is None or batch.u_s2 is None:
            raise RuntimeError("abc needs unlabeled batches with a weak and two strong views")
        f = self.view_features(batch)
        n_l = f["x_l"].shape[0]
        f_train = torch.cat([f["x_l"], f["u_s"], f["u_s2"]])
        z, zb = self.head(f_train).float(), self.head_balanced(f_train).float()
        with torch.no_grad():
            z_w, zb_w = self.head(f["u_w"]).float(), self.head_balanced(f["u_w"]).float()
            label, confidence, mask = pseudo_label(z_w, self.ssl.tau)
            q = torch.softmax(zb_w, dim=-1)
            conf_b, label_b = q.max(dim=-1)
            mask_b = conf_b >= self.balanced_threshold
            p_l = self.keep_prob[batch.y_l]
            keep_l = self.bernoulli_mask(p_l)  # ABC draws the labeled mask first
            p_u = scheduled_probabilities(self.keep_prob, self.epoch_of(batch.step),
                                          self.opts.schedule_epochs)[label_b]
            keep_u = self.bernoulli_mask(p_u)
        z_l, z_s = z[:n_l], z[n_l:]
        zb_l, zb_s = zb[:n_l], zb[n_l:]
        loss_x = cross_entropy(z_l, batch.y_l)
        loss_u = masked_consistency(z_s, label.repeat(2), mask.repeat(2))
        loss_bx = (keep_l.float() * F.cross_entropy(zb_l, batch.y_l, reduction="none")).mean()
        weight_u = mask_b.float() * keep_u.float()
        loss_bu = torch.stack([(weight_u * soft_cross_entropy(view, q)).mean() for view in zb_s.chunk(2)])
        loss = loss_x + self.ssl.lambda_u * loss_u + self.opts.loss_weight * (loss_bx + loss_bu.sum())
        n = z_w.shape[0]
        logits = {"z_x_l": z_l, "z_u_w": z_w, "z_u_s": z_s[:n], "z_u_s2": z_s[n:],
                  "zb_x_l": zb_l, "zb_u_w": zb_w, "zb_u_s": zb_s[:n], "zb_u_s2": zb_s[n:]}
        return ABCTerms(loss, loss_x, loss_u, loss_bx, loss_bu, label, confidence, mask.bool(), q, mask_b,
                        keep_l, keep_u, p_l, p_u, logits)

    def training_step(self, batch: Batch) -> StepOutput:
        t = self.step_terms(batch)
        pseudo = PseudoLabels.of_batch(batch, t.label, t.confidence, t.mask)
        acc = (t.logits["zb_x_l"].detach().argmax(-1) == batch.y_l).float().mean()
        logs = {"loss_s": t.loss_x.detach(), "loss_u": t.loss_u.detach(),
                "loss_s_balanced": t.loss_bx.detach(), "loss_u_balanced": t.loss_bu.sum().detach(),
                "balanced_mask_rate": t.mask_balanced.float().mean(),
                "keep_rate_labeled": t.keep_labeled.float().mean(),
                "keep_rate_unlabeled": t.keep_unlabeled.float().mean(), "acc_l": acc}
        return StepOutput(t.loss, logs, pseudo)

    # -- prediction -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The balanced head h: ABC's test predictions."""
        return self.head_balanced(self.features(images))

    @torch.no_grad()
    def predict_branches(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {"decision": self.head_balanced(f), "fixmatch": self.head(f)}

    def diagnostics(self) -> dict[str, object]:
        return {"keep_prob": [round(float(v), 6) for v in self.keep_prob]}


__all__ = ["ABC", "ABCOptions", "ABCTerms", "keep_probabilities", "scheduled_probabilities"]
