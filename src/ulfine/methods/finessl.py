"""``finessl``: FineSSL (Gan & Wei, ICML 2024) as its own code does it [B] Gank0078/FineSSL@76b6f48.

Followed line by line from ``Trainer.train`` in its ``trainer.py`` (heads: ``ViT_Head`` in
``model.py``; defaults: ``utils/config.py`` and ``configs/peft/*.yaml``), and checked against that
code executed (``tests/golden/test_finessl_golden.py``, vectors from ``scripts/golden/make_finessl.py``).

Two cosine heads with learnable logit scales (:class:`~ulfine.models.heads.LearnableScaleCosineHead`,
s_0 = 1/0.07): the main head h on the backbone's features f, and an auxiliary head h1, a copy of h
at the start of training, on the *detached* features. Per optimiser step, with a labeled batch
(x, y), and N unlabeled images u_i seen as a weak view a(u) and two strong views A_1(u), A_2(u):

- **Learning status** (a per-sample buffer, reset every epoch): sel_i in {-1, 0..K-1} holds the
  latest confident pseudo-label of unlabeled sample i (-1: none this epoch); n_c = #{i: sel_i = c}.
  At the start of a step, if max(max_c n_c, #{i: sel_i = -1}) < N_u then a_c = n_c / max_c n_c,
  else a keeps its value (0 at the start of an epoch) (trainer.py:226-228, 241-248).
- **Balanced margin softmax (BaM)**: Delta_c = alpha * (max_k a_k - min_k a_k) * (1 - a_c) / (1 + a_c),
  added to every *non-target* logit: zt(z, y)_k = z_k + Delta_y [k != y] (trainer.py:207-208, 270-272).
- Weak view: q = softmax(h(f(a(u)))), y^ = argmax q, c = max q, m = [c >= th];
  q1 = softmax(h1(f(a(u)))), c1 = max q1, m1 = [c1 >= th_min].
- L_x = CE(zt(h(f(x)), y), y);  L_x1 = CE(h1(sg f(x)), y).
- L_u = 1/(2N) sum_{v=1,2} sum_i c1_i * m1_i * CE(zt(h(f(A_v(u_i))), y^_i), y^_i)  (all 2N samples).
- L_u1 = sum_{v,i} m_i * H(t_i, h1(sg f(A_v(u_i)))) / sum_{v,i} m_i  (0 when no m_i), with the
  **decoupled label smoothing** target t_i = (1 - s) on y^_i and s / (K - 1) on every other class.
- L = L_x + L_x1 + w_con * L_u + L_u1 (trainer.py:274-314).
- After the step: sel_i <- y^_i wherever c_i >= 0.7 (a fixed threshold, not th; trainer.py:310-312).
- Prediction: h's raw logits (its ``test()``); no margin, no h1.

Engine contract (``methods/base.py``): the margin is computed from the ``classwise_acc`` snapshot
taken in :meth:`after_optimizer_step`, so every micro-batch of a step sees the margin FineSSL
computes once per step; selections are recorded per micro-batch in ``pending_label`` (one slot per
unlabeled sample), gathered over processes with ``ctx.collectives.all_gather`` and applied after
the step; :meth:`on_epoch_end` resets the buffer and the status. ``selected_label`` and
``classwise_acc`` are registered buffers, so checkpoints carry them (resume mid-epoch is exact).

Options (``finessl.*``; peer defaults cited per field). ``th`` is the shared ``ssl.tau``: the
FineSSL recipe sets ``ssl.tau`` to its ``th`` (0.7, every ``configs/peft/*.yaml``, line 48 or 43;
also ulfine's default). ``ssl.lambda_u`` is not read: ``finessl.w_con`` weights L_u.

Deliberate deviations from the code:

- Features: FineSSL's heads read the pre-projection CLS token (``ln_post(x[:, 0])``, width 768);
  ours read the backbone's features (CLIP's joint space after the projection, ``ctx.feature_dim``).
  The text initialisation (``head_init=text`` [R]) accordingly uses the text prototypes where
  FineSSL uses text_features @ proj^T.
- Head init: FineSSL's default is *random* (``rand_init=True``, ``rand_init1=True``,
  utils/config.py:89-90; no config or README command changes it): rows uniform in [-1, 1]^D
  scaled to unit norm, and h1 <- h at train start. That is our default; ``text`` is [R].
- No interleave of the views: it only matters for BatchNorm (a ViT has none); batch-statistics
  backbones see every view in one pass anyway (``Method.view_features``).
- The weak view runs without gradient; FineSSL passes it with gradient but only uses detached
  outputs, so the gradients are the same.
- Views: ulfine's weak view and RandAugment(2, 10) strong views (torchvision's), where FineSSL
  uses FixMatch's RandAugmentMC (random magnitudes and Cutout) after Resize(256), a reflect-padded
  RandomCrop(224) and a flip, normalised with CIFAR's statistics (datasets/data.py).
- Gradient accumulation: the engine averages micro-batch losses, so L_u1 (a masked mean) becomes
  the mean of per-micro-batch masked means; L_x, L_x1 and L_u (plain means) and the margin and
  buffer are exact.
- Duplicate indices within one step (FineSSL: undefined write order): the last micro-batch and
  the last process win.
- Precision: FineSSL's configs (``prec: fp16``) cast heads to fp16 and step SGD on fp16 weights;
  here parameters stay float32 and the heads and losses run in float32.
- Resume: FineSSL's ``train`` copies h into h1 again after resuming and does not save the
  buffer; ours checkpoints both heads and the buffers.
- ``head=linear`` is refused: FineSSL has only its cosine heads.

Paper and code: the paper's text could not be read where this was written; every equation
above is the code's. Its documented form (balanced margin softmax, decoupled label smoothing on
an auxiliary head, reweighting every unlabeled sample by that head's confidence) agrees with the
code; the code's details (the fixed 0.7 selection, the per-epoch reset, the (max - min) factor,
th_min = 0, s / (K - 1) smoothing) are taken from the code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..batch import Batch
from ..config import Section
from ..errors import ConfigError
from ..models.heads import LearnableScaleCosineHead
from .base import METHODS, Method, MethodContext, MethodOptions, PseudoLabels, StepOutput
from .losses import cross_entropy, masked_mean, off_target_smoothed_targets, soft_cross_entropy

NO_LABEL = -1  # selected_label of a sample without a confident pseudo-label this epoch


class FineSSLOptions(Section):
    """finessl: FineSSL's options with the defaults of its code (Gank0078/FineSSL@76b6f48) [B].
    Its threshold ``th`` is ``ssl.tau`` (0.7 in every FineSSL config, ulfine's default)."""

    alpha: float = Field(8.0, ge=0.0, description="BaM margin scale (FineSSL cfg.alpha: 8.0 in "
                         "utils/config.py:85 and every configs/peft/*.yaml)")
    w_con: float = Field(3.0, ge=0.0, description="weight of the main head's unlabeled loss L_u "
                         "(FineSSL cfg.w_con: 3.0 in its configs, 1.0 in cifar10_N1.yaml and "
                         "utils/config.py:87)")
    smoothing: float = Field(0.5, ge=0.0, lt=1.0, description="label smoothing of the auxiliary "
                             "head's pseudo-label targets, (1-s) on y^, s/(K-1) elsewhere (FineSSL "
                             "cfg.smoothing: 0.5 in its configs; utils/config.py:91 has 0.1)")
    th_min: float = Field(0.0, ge=0.0, le=1.0, description="auxiliary-head confidence below which "
                          "a sample gets no L_u weight (FineSSL cfg.th_min: 0.0, utils/config.py:86, "
                          "no config changes it)")
    select_threshold: float = Field(0.7, ge=0.0, le=1.0, description="main-head confidence that "
                                    "records a pseudo-label in the learning-status buffer (FineSSL: "
                                    "the constant 0.7 in trainer.py, conf.ge(0.7))")
    head_scale_init: float = Field(1 / 0.07, gt=0.0, description="initial learnable logit scale of "
                                   "both heads (FineSSL ViT_Head: 1/0.07, stored raw, unclamped)")
    head_init: Literal["random", "text"] = Field(
        "random", description="main head's initial rows: random unit rows (FineSSL's default "
        "rand_init=True, utils/config.py:89) [B], or the text prototypes [R]")


# ---------------------------------------------------------------------------- pure functions
@torch.no_grad()
def learning_status(selected: torch.Tensor, num_classes: int, previous: torch.Tensor) -> torch.Tensor:
    """a_c = n_c / max_k n_k from the buffer (n_c: samples whose latest pseudo-label is c); kept
    at ``previous`` when the largest count, the unselected ones included, is the whole set."""
    picked = selected >= 0
    counts = torch.zeros(num_classes, device=selected.device, dtype=torch.float32)
    counts.index_add_(0, selected.clamp_min(0), picked.float())
    unselected = (~picked).sum().float()
    largest = torch.maximum(counts.max(), unselected)
    status = counts / counts.max().clamp_min(1.0)
    return torch.where(largest < selected.numel(), status, previous.float())


def balanced_margins(status: torch.Tensor, alpha: float) -> torch.Tensor:
    """Delta_c = alpha * (max a - min a) * (1 - a_c) / (1 + a_c): BaM's per-class margins."""
    spread = (status.max() - status.min()) * alpha
    return (1.0 - status) / (1.0 + status) * spread


def margin_logits(logits: torch.Tensor, target: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """z_k + Delta_y for every k != y (the target logit is unchanged), in float32."""
    off_target = 1.0 - F.one_hot(target, logits.shape[-1]).float()
    return logits.float() + margins[target].unsqueeze(1) * off_target


@dataclass
class FineSSLTerms:
    """Everything one (micro-)batch computed: the loss terms and what selects and weights them."""

    loss: torch.Tensor
    loss_x: torch.Tensor  # L_x: main head, margin CE on the labeled batch
    loss_x1: torch.Tensor  # L_x1: auxiliary head, plain CE on detached labeled features
    loss_u: torch.Tensor  # L_u: main head, margin CE on both strong views weighted by c1 * m1
    loss_u1: torch.Tensor  # L_u1: auxiliary head, smoothed CE on both strong views where m
    margins: torch.Tensor  # (K,) Delta
    label: torch.Tensor  # (N,) y^ of the main head's weak view
    confidence: torch.Tensor  # (N,) c
    mask: torch.Tensor  # (N,) bool, c >= th
    confidence_aux: torch.Tensor  # (N,) c1 of the auxiliary head's weak view
    mask_aux: torch.Tensor  # (N,) bool, c1 >= th_min
    select: torch.Tensor  # (N,) bool, c >= select_threshold
    logits: dict[str, torch.Tensor]  # raw logits of both heads per view: z_x_l, z1_u_s, ...


# ----------------------------------------------------------------------------------- method
@METHODS.register("finessl", options=FineSSLOptions)
class FineSSL(Method):
    """FineSSL: BaM on the main cosine head, decoupled label smoothing on an auxiliary head."""

    uses_unlabeled = True
    strong_views = 2
    opts: FineSSLOptions

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(backbone, ctx, options)
        if options.head != "prototype":
            raise ConfigError(f"invalid config: method=finessl has only FineSSL's cosine heads; "
                              f"use head=prototype (got head={options.head})")
        k, scale = ctx.num_classes, self.opts.head_scale_init
        if self.opts.head_init == "text":
            if ctx.text_prototypes is None:
                raise ConfigError("invalid config: finessl.head_init=text needs text prototypes and "
                                  "this backbone has no text tower; use finessl.head_init=random")
            self.head = LearnableScaleCosineHead(F.normalize(ctx.text_prototypes.float(), dim=-1), scale)
        else:
            self.head = LearnableScaleCosineHead.random(k, ctx.feature_dim, scale)
        self.head1 = copy.deepcopy(self.head)  # FineSSL: head1.weight <- head.weight at train start
        n = ctx.num_unlabeled
        self.register_buffer("selected_label", torch.full((n,), NO_LABEL, dtype=torch.long))
        self.register_buffer("classwise_acc", torch.zeros(k))
        # this optimiser step's selections (all its micro-batches), applied after the step
        self.register_buffer("pending_label", torch.full((n,), NO_LABEL, dtype=torch.long), persistent=False)

    @classmethod
    def text_need(cls, head: str) -> str | None:
        return None  # the default random head needs no text (head_init=text checks for itself)

    # -- losses ---------------------------------------------------------------------------------
    def margins(self) -> torch.Tensor:
        """(K,) BaM margins of the current step (from the status after the last step)."""
        return balanced_margins(self.classwise_acc, self.opts.alpha)

    def step_terms(self, batch: Batch) -> FineSSLTerms:
        """FineSSL's losses on one (micro-)batch; records its confident selections as pending."""
        if batch.u_w is None or batch.u_s is None or batch.u_s2 is None:
            raise RuntimeError("finessl needs unlabeled batches with a weak and two strong views")
        if batch.idx_u is None:
            raise RuntimeError("finessl needs the unlabeled indices (batch.idx_u) for its buffer")
        f = self.view_features(batch)
        n_l = f["x_l"].shape[0]
        f_train = torch.cat([f["x_l"], f["u_s"], f["u_s2"]])
        z = self.head(f_train)
        z1 = self.head1(f_train.detach())
        z_l, z_s = z[:n_l], z[n_l:]
        z1_l, z1_s = z1[:n_l], z1[n_l:]
        with torch.no_grad():
            z_w, z1_w = self.head(f["u_w"]), self.head1(f["u_w"])
            confidence, label = torch.softmax(z_w.float(), dim=-1).max(dim=-1)
            confidence_aux = torch.softmax(z1_w.float(), dim=-1).max(dim=-1).values
            mask = confidence >= self.ssl.tau
            mask_aux = confidence_aux >= self.opts.th_min
            select = confidence >= self.opts.select_threshold
        margins = self.margins()
        k = self.ctx.num_classes
        label2, mask2 = label.repeat(2), mask.repeat(2)  # view 1, then view 2
        loss_x = cross_entropy(margin_logits(z_l, batch.y_l, margins), batch.y_l)
        loss_x1 = cross_entropy(z1_l, batch.y_l)
        per_u = F.cross_entropy(margin_logits(z_s, label2, margins), label2, reduction="none")
        loss_u = (per_u * (confidence_aux * mask_aux.float()).repeat(2)).mean()
        target = off_target_smoothed_targets(label2, k, self.opts.smoothing)
        loss_u1 = masked_mean(soft_cross_entropy(z1_s, target), mask2)
        loss = loss_x + loss_x1 + self.opts.w_con * loss_u + loss_u1
        with torch.no_grad():  # this micro-batch's selections, applied after the step
            idx = batch.idx_u
            self.pending_label[idx] = torch.where(select, label, self.pending_label[idx])
        n = z_w.shape[0]
        logits = {"z_x_l": z_l, "z_u_w": z_w, "z_u_s": z_s[:n], "z_u_s2": z_s[n:],
                  "z1_x_l": z1_l, "z1_u_w": z1_w, "z1_u_s": z1_s[:n], "z1_u_s2": z1_s[n:]}
        return FineSSLTerms(loss, loss_x, loss_x1, loss_u, loss_u1, margins, label, confidence, mask,
                            confidence_aux, mask_aux, select, logits)

    def training_step(self, batch: Batch) -> StepOutput:
        t = self.step_terms(batch)
        pseudo = PseudoLabels(idx=batch.idx_u, label=t.label, confidence=t.confidence, mask=t.mask)
        acc = (t.logits["z_x_l"].detach().argmax(-1) == batch.y_l).float().mean()
        logs = {"loss_s": t.loss_x.detach(), "loss_s_aux": t.loss_x1.detach(), "loss_u": t.loss_u.detach(),
                "loss_u_aux": t.loss_u1.detach(), "margin_max": t.margins.max(),
                "aux_confidence": t.confidence_aux.mean(), "aux_mask_rate": t.mask_aux.float().mean(),
                "logit_scale": self.head.logit_scale.detach(), "acc_l": acc}
        return StepOutput(t.loss, logs, pseudo)

    # -- the learning-status buffer ---------------------------------------------------------------
    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """Apply the step's selections (every micro-batch, every process, in rank order), then take
        the status the next step's margin reads."""
        gathered = self.ctx.collectives.all_gather(self.pending_label).view(-1, self.pending_label.numel())
        selected = self.selected_label
        for rank_pending in gathered:
            selected = torch.where(rank_pending >= 0, rank_pending, selected)
        self.selected_label.copy_(selected)
        self.pending_label.fill_(NO_LABEL)
        self.classwise_acc.copy_(learning_status(self.selected_label, self.ctx.num_classes, self.classwise_acc))

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        """FineSSL starts every epoch with an empty buffer and a zero status (margin 0); the
        finished epoch's last status is kept for :meth:`diagnostics` (the evaluation follows)."""
        self._ended_epoch = {"epoch": epoch, "selected": int((self.selected_label >= 0).sum()),
                             "classwise_acc": [round(float(v), 6) for v in self.classwise_acc],
                             "margins": [round(float(v), 6) for v in self.margins()]}
        self.selected_label.fill_(NO_LABEL)
        self.classwise_acc.zero_()

    # -- prediction -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The main head's raw logits (FineSSL's test())."""
        return self.head(self.features(images))

    @torch.no_grad()
    def predict_branches(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {"decision": self.head(f), "auxiliary": self.head1(f)}

    def diagnostics(self) -> dict[str, Any]:
        """Both logit scales, and the learning status at the end of the last finished epoch."""
        return {"logit_scale": self.head.logit_scale.item(), "logit_scale_aux": self.head1.logit_scale.item(),
                "last_epoch_status": getattr(self, "_ended_epoch", None)}


__all__ = ["FineSSL", "FineSSLOptions", "FineSSLTerms", "balanced_margins", "learning_status", "margin_logits"]
