"""``cpe``: Complementary Experts (Ma et al., AAAI 2024) as its code does it [B]
machengcheng2016/CPE-LTSSL@dedd598.

Followed line by line from ``CPE.train_step`` in ``semilearn/imb_algorithms/cpe/cpe.py`` (a USB
fork; the experts' heads: ``CBNNet`` there; the class-wise BatchNorm: ``WideResNetCBN`` in
``semilearn/nets/wrn/wrn_cbn.py``; options: ``CPE.get_argument`` and
``config/classic_cv_imb/fixmatch_cpe/*.yaml``), and checked against that code executed
(``tests/golden/test_cpe_golden.py``, vectors from ``scripts/golden/make_cpe.py``).

**Class-wise branches.** The backbone's features are seen through three branches b = H, M, T
(head, medium, tail): f_b(x). On the scratch WRN (``classwise_norm=batchnorm``) these are CPE's
class-wise BatchNorm: three ``BatchNorm2d`` (PyTorch defaults) applied to the last feature map
(after the WRN's final BN + LeakyReLU), each average-pooled (wrn_cbn.py:103-105, 134-137). They
normalise the same input with the same batch statistics and differ only in their affine
(gamma_b, beta_b), which the class-wise losses below train apart.

**Three experts** e = 1, 2, 3: linear classifiers g_e on every branch; the expert's logits are
the mean over branches, z_e(x) = 1/3 sum_b g_e(f_b(x)) (wrn_cbn.py:143-144, cpe.py:32-56). With
the labeled prior pi, the threshold t = ``ssl.tau`` (CPE's ``p_cutoff`` 0.95) and the classes
ranked by labeled count (rank 0: the most frequent), per optimiser step (cpe.py:219-276):

- L_x^e = CE(z_e(x) + tau_e log pi, y), tau = (0, 2, 4) (``la_tau_lb1..3``, cpe.py:318-320):
  expert 1 fits the labeled (long-tailed) distribution, expert 2 a uniform one, expert 3 the
  reversed one; each covers one kind of unlabeled distribution.
- Each expert pseudo-labels for itself: y^_e = argmax z_e(a(u)), m_e = [max softmax z_e(a(u)) >= t].
- Class-wise consistency: w_H = m_e, w_M = m_e [rank(y^_e) >= cut1], w_T = m_e [rank(y^_e) >= cut2]
  (cut1, cut2 = 2, 4 by default, cpe.py:323-324; 35, 70 in the CIFAR-100 configs), and
  L_u^e = sum_{b,i} w_b,i CE(g_e(f_b(A(u_i))), y^_e,i) / (sum_{b,i} w_b,i + 1e-12): head-class
  samples train the H branch, medium ones H and M, tail ones all three.
- L = sum_e (L_x^e + lambda_u L_u^e), lambda_u = ``ssl.lambda_u`` (``ulb_loss_ratio`` 1.0).
- Prediction: expert 2's z_2 (``evaluate`` reads ``logits_2``, cpe.py:312-313; ``predict_expert``).

**The unlabeled distribution estimate does not pick an expert** in the released code: CPE keeps,
per expert, u_e <- ema_u u_e + (1 - ema_u) n_e / sum n_e with n_e the class counts of its
confident pseudo-labels (``update_stuff``, cpe.py:130-141, 259-262, from epoch est_epoch + 1)
and only logs it. ulfine keeps the same estimates (summed over micro-batches and processes per
step, ``ctx.collectives``) as diagnostics; nothing reads them for training or prediction.

**On CLIP** (LayerNorm towers) there is no BatchNorm to make class-wise [R]: ``classwise_norm=
affine`` (the ``auto`` choice without batch statistics) keeps what is class-wise in CPE's CBN,
a per-branch, per-channel affine f_b = gamma_b * f + beta_b on the (already LayerNorm-ed and
projected) features, started at the identity so that CLIP's head starts as it would without
branches; the shared normalisation is the tower's own ``ln_post``. ``classwise_norm=none`` uses
the features for all three branches (only the class-wise weighting of L_u remains).

Engine contract: the step is exact under several processes and accumulation except as listed;
the estimates are registered buffers (checkpointed), counted per micro-batch and moved once per
optimiser step (:meth:`after_optimizer_step`).

Deliberate deviations from the code:

- Groups by rank: CPE slices ``one_hot(y^)[:, cut1:]``, i.e. class *indices* >= cut1, which are
  the medium/tail classes because its CIFAR/STL splits number classes by decreasing count; ulfine
  uses the rank of the labeled count (stable), the same on those splits.
- Gradient accumulation: L_u^e is a weighted *mean* per micro-batch; the engine averages the
  micro-batches' losses, so with accumulation it is the mean of per-micro-batch means (exact
  without accumulation); L_x^e and the estimates are exact. The CBN, like the WRN's own BN,
  normalises with each micro-batch's statistics.
- Heads: ``head=linear`` is CPE's (expert 1: the WRN's classifier, Xavier-normal weight and zero
  bias, wrn_cbn.py:119-121; experts 2 and 3: ``CBNNet``'s ``nn.Linear`` with PyTorch's default
  initialisation, cpe.py:25-26); ``head=prototype`` (CLIP) gives three text-initialised cosine
  heads [R].
- The CBN branches on the WRN are computed by a forward hook of this method on the backbone's
  final average pool (it returns the three pooled branches); CPE builds them into its WRN class.
  The same works on ``resnet50``. CPE's WRN also differs from ulfine's scratch WRN outside the
  CBN (a biased stem convolution, eps 1e-3 in the last BN): that is the backbone's, not CPE's.
- CPE's logged precision/recall and the ``g_py``/``ag_py`` estimates read unlabeled ground truth
  (``y_ulb``); they are not computed.
- Statistics of a step the engine skips as non-finite are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..batch import Batch
from ..config import Section
from ..errors import ConfigError
from ..models.heads import LinearHead
from .base import METHODS, Method, MethodContext, MethodOptions, PseudoLabels, StepOutput
from .losses import cross_entropy, logit_adjusted, moved_distribution, pseudo_label
from .supervised import build_head, xavier_init

BRANCHES = ("head", "medium", "tail")  # CPE's BNH, BNM, BNT
EXPERTS = 3
WEIGHT_EPS = 1e-12  # CPE: L_u / (sum of weights + 1e-12)


class CPEOptions(Section):
    """cpe: CPE's options with the defaults of its code (machengcheng2016/CPE-LTSSL@dedd598).
    Its threshold ``p_cutoff`` is ``ssl.tau`` (0.95 in every fixmatch_cpe config, line 18)."""

    tau_1: float = Field(0.0, description="logit adjustment of expert 1's labeled loss (CPE "
                         "--la_tau_lb1: 0.0, cpe.py:318 and every fixmatch_cpe/*.yaml:51)")
    tau_2: float = Field(2.0, description="logit adjustment of expert 2's labeled loss (--la_tau_lb2: "
                         "2.0, cpe.py:319, *.yaml:52)")
    tau_3: float = Field(4.0, description="logit adjustment of expert 3's labeled loss (--la_tau_lb3: "
                         "4.0, cpe.py:320, *.yaml:53)")
    cut1: int = Field(2, ge=0, description="classes of labeled-count rank >= cut1 (medium and tail) "
                      "also train the M branch (CPE --cut1: 2, cpe.py:323; 35 in the CIFAR-100 "
                      "configs, fixmatch_cpe_cifar100_*.yaml:54)")
    cut2: int = Field(4, ge=0, description="classes of rank >= cut2 (tail) also train the T branch "
                      "(--cut2: 4, cpe.py:324; 70 in the CIFAR-100 configs, *.yaml:55)")
    classwise_norm: Literal["auto", "batchnorm", "affine", "none"] = Field(
        "auto", description="the three branches: batchnorm = CPE's class-wise BatchNorm on the last "
        "feature map of a BatchNorm backbone [B]; affine = per-branch affine on the features [R]; "
        "none = no branches [R]; auto = batchnorm where the backbone has batch statistics, else affine")
    predict_expert: int = Field(2, ge=1, le=EXPERTS, description="expert whose logits predict (CPE "
                                "evaluates logits_2, the tau=2 expert: cpe.py:312-313)")
    ema_u: float = Field(0.9, ge=0.0, lt=1.0, description="momentum of the per-expert unlabeled "
                         "distribution estimates, diagnostics only (--ema_u: 0.9, cpe.py:322)")
    estimate_from_epoch: int = Field(1, ge=0, description="first epoch (0-based) of the estimates "
                                     "(--est_epoch 0: epochs > 0, cpe.py:259, 321)")


# ---------------------------------------------------------------------------- branches
class ClasswiseBatchNorm(nn.Module):
    """CPE's class-wise BatchNorm: three ``BatchNorm2d`` (PyTorch defaults, weight 1, bias 0)
    over one feature map, each average-pooled: (N, C, H, W) -> (N, 3, C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in BRANCHES)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return torch.stack([norm(fmap).mean(dim=(2, 3)) for norm in self.norms], dim=1)

    def pool_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        """Forward hook of the backbone's final average pool: the three branches instead of the
        pooled map (the backbone then flattens them to (N, 3C))."""
        return self(inputs[0])


