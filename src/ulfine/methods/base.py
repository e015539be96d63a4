"""The method contract: a method defines its heads, its losses and its prediction; nothing else.

The engine (``ulfine.engine``) owns the loop, devices, mixed precision, optimiser, checkpoints,
logging and evaluation. A method receives batches already on the device, already converted to
normalised float images at the backbone's input size, and returns a :class:`StepOutput`.
Ground-truth labels of unlabeled images never reach a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..registry import Registry

if TYPE_CHECKING:
    from ..config import Config


@dataclass
class SSLBatch:
    """One training step's inputs on the device. Unlabeled tensors are None for supervised runs.

    ``idx_u`` are indices into the unlabeled set (for per-sample memories such as PAF's P_u);
    there is deliberately no field for unlabeled ground truth.
    """

    x_l: torch.Tensor
    y_l: torch.Tensor
    u_w: torch.Tensor | None = None
    u_s: torch.Tensor | None = None
    idx_u: torch.Tensor | None = None


@dataclass
class PseudoLabels:
    """The pseudo-labels a step used: per unlabeled sample, label, confidence and mask."""

    idx: torch.Tensor
    label: torch.Tensor
    confidence: torch.Tensor
    mask: torch.Tensor


@dataclass
class StepOutput:
    """A training step's loss (to backpropagate) and scalars to log."""

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)
    pseudo: PseudoLabels | None = None


@dataclass
class MethodContext:
    """What a method may know about the task: never unlabeled ground truth."""

    num_classes: int
    class_names: list[str]
    labeled_counts: torch.Tensor  # (K,) labeled images per class
    text_prototypes: torch.Tensor  # (K, D) L2-normalised text features
    logit_scale: float  # the backbone's CLIP logit scale (100 for OpenAI weights)
    num_unlabeled: int  # size of the unlabeled set (for per-sample memories)
    feature_dim: int

    @property
    def labeled_prior(self) -> torch.Tensor:
        """pi: class prior of the labeled set."""
        counts = self.labeled_counts.float()
        return counts / counts.sum()


class Method(nn.Module):
    """Base of every method. Subclasses set ``name``/``uses_unlabeled`` and override the hooks."""

    name: ClassVar[str] = "base"
    uses_unlabeled: ClassVar[bool] = True  # needs unlabeled batches
    trains: ClassVar[bool] = True  # False for zero-shot: no optimiser, no loop

    def __init__(self, cfg: "Config", backbone: nn.Module, ctx: MethodContext) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone  # CLIPBackbone with its fine-tuning strategy applied
        self.ctx = ctx

    # -- features ------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Image features in CLIP's joint space (not normalised).

        A 2-D input is taken as features already computed by a frozen tower (the feature cache
        used by LP without augmentation and by zero-shot) and returned as is.
        """
        if images.ndim == 2:
            return images
        return self.backbone.encode_image(images)

    def ssl_features(
        self, batch: SSLBatch
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Features of (labeled, weak unlabeled, strong unlabeled).

        Weak views are pseudo-label targets, so they run under ``torch.no_grad`` (no activations
        kept); labeled and strong views share one forward pass.
        """
        if batch.u_w is None:
            return self.features(batch.x_l), None, None
        with torch.no_grad():
            f_uw = self.features(batch.u_w)
        f = self.features(torch.cat([batch.x_l, batch.u_s]))
        n = batch.x_l.shape[0]
        return f[:n], f_uw, f[n:]

    # -- hooks the engine calls ------------------------------------------------------------
    def training_step(self, batch: SSLBatch) -> StepOutput:
        """Losses for one step."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits used for test prediction and for pseudo-label diagnostics."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_branches(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every prediction branch; ``decision`` is what :meth:`predict` returns.

        Methods with several branches (ULFine's linear, prototype and fused logits) override this
        so evaluations report each branch's accuracy, not only the decision's.
        """
        return {"decision": self.predict(images)}

    def after_optimizer_step(self) -> None:
        """Called after every optimiser step (e.g. PAF's momentum fitting)."""

    def diagnostics(self) -> dict[str, Any]:
        """Method-specific values logged at each evaluation (JSON-serialisable)."""
        return {}


METHODS: Registry[type[Method]] = Registry("method")
