"""``cdmad``: Class-Distribution-Mismatch-Aware Debiasing (Lee & Kim, CVPR 2024) on FixMatch [B]
LeeHyuck/CDMAD@7cd732b, ``fixmatchcdmad.py`` (its ``train()`` and ``validate()``).

Followed line by line from that code and checked against it executed
(``tests/golden/test_cdmad_golden.py``, vectors from ``scripts/golden/make_cdmad.py``).

The classifier's bias towards classes is measured, every step, as its logits on an image with no
content: a *solid* image s whose every input element is the same value. With z(.) the logits,
a(u) a weak view, A_1(u), A_2(u) two strong views and e the 0-based epoch:

- b = z(s), without gradient, with the model in the mode it trains in (fixmatchcdmad.py:231-233).
- Pseudo-labels (fixmatchcdmad.py:234-244): z~ = z(a(u)) - b when e >= e_0, else z(a(u));
  q = softmax(z~) (a *soft* target), y^ = argmax q, m = [max q >= t].
- L_x = 1/B sum_j H_eps(onehot(y_j), z(x_j)); L_u = 1/(2N) sum_{v=1,2} sum_i m_i H_eps(q_i, z(A_v(u_i)))
  with H_eps(t, z) = -sum_k t_k log(softmax(z)_k + 1e-8) (CDMAD's SemiLoss, fixmatchcdmad.py:409-413,
  called at :257): the 1e-8 caps a sample's loss at -log(1e-8) = 18.4 and all but stops its
  gradient once its target's probability is far below 1e-8, so it is kept;
  L = L_x + lambda_u L_u (CDMAD: lambda_u = 1).
- Prediction: z(x) - z(s), s through the evaluated model in evaluation mode (fixmatchcdmad.py:310-321;
  CDMAD also logs the raw z(x), here the ``raw`` branch).

The solid image, decided here: CDMAD feeds ``torch.ones((1, 3, 32, 32))`` straight into its WRN
(fixmatchcdmad.py:232, :312), whose inputs are images normalised with CIFAR-10's mean and std
(dataset/fix_cifar10.py:11-34): the ones are in the *normalised* input space, i.e. the pixel
mean + std = (0.739, 0.726, 0.708), a light grey, not white. ulfine does the same in its model's
input space, after the backbone's :class:`~ulfine.models.preprocess.DeviceNormalizer`: s is a
(1, 3, H, W) tensor of ``cdmad.solid_value`` (1.0) shaped like the batch's images (the backbone's
input size), passed through :meth:`~ulfine.methods.base.Method.features` and the head every step.
On the scratch WRN (CIFAR statistics) that is CDMAD's input exactly; on CLIP (its own statistics,
mean (0.481, 0.458, 0.408), std (0.269, 0.261, 0.276)) it is the pixel (0.750, 0.719, 0.684),
again a light grey.

Options: t is ``ssl.tau`` (CDMAD's ``--tau`` default 0, fixmatchcdmad.py:55: every sample counts;
the published recipe sets ``ssl.tau=0``), e_0 is ``cdmad.debias_from_epoch``.

Heads: ``head=linear``: a linear classifier initialised as CDMAD's WRN (Xavier-normal weights,
zero bias, wrn.py:89-91) [B]; ``head=prototype`` [R] (CLIP): the baselines' text-initialised
cosine classifier. A cosine head has no bias vector; b is then the cosine of the solid image's
features with each class prototype (times the logit scale), the bias of the features, not of
a bias term. Feature mode (cached features of a frozen tower) cannot give the solid image's
features and is refused; a method with unlabeled data never runs in it.

Forward passes [B]: CDMAD passes the solid image, the weak view (both without gradient), x and
each strong view separately (fixmatchcdmad.py:233-253), and so does :meth:`CDMAD.view_features`
on a backbone with batch statistics: each view is normalised with its own statistics, and the
solid image is one of five BatchNorm updates of the running statistics a step, as in CDMAD (the
joint pass of the other methods, :meth:`~ulfine.methods.base.Method.view_features`, would make it
one of two: its near-constant activations would then weigh half of the statistics the model is
evaluated with). Without batch statistics (CLIP) the order and grouping change nothing.

Deliberate deviations from CDMAD's code:

- CDMAD evaluates its EMA model (fixmatchcdmad.py:167) with Adam and its weight decay in
  ``WeightEMA`` (:141, :422, :435); those are the engine's (``train.ema``, ``optim.*``).
- Batch sizes: CDMAD draws ``--unlabeledratio`` (2) unlabeled images per labeled one (:115);
  here ``ssl.mu`` (the published recipe sets 2).
- The test-time b is computed once per :meth:`predict` call (per evaluation batch), from the
  model being evaluated; CDMAD computes it once per evaluation. The weights do not change during
  an evaluation, so the values are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..batch import Batch
from ..config import Section
from ..errors import ConfigError
from ..models.backbone import CachedFeatures
from .base import METHODS, Method, MethodContext, MethodOptions, PseudoLabels, StepOutput
from .supervised import xavier_head


class CDMADOptions(Section):
    """cdmad: CDMAD's values (LeeHyuck/CDMAD@7cd732b, fixmatchcdmad.py) [B]. Its threshold is
    ``ssl.tau`` (CDMAD: 0, fixmatchcdmad.py:55; the published recipe sets it)."""

    debias_from_epoch: int = Field(101, ge=0, description="first 0-based epoch whose pseudo-labels "
                                   "are debiased (CDMAD: --debiasstart 100 and `epoch > debiasstart`, "
                                   "fixmatchcdmad.py:63, :235; 101 of its 500 epochs). Test "
                                   "predictions are always debiased")
    solid_value: float = Field(1.0, allow_inf_nan=False, description="every element of the solid "
                               "image, in the model's normalised input space (CDMAD: torch.ones after "
                               "CIFAR normalisation, fixmatchcdmad.py:232, :312)")


#: CDMAD's constant inside its log-probabilities (fixmatchcdmad.py:411-412)
LOG_EPS = 1e-8


def eps_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample H_eps(t, z) = -sum_k t_k log(softmax(z)_k + 1e-8) in float32; ``target`` is a
    probability vector (N, K) or hard labels (N,)."""
    if target.ndim == 1:
        target = F.one_hot(target, logits.shape[-1])
    return -(target.float() * torch.log(torch.softmax(logits.float(), dim=-1) + LOG_EPS)).sum(dim=-1)