class ClasswiseAffine(nn.Module):
    """[R] The class-wise part of CBN on features without a BatchNorm: per-branch, per-channel
    gamma_b * f + beta_b, started at the identity: (N, D) -> (N, 3, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(len(BRANCHES), dim))
        self.bias = nn.Parameter(torch.zeros(len(BRANCHES), dim))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f.unsqueeze(1) * self.weight + self.bias


def final_average_pool(backbone: nn.Module) -> nn.Module | None:
    """The last ``AdaptiveAvgPool2d`` of the backbone's image network (the WRN's ``pool``,
    ResNet-50's ``avgpool``), where CPE's CBN sits; None when there is none."""
    visual = getattr(backbone, "visual", None)
    pools = [m for m in visual.modules() if isinstance(m, nn.AdaptiveAvgPool2d)] if visual is not None else []
    return pools[-1] if pools else None


def resolve_classwise_norm(kind: str, backbone: nn.Module) -> str:
    """``auto``: ``batchnorm`` on a backbone with batch statistics and a final average pool, else
    ``affine``; an explicit ``batchnorm`` where there is none is refused."""
    has_bn = bool(getattr(backbone, "batch_statistics", False)) and final_average_pool(backbone) is not None
    if kind == "auto":
        return "batchnorm" if has_bn else "affine"
    if kind == "batchnorm" and not has_bn:
        raise ConfigError("cpe.classwise_norm=batchnorm needs a BatchNorm backbone with a final average "
                          "pool (model.arch=wrn-28-2|resnet50); use cpe.classwise_norm=affine|none")
    return kind


# ---------------------------------------------------------------------------- pure functions
def class_ranks(counts: torch.Tensor) -> torch.Tensor:
    """Rank of each class by labeled count, most frequent first (stable: ties by index); on
    splits numbered by decreasing count, the class index."""
    order = torch.argsort(counts.float(), descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order), device=order.device)
    return ranks


def branch_weights(label: torch.Tensor, mask: torch.Tensor, ranks: torch.Tensor, cut1: int, cut2: int) -> torch.Tensor:
    """(N, 3): w_H = m, w_M = m [rank(y^) >= cut1], w_T = m [rank(y^) >= cut2]."""
    r = ranks[label].unsqueeze(1)
    cuts = torch.tensor([0, cut1, cut2], device=label.device)
    return (r >= cuts).float() * mask.float().unsqueeze(1)


def classwise_consistency(logits_strong: torch.Tensor, label: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_{i,b} w_ib CE(z_b(A(u_i)), y^_i) / (sum w + 1e-12); ``logits_strong`` is (N, 3, K)."""
    n, b, k = logits_strong.shape
    ce = F.cross_entropy(logits_strong.float().reshape(n * b, k), label.repeat_interleave(b), reduction="none")
    return (ce.view(n, b) * weights).sum() / (weights.sum() + WEIGHT_EPS)


