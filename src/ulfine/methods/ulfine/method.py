"""ULFine = Prototype Adaptive Fitting (PAF) + Dual Logit Fusion (DLF), registered as ``ulfine``.

The method only says how logits, losses and predictions are computed and what state PAF keeps;
the engine runs the loop and calls :meth:`after_optimizer_step` after every optimiser step.
The equations live in :mod:`.paf` and :mod:`.dlf`; docs/method.md marks each [P]/[R].

State (registered buffers, so the engine's checkpoints carry them):

- ``text_anchor`` (K, D): the frozen text prototypes, for the angle diagnostics.
- ``visual_prototypes`` (K, D): C_v, EMA of labeled per-class mean features.
- ``memory_label`` / ``memory_conf`` (N_u,): latest confident pseudo-label of every unlabeled
  sample and its confidence (-1 / 0 when the latest visit was not confident).
- ``alpha`` (K,): the momentum of the last fitting step (diagnostics).

Across processes the labeled feature sums are all-reduced and the pseudo-labels all-gathered
before each update, so every process holds the same PAF state and the momentum fitting moves the
prototype parameter identically everywhere (DDP only synchronises gradients).

The prototype classifier C_t lives in ``prototype_head`` (learnable by default, initialised from
the text prototypes) and the linear branch in ``linear_head`` (absent when ``ulfine.dlf=false``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...batch import Batch
from ...config import Section
from ...models.heads import LinearHead, PrototypeHead
from ..base import METHODS, Method, MethodContext, MethodOptions, PseudoLabels, StepOutput
from ..losses import cross_entropy, logit_adjusted, masked_consistency, pseudo_label
from . import dlf, paf

#: FineSSL's ``ViT_Head`` scale at init, 1/0.07 (Gank0078/FineSSL@76b6f48, model.py)
FINESSL_SCALE_INIT = 1 / 0.07


class ULFineOptions(Section):
    """ULFine = PAF + DLF. Every [R] choice of docs/method.md is an option here."""

    paf: bool = Field(True, description="Prototype Adaptive Fitting (momentum fitting)")
    orth: bool = Field(True, description="orthogonality loss on the prototype classifier")
    dlf: bool = Field(True, description="Dual Logit Fusion (else: prototype branch only)")
    beta: float = Field(0.9, ge=0.0, le=1.0, description="visual prototype EMA momentum [R]")
    mu_paf: float = Field(0.1, ge=0.0, le=1.0, description="base momentum of PAF [R]")
    lambda_orth: float = Field(0.1, ge=0.0, description="orthogonality loss weight [R]")
    tau_la: float = Field(1.0, ge=0.0, description="logit adjustment in DLF [R]")
    w_dlf: float = Field(
        0.5, ge=0.0, description="weight of the prototype logits in DLF (0.5 chosen by the micro-world "
        "study, docs/microworld.md 7.5) [R]",
    )
    prior: Literal["labeled", "labeled+pseudo"] = Field(
        "labeled+pseudo", description="DLF prior: labeled counts, or labeled counts plus the confident "
        "pseudo-labels in memory (chosen by the study) [R]",
    )
    pu_stat: Literal["confidence_sum", "count"] = Field(
        "confidence_sum", description="statistic behind P_u [R]"
    )
    learnable_prototypes: bool = Field(
        True, description="prototype classifier trained by gradient and fitted by momentum [R]"
    )
    loss_linear: Literal["ce", "la"] = Field(
        "ce", description="linear branch's loss: plain CE (prior removed post hoc in DLF) or "
        "logit-adjusted CE with tau_la (then DLF adds it unadjusted) [R]",
    )
    loss_prototype: Literal["ce", "la"] = Field(
        "ce", description="prototype branch's loss: plain or logit-adjusted CE (tau_la) [R]"
    )
    fusion: Literal["sum", "mean"] = Field(
        "mean", description="DLF: mean of the two branches' logits (default, chosen on the micro "
        "world's dev seeds) or their sum [R]",
    )
    pseudo_labels: Literal["fused", "prototype"] = Field(
        "fused", description="logits the weak-view pseudo-labels (and P_u's memory) come from: the "
        "fused z^f, or the prototype branch z^t alone (predictions stay fused) [R]",
    )
    paf_gap: bool = Field(
        True, description="remove the image-text modality gap from the visual prototypes before "
        "fitting: c_v - mean_j c_v_j + mean_j t_j, so that fitted prototypes stay in the text "
        "prototypes' region of the joint space (chosen by the micro-world study) [R]",
    )
    prototype_scale: Literal["clip", "finessl"] = Field(
        "clip", description="prototype branch's logit scale: CLIP's, fixed (as the baselines' "
        "head=prototype), or FineSSL's head's, learnable from 1/0.07, a candidate if ULFine was "
        "built on FineSSL's trainer (docs/method.md) [R]",
    )
    paf_anchor: Literal["prototype", "text"] = Field(
        "prototype", description="PAF moves the current prototype toward C_v (compounding) or "
        "re-fits from the fixed text feature each step: c = (1-alpha) t + alpha c_v [R]",
    )


@METHODS.register("ulfine", options=ULFineOptions)
class ULFine(Method):
    """ULFine on any fine-tuning strategy: PAF-fitted prototype classifier + DLF with a linear branch."""

    uses_unlabeled = True
    opts: ULFineOptions

    @classmethod
    def text_need(cls, head: str) -> str | None:
        return ("ULFine's prototype branch starts from text prototypes; use a CLIP backbone, or "
                "method=fixmatch|fixmatch_la|acr head=linear")

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(backbone, ctx, options)
        k = ctx.num_classes
        text = F.normalize(ctx.text_prototypes.detach().float(), dim=-1)
        # initialised from ctx.text_prototypes exactly as the fixmatch baseline's head, so that
        # ULFine with every switch off reproduces it bit for bit
        finessl_scale = self.opts.prototype_scale == "finessl"
        self.prototype_head = PrototypeHead(
            ctx.text_prototypes, FINESSL_SCALE_INIT if finessl_scale else ctx.logit_scale,
            learnable=self.opts.learnable_prototypes, learnable_scale=finessl_scale,
        )
        self.linear_head = LinearHead(ctx.feature_dim, k) if self.opts.dlf else None
        self.register_buffer("text_anchor", text.clone())
        self.register_buffer("visual_prototypes", text.clone())
        self.register_buffer(
            "memory_label", torch.full((ctx.num_unlabeled,), paf.NO_PSEUDO_LABEL, dtype=torch.long)
        )
        self.register_buffer("memory_conf", torch.zeros(ctx.num_unlabeled))
        self.register_buffer("labeled_counts", ctx.labeled_counts.detach().float().clone())
        self.register_buffer("alpha", torch.zeros(k))
        # the memory's confident pseudo-label counts as of the last optimiser step: the prior
        # "labeled+pseudo" reads these, so every micro-batch of one step sees the same prior
        # (gradient accumulation and processes stay exact)
        self.register_buffer("prior_pseudo_counts", torch.zeros(k))
        # labeled per-class feature sums of the current optimiser step (summed over its
        # accumulation micro-batches); the visual-prototype EMA uses them after the step
        self.register_buffer("step_sums", torch.zeros_like(text), persistent=False)
        self.register_buffer("step_counts", torch.zeros(k), persistent=False)

    # -- prototypes ---------------------------------------------------------------------------
    @property
    def prototypes(self) -> torch.Tensor:
        """C_t, the prototype classifier's weights (parameter or buffer, not normalised)."""
        return self.prototype_head.prototypes

    def pseudo_label_counts(self) -> torch.Tensor:
        """(K,) number of unlabeled samples whose memory holds a confident pseudo-label of class k."""
        return paf.pseudo_label_distribution(
            self.memory_label, self.memory_conf, self.ctx.num_classes, "count"
        )

    def prior(self) -> torch.Tensor:
        """pi of DLF's logit adjustment: labeled prior, or labeled + the confident pseudo-labels in
        memory at the last optimiser step [R]."""
        pseudo = self.prior_pseudo_counts if self.opts.prior == "labeled+pseudo" else None
        return dlf.class_prior(self.labeled_counts, pseudo)

    # -- logits ---------------------------------------------------------------------------------
    def branch_logits(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of each branch for raw features: ``prototype`` (z^t), and with DLF ``linear``
        (z^l) and ``fused`` (z^f). ``decision`` is what pseudo-labels and predictions use."""
        out = {"prototype": self.prototype_head(features)}
        if self.linear_head is None:
            out["decision"] = out["prototype"]
            return out
        out["linear"] = self.linear_head(features)
        post_hoc = self.opts.tau_la if self.opts.loss_linear == "ce" else 0.0
        out["fused"] = dlf.fused_logits(
            out["linear"], out["prototype"], self.prior(), post_hoc, self.opts.w_dlf, self.opts.fusion
        )
        out["decision"] = out["fused"]
        return out

    def _branch_heads(self) -> list[tuple[str, nn.Module]]:
        heads: list[tuple[str, nn.Module]] = [("prototype", self.prototype_head)]
        if self.linear_head is not None:
            heads.insert(0, ("linear", self.linear_head))
        return heads

    # -- training -------------------------------------------------------------------------------
    def _train_logits(self, branch: str, logits: torch.Tensor) -> torch.Tensor:
        """A branch's logits as its loss sees them: as they are, or logit-adjusted (+tau_la log pi,
        Menon et al.) when ``loss_<branch>=la`` so that the branch learns balanced scores [R]."""
        kind = self.opts.loss_linear if branch == "linear" else self.opts.loss_prototype
        return logit_adjusted(logits, self.prior(), self.opts.tau_la) if kind == "la" else logits

    def _pseudo_label_source(self) -> str:
        """Which logits label the weak views: ``decision`` (z^f with DLF) or ``prototype`` [R]."""
        return "prototype" if self.opts.pseudo_labels == "prototype" else "decision"

    def training_step(self, batch: Batch) -> StepOutput:
        """L = sum over branches of [L_s + lambda_u L_u] + lambda_orth L_orth; pseudo-labels from z^f."""
        f_l, f_uw, f_us = self.ssl_features(batch)
        logs: dict[str, float | torch.Tensor] = {}
        heads = self._branch_heads()

        loss_s = f_l.new_zeros((), dtype=torch.float32)
        with torch.no_grad():
            decision_l = self.branch_logits(f_l.detach())["decision"]
            logs["acc_l"] = (decision_l.argmax(-1) == batch.y_l).float().mean()
        for name, head in heads:
            z = head(f_l)
            term = cross_entropy(self._train_logits(name, z), batch.y_l)
            loss_s = loss_s + term
            logs[f"loss_s_{name}"] = term.detach()
            logs[f"acc_labeled_{name}"] = (z.detach().argmax(-1) == batch.y_l).float().mean()
        loss = loss_s
        logs["loss_s"] = loss_s.detach()

        if self.opts.paf:
            with torch.no_grad():
                sums, counts = paf.class_feature_sums(f_l, batch.y_l, self.ctx.num_classes)
                self.step_sums.add_(sums.to(self.step_sums.dtype))
                self.step_counts.add_(counts.to(self.step_counts.dtype))

        pseudo: PseudoLabels | None = None
        if f_uw is not None and f_us is not None:
            with torch.no_grad():
                weak = self.branch_logits(f_uw)[self._pseudo_label_source()]
            label, confidence, mask = pseudo_label(weak, self.ssl.tau)
            loss_u = f_l.new_zeros((), dtype=torch.float32)
            for name, head in heads:
                term = masked_consistency(self._train_logits(name, head(f_us)), label, mask)
                loss_u = loss_u + term
                logs[f"loss_u_{name}"] = term.detach()
            loss = loss + self.ssl.lambda_u * loss_u
            logs["loss_u"] = loss_u.detach()
            if batch.idx_u is not None:
                with torch.no_grad():
                    # every process records every process's samples: PAF state stays identical
                    gather = self.ctx.collectives.all_gather
                    paf.update_pseudo_label_memory(
                        self.memory_label, self.memory_conf, gather(batch.idx_u),
                        gather(label), gather(confidence), gather(mask) > 0,
                    )
                idx = batch.idx_u
            else:
                idx = torch.arange(label.shape[0], device=label.device)
            pseudo = PseudoLabels(idx=idx, label=label, confidence=confidence, mask=mask.bool())

        if self.opts.orth:
            loss_orth = paf.orthogonality_loss(self.prototypes)
            loss = loss + self.opts.lambda_orth * loss_orth
            logs["loss_orth"] = loss_orth.detach()
        logs["alpha_mean"] = self.alpha.mean()
        return StepOutput(loss=loss, logs=logs, pseudo=pseudo)

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """PAF after each optimiser step: the visual-prototype EMA over the step's labeled batch
        (all its accumulation micro-batches, all processes), then the confidence-aware momentum
        fitting of C_t toward C_v and re-normalisation; first, the pseudo-label counts the prior reads."""
        if self.opts.prior == "labeled+pseudo":
            self.prior_pseudo_counts.copy_(self.pseudo_label_counts().to(self.prior_pseudo_counts))
        if not self.opts.paf:
            return
        reduce = self.ctx.collectives.all_reduce_sum
        sums, counts = reduce(self.step_sums), reduce(self.step_counts)
        self.visual_prototypes.copy_(
            paf.ema_visual_prototypes(self.visual_prototypes, sums, counts, self.opts.beta)
        )
        self.step_sums.zero_()
        self.step_counts.zero_()
        pu = paf.pseudo_label_distribution(
            self.memory_label, self.memory_conf, self.ctx.num_classes, self.opts.pu_stat
        )
        alpha = paf.fitting_momentum(pu, self.opts.mu_paf).to(self.alpha.device)
        self.alpha.copy_(alpha)
        c = self.prototypes
        start = self.text_anchor if self.opts.paf_anchor == "text" else c
        target = self.visual_prototypes
        if self.opts.paf_gap:
            target = paf.without_modality_gap(target, self.text_anchor)
        fitted = paf.momentum_fit(start, target, alpha).to(c.dtype)
        c.copy_(torch.where((alpha > 0).any(), fitted, c))  # no fitting (and no sync) before P_u exists

    # -- prediction and diagnostics -----------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Test logits: z^f with DLF, z^t without."""
        return self.branch_logits(self.features(images))["decision"]

    @torch.no_grad()
    def predict_branches(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every branch's logits (per-branch accuracy in evaluations)."""
        return self.branch_logits(self.features(images))

    @torch.no_grad()
    def diagnostics(self) -> dict[str, Any]:
        """alpha_k, the angle each prototype moved from its text anchor, and memory counts."""
        angles = paf.angles_degrees(self.prototypes, self.text_anchor)
        counts = self.pseudo_label_counts()
        n_u = max(int(self.memory_label.numel()), 1)
        return {
            "alpha": [round(float(a), 6) for a in self.alpha],
            "angle_deg": [round(float(a), 4) for a in angles],
            "angle_deg_mean": float(angles.mean()),
            "angle_deg_max": float(angles.max()),
            "visual_angle_deg": [
                round(float(a), 4)
                for a in paf.angles_degrees(self.visual_prototypes, self.text_anchor)
            ],
            "pseudo_label_counts": [int(c) for c in counts],
            "memory_coverage": float(counts.sum()) / n_u,
            "orth_loss": float(paf.orthogonality_loss(self.prototypes)),
            "prototype_logit_scale": float(self.prototype_head.logit_scale),
        }