@dataclass
class CDMADTerms:
    """Everything one (micro-)batch computed."""

    loss: torch.Tensor
    loss_x: torch.Tensor  # L_x: CE on the labeled batch
    loss_u: torch.Tensor  # L_u: masked soft CE on both strong views (mean over 2N)
    bias: torch.Tensor  # (K,) b = z(s)
    debiased: bool  # whether b was subtracted from the weak logits
    target: torch.Tensor  # (N, K) q
    label: torch.Tensor  # (N,) argmax q
    confidence: torch.Tensor  # (N,) max q
    mask: torch.Tensor  # (N,) bool, max q >= t
    logits: dict[str, torch.Tensor]  # z_x_l, z_u_w, z_u_s, z_u_s2


@METHODS.register("cdmad", options=CDMADOptions)
class CDMAD(Method):
    """FixMatch whose pseudo-labels and predictions subtract the logits of a solid image."""

    uses_unlabeled = True
    strong_views = 2
    prototype_initialises = "the classifier"
    opts: CDMADOptions

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(backbone, ctx, options)
        if isinstance(backbone, CachedFeatures):
            raise ConfigError("invalid config: method=cdmad passes a solid image through the image "
                              "tower; cached features (feature mode) have no tower to pass it through")
        # a linear head initialised as CDMAD's WRN, so its bias logits are not all zero from the start
        self.head = xavier_head(options.head, ctx)
        self._eval_bias: torch.Tensor | None = None  # b of the last prediction (diagnostics)
        self._eval_spread: list[torch.Tensor] = []  # per-batch sums of the raw logits' class spread
        self._eval_images = 0

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """z(x) in float32."""
        return self.head(features).float()

    def solid_image(self, like: torch.Tensor) -> torch.Tensor:
        """s: one (1, 3, H, W) image of ``solid_value`` in the model's normalised input space,
        with the size, dtype and device of the images ``like``."""
        return torch.full_like(like[:1], self.opts.solid_value)

    @torch.no_grad()
    def bias_logits(self, like: torch.Tensor) -> torch.Tensor:
        """b = z(s), (K,), through the model in its current mode (training or evaluation)."""
        return self.logits(self.features(self.solid_image(like)))[0]

    def debiasing(self, step: int) -> bool:
        """Are the pseudo-labels of optimiser step ``step`` debiased?"""
        return self.epoch_of(step) >= self.opts.debias_from_epoch

    def view_features(self, batch: Batch) -> dict[str, torch.Tensor]:
        """CDMAD's passes on a batch-statistics backbone: the weak view (no gradient), then x and
        each strong view, each alone (fixmatchcdmad.py:234, :250-252); otherwise the base's."""
        if not getattr(self.backbone, "batch_statistics", False):
            return super().view_features(batch)
        with torch.no_grad():
            out = {"u_w": self.features(batch.u_w)}
        for name in ("x_l", "u_s", "u_s2"):
            out[name] = self.features(getattr(batch, name))
        return out

    # -- losses ---------------------------------------------------------------------------------
    def step_terms(self, batch: Batch) -> CDMADTerms:
        """CDMAD's losses on one (micro-)batch."""
        if batch.u_w is None or batch.u_s is None or batch.u_s2 is None:
            raise RuntimeError("cdmad needs unlabeled batches with a weak and two strong views")
        bias = self.bias_logits(batch.x_l)  # CDMAD: before the views, in training mode
        f = self.view_features(batch)
        n_l = f["x_l"].shape[0]
        z = self.logits(torch.cat([f["x_l"], f["u_s"], f["u_s2"]]))
        z_l, z_s = z[:n_l], z[n_l:]
        debiased = self.debiasing(batch.step)
        with torch.no_grad():
            z_w = self.logits(f["u_w"])
            q = torch.softmax(z_w - bias if debiased else z_w, dim=-1)
            confidence, label = q.max(dim=-1)
            mask = confidence >= self.ssl.tau
        loss_x = eps_cross_entropy(z_l, batch.y_l).mean()
        loss_u = (eps_cross_entropy(z_s, q.repeat(2, 1)) * mask.repeat(2).float()).mean()
        loss = loss_x + self.ssl.lambda_u * loss_u
        n = z_w.shape[0]
        logits = {"z_x_l": z_l, "z_u_w": z_w, "z_u_s": z_s[:n], "z_u_s2": z_s[n:]}
        return CDMADTerms(loss, loss_x, loss_u, bias, debiased, q, label, confidence, mask, logits)

    def training_step(self, batch: Batch) -> StepOutput:
        t = self.step_terms(batch)
        pseudo = PseudoLabels.of_batch(batch, t.label, t.confidence, t.mask)
        acc = (t.logits["z_x_l"].detach().argmax(-1) == batch.y_l).float().mean()
        logs = {"loss_s": t.loss_x.detach(), "loss_u": t.loss_u.detach(), "bias_std": t.bias.std(),
                "bias_range": t.bias.max() - t.bias.min(), "debiased": float(t.debiased), "acc_l": acc}
        return StepOutput(t.loss, logs, pseudo)

    # -- prediction -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_branches(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``decision``: z(x) - z(s) (CDMAD's debiased test prediction); ``raw``: z(x)."""
        bias = self.bias_logits(images)
        z = self.logits(self.features(images))
        self._eval_bias = bias.detach()
        self._eval_spread.append((z.max(-1).values - z.min(-1).values).sum().detach())
        self._eval_images += z.shape[0]
        return {"decision": z - bias, "raw": z}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_branches(images)["decision"]

    def diagnostics(self) -> dict[str, Any]:
        """The evaluated model's bias logits b (their spread across classes next to the mean
        spread of the raw logits of the images just predicted), then a fresh tally."""
        if self._eval_bias is None:
            return {}
        b = self._eval_bias.float().cpu()
        spread = float(torch.stack(self._eval_spread).sum().cpu()) / max(1, self._eval_images)
        self._eval_spread, self._eval_images = [], 0
        return {"bias_logits": [round(float(v), 6) for v in b], "bias_mean": round(float(b.mean()), 6),
                "bias_std": round(float(b.std()), 6), "bias_range": round(float(b.max() - b.min()), 6),
                "bias_argmax": int(b.argmax()), "raw_logit_range_mean": round(spread, 6)}


__all__ = ["CDMAD", "CDMADOptions", "CDMADTerms", "eps_cross_entropy"]