@dataclass
class ExpertTerms:
    """One expert's losses and pseudo-labels for one (micro-)batch."""

    loss_x: torch.Tensor
    loss_u: torch.Tensor
    label: torch.Tensor
    confidence: torch.Tensor
    mask: torch.Tensor  # bool
    logits_l: torch.Tensor  # z_e(x), detached


def _expert_heads(kind: str, ctx: MethodContext) -> nn.ModuleList:
    """``linear``: CPE's classifiers (expert 1 Xavier-normal with zero bias, experts 2 and 3
    PyTorch's default ``nn.Linear``); ``prototype``: three text-initialised cosine heads [R]."""
    if kind != "linear":
        return nn.ModuleList(build_head(kind, ctx) for _ in range(EXPERTS))
    heads = [LinearHead(ctx.feature_dim, ctx.num_classes, zero_init=False) for _ in range(EXPERTS)]
    xavier_init(heads[0])
    return nn.ModuleList(heads)


# ----------------------------------------------------------------------------------- method
@METHODS.register("cpe", options=CPEOptions)
class CPE(Method):
    """Three logit-adjusted experts on class-wise feature branches."""

    uses_unlabeled = True
    prototype_initialises = "the experts"
    opts: CPEOptions

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(backbone, ctx, options)
        k = ctx.num_classes
        self.experts = _expert_heads(options.head, ctx)
        self.norm_kind = resolve_classwise_norm(self.opts.classwise_norm, backbone)
        self.classwise: nn.Module | None = None
        if self.norm_kind == "batchnorm":
            self.classwise = ClasswiseBatchNorm(ctx.feature_dim)
            final_average_pool(backbone).register_forward_hook(self.classwise.pool_hook)
        elif self.norm_kind == "affine":
            self.classwise = ClasswiseAffine(ctx.feature_dim)
        self.register_buffer("prior", ctx.labeled_prior.float().clone())
        self.register_buffer("ranks", class_ranks(ctx.labeled_counts))
        self.register_buffer("u_estimate", torch.full((EXPERTS, k), 1.0 / k))
        self.register_buffer("pending_counts", torch.zeros(EXPERTS, k), persistent=False)
        self._pending_step: int | None = None

    @property
    def taus(self) -> tuple[float, float, float]:
        return (self.opts.tau_1, self.opts.tau_2, self.opts.tau_3)

    def estimating(self, step: int) -> bool:
        """Are the estimates moved during optimiser step ``step``?"""
        return self.epoch_of(step) >= self.opts.estimate_from_epoch

    # -- features and logits -----------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, D): the features seen through the head, medium and tail branches."""
        f = self.backbone.encode_image(images)
        if self.norm_kind == "batchnorm":  # the pool hook made them: (N, 3D) flattened
            return f.unflatten(1, (len(BRANCHES), -1))
        if self.classwise is not None:
            return self.classwise(f)
        return f.unsqueeze(1).expand(-1, len(BRANCHES), -1)

    def expert_logits(self, e: int, branch_features: torch.Tensor) -> torch.Tensor:
        """z_e = mean over branches of g_e(f_b): (N, 3, D) -> (N, K)."""
        return self.experts[e](branch_features).float().mean(dim=1)

    # -- losses -------------------------------------------------------------------------------------
    def expert_terms(self, e: int, f: dict[str, torch.Tensor], y: torch.Tensor) -> ExpertTerms:
        """Expert e's logit-adjusted labeled loss and class-wise consistency on its own targets."""
        z_l = self.expert_logits(e, f["x_l"])
        loss_x = cross_entropy(logit_adjusted(z_l, self.prior, self.taus[e]), y)
        with torch.no_grad():
            label, confidence, mask = pseudo_label(self.expert_logits(e, f["u_w"]), self.ssl.tau)
            weights = branch_weights(label, mask, self.ranks, self.opts.cut1, self.opts.cut2)
        loss_u = classwise_consistency(self.experts[e](f["u_s"]), label, weights)
        return ExpertTerms(loss_x, loss_u, label, confidence, mask.bool(), z_l.detach())

    def record(self, terms: list[ExpertTerms], step: int) -> None:
        """Add the micro-batch's confident pseudo-labels to each expert's step counts (a new step
        first drops what a skipped step left)."""
        if self._pending_step != step:
            self.pending_counts.zero_()
            self._pending_step = step
        for e, t in enumerate(terms):
            self.pending_counts[e].index_add_(0, t.label, t.mask.to(self.pending_counts.dtype))

    def training_step(self, batch: Batch) -> StepOutput:
        if batch.u_w is None:
            raise RuntimeError("cpe needs unlabeled batches")
        f = self.view_features(batch)
        terms = [self.expert_terms(e, f, batch.y_l) for e in range(EXPERTS)]
        if self.estimating(batch.step):
            with torch.no_grad():
                self.record(terms, batch.step)
        loss = sum(t.loss_x + self.ssl.lambda_u * t.loss_u for t in terms)
        main = terms[self.opts.predict_expert - 1]
        pseudo = PseudoLabels.of_batch(batch, main.label, main.confidence, main.mask)
        logs: dict[str, float | torch.Tensor] = {
            "loss_s": main.loss_x.detach(), "loss_u": main.loss_u.detach(),
            "acc_l": (main.logits_l.argmax(-1) == batch.y_l).float().mean()}
        for e, t in enumerate(terms, start=1):
            logs[f"loss_s_expert{e}"] = t.loss_x.detach()
            logs[f"loss_u_expert{e}"] = t.loss_u.detach()
            logs[f"mask_rate_expert{e}"] = t.mask.float().mean()
        return StepOutput(loss, logs, pseudo)

    # -- the estimates (diagnostics) ----------------------------------------------------------------
    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """Move each expert's estimate with the step's counts, summed over processes."""
        if not self.estimating(step):
            return
        counts = self.take_pending(self.pending_counts)
        self._pending_step = None
        total = counts.sum(dim=1, keepdim=True)
        self.u_estimate.copy_(moved_distribution(self.u_estimate, counts, total, self.opts.ema_u))

    # -- prediction ---------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Expert ``predict_expert``'s logits (CPE: expert 2)."""
        return self.expert_logits(self.opts.predict_expert - 1, self.features(images))

    @torch.no_grad()
    def predict_branches(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        out = {f"expert{e + 1}": self.expert_logits(e, f) for e in range(EXPERTS)}
        return {"decision": out[f"expert{self.opts.predict_expert}"], **out}

    def diagnostics(self) -> dict[str, Any]:
        return {"classwise_norm": self.norm_kind,
                "unlabeled_estimate": {f"expert{e + 1}": [round(float(v), 6) for v in self.u_estimate[e]]
                                       for e in range(EXPERTS)}}


__all__ = ["CPE", "CPEOptions", "ClasswiseAffine", "ClasswiseBatchNorm", "ExpertTerms", "branch_weights",
           "class_ranks", "classwise_consistency", "final_average_pool", "resolve_classwise_norm"]
