"""The method contract: a method defines its heads, its losses and its prediction; nothing else.

The engine (``ulfine.engine``) owns the loop, devices, mixed precision, optimiser, checkpoints,
logging and evaluation. A method receives a :class:`~ulfine.batch.Batch` already on the device
(normalised float images at the backbone's input size, or features of a frozen tower, which its
backbone stand-in passes through) and returns a :class:`StepOutput`. Ground-truth labels of
unlabeled images never reach a method.

Gradient accumulation and several processes: the engine may call :meth:`Method.training_step`
several times per optimiser step (one call per micro-batch, each with its share of the global
batch, on each process) and calls :meth:`Method.after_optimizer_step` once per optimiser step on
every process. A method whose state depends on the whole step's batch (ULFine's PAF) must
therefore accumulate per micro-batch, combine across processes with ``ctx.collectives`` and
update in ``after_optimizer_step``; then 1 or N processes, with or without accumulation, hold
the same state. DDP only averages gradients: buffers are the method's to keep identical.

Backbones without a text tower (the scratch networks) give ``ctx.text_prototypes = None``; a
method that needs text says so in :meth:`Method.text_need`, and the config refuses the pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from pydantic import BaseModel
from torch import nn

from ..batch import IMAGE_FIELDS, Batch
from ..registry import METHODS as _METHODS
from ..registry import Registry

if TYPE_CHECKING:
    from ..config import Config, SSLConfig

@dataclass
class PseudoLabels:
    """The pseudo-labels a step used: per unlabeled sample, label, confidence and mask."""

    idx: torch.Tensor
    label: torch.Tensor
    confidence: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def of_batch(cls, batch: Batch, label: torch.Tensor, confidence: torch.Tensor,
                 mask: torch.Tensor) -> "PseudoLabels":
        """The pseudo-labels of ``batch``'s unlabeled samples, indexed by ``batch.idx_u`` (0..N-1
        when the batch carries no indices)."""
        idx = batch.idx_u if batch.idx_u is not None else torch.arange(len(label), device=label.device)
        return cls(idx=idx, label=label, confidence=confidence, mask=mask)


@dataclass
class StepOutput:
    """A training step's loss (to backpropagate), scalars to log, and the pseudo-labels it used
    (the engine logs their mask rate and mean confidence)."""

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)
    pseudo: PseudoLabels | None = None


class Collectives(Protocol):
    """Cross-process reductions a method may need (the engine supplies them)."""

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over processes (a new tensor)."""
        ...

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenation of every process's equal-sized ``t``, in rank order."""
        ...


class LocalCollectives:
    """One process: every reduction is the identity."""

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t.clone()

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        return t


@dataclass
class MethodContext:
    """What a method may know about the task: never unlabeled ground truth."""

    num_classes: int
    class_names: list[str]
    labeled_counts: torch.Tensor  # (K,) labeled images per class
    text_prototypes: torch.Tensor | None  # (K, D) L2-normalised text features; None: no text tower
    logit_scale: float  # the backbone's CLIP logit scale (100 for OpenAI weights; nan: none)
    num_unlabeled: int  # size of the unlabeled set (for per-sample memories)
    feature_dim: int
    collectives: Collectives = field(default_factory=LocalCollectives)
    steps_per_epoch: int = 1  # optimiser steps per epoch of the run (per-epoch method updates)
    #: (N_u,) bool: unlabeled samples that are copies of labeled images (data.labeled_in_unlabeled);
    #: split membership, known by construction, not a label
    unlabeled_from_labeled: torch.Tensor | None = None

    @classmethod
    def from_facts(cls, backbone: nn.Module, class_names: list[str], labeled_counts: Any,
                   text_prototypes: torch.Tensor | None, num_unlabeled: int, collectives: Collectives,
                   steps_per_epoch: int = 1, unlabeled_from_labeled: torch.Tensor | None = None) -> "MethodContext":
        """The one way to build a context: from the backbone (logit scale, feature width) and the
        task's facts, whether they come from a split (training) or a model folder (prediction)."""
        return cls(
            num_classes=len(class_names), class_names=list(class_names),
            labeled_counts=torch.as_tensor(labeled_counts, dtype=torch.long), text_prototypes=text_prototypes,
            logit_scale=float(backbone.logit_scale), num_unlabeled=int(num_unlabeled),
            feature_dim=int(backbone.embed_dim), collectives=collectives, steps_per_epoch=steps_per_epoch,
            unlabeled_from_labeled=unlabeled_from_labeled,
        )

    @property
    def labeled_prior(self) -> torch.Tensor:
        """pi: class prior of the labeled set."""
        counts = self.labeled_counts.float()
        return counts / counts.sum()


@dataclass(frozen=True)
class MethodOptions:
    """The options a method receives: the SSL options, the baselines' classifier kind and its own
    registered options section (None for a method that declares none)."""

    ssl: "SSLConfig"
    head: str = "prototype"
    own: BaseModel | None = None

    @classmethod
    def from_config(cls, cfg: "Config") -> "MethodOptions":
        """The options of ``cfg.method`` out of a whole run config."""
        return cls(cfg.ssl, cfg.head, cfg.options_for(cfg.method))


class Method(nn.Module):
    """Base of every method. Subclasses set ``uses_unlabeled``/``trains``, register themselves
    (``@METHODS.register(name, options=TheirOptions)``, which sets ``name``) and override the hooks.
    """

    name: ClassVar[str] = "base"
    uses_unlabeled: ClassVar[bool] = True  # needs unlabeled batches
    trains: ClassVar[bool] = True  # False for zero-shot: no optimiser, no loop
    strong_views: ClassVar[int] = 1  # strong views per unlabeled image (ACR: 2, in u_s and u_s2)
    #: what ``head=prototype`` initialises from text prototypes (``the classifier``); set, the
    #: default :meth:`text_need` asks for text with that head. None: no text needed
    prototype_initialises: ClassVar[str | None] = None

    def __init__(self, backbone: nn.Module, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__()
        self.backbone = backbone  # CLIPBackbone, or the frozen-tower stand-in over cached features
        self.ctx = ctx
        self.options = options
        #: the method's own options, typed (its registered options class; None when it has none).
        #: Subclasses annotate ``opts: TheirOptions`` and read every option from here.
        self.opts: Any = options.own if options.own is not None else self.default_options()

    @classmethod
    def default_options(cls) -> BaseModel | None:
        """The registered options class with its defaults (a method built outside a config)."""
        options_class = _METHODS.options().get(cls.name)
        return options_class() if options_class is not None else None

    @classmethod
    def from_config(cls, cfg: "Config", backbone: nn.Module, ctx: MethodContext) -> "Method":
        """Build the method with the options ``cfg`` holds for it."""
        return cls(backbone, ctx, MethodOptions.from_config(cfg))

    @classmethod
    def text_need(cls, head: str) -> str | None:
        """Why this method (with classifier ``head``) needs text prototypes, ending with the fix;
        None when it needs none. The config refuses backbones without a text tower for it.

        By default: text for ``head=prototype`` when :attr:`prototype_initialises` is set."""
        if head == "prototype" and cls.prototype_initialises is not None:
            return f"head=prototype initialises {cls.prototype_initialises} from text prototypes; use head=linear"
        return None

    @property
    def ssl(self) -> "SSLConfig":
        return self.options.ssl

    def take_pending(self, pending: torch.Tensor) -> torch.Tensor:
        """The sum over processes of a per-step accumulator (a new tensor); ``pending`` starts
        again from zero. For :meth:`after_optimizer_step`."""
        total = self.ctx.collectives.all_reduce_sum(pending)
        pending.zero_()
        return total

    def epoch_of(self, step: int) -> int:
        """0-based epoch of optimiser step ``step`` (``ctx.steps_per_epoch`` steps an epoch)."""
        return step // max(1, self.ctx.steps_per_epoch)

    # -- features ------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Image features (CLIP's joint space, not normalised; a scratch network's pooled ones)."""
        return self.backbone.encode_image(images)

    def view_features(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Features of every image field of ``batch`` (``x_l``, ``u_w``, ``u_s``, ``u_s2``), by name.

        Weak views are pseudo-label targets, so they run under ``torch.no_grad`` (no activations
        kept) and the other views share one forward pass. A backbone with batch statistics
        (BatchNorm: ``backbone.batch_statistics``) instead sees all views in one pass, as in
        FixMatch's and ACR's code, so its statistics are the whole step's; the weak features are
        then detached.
        """
        names = [n for n in IMAGE_FIELDS if getattr(batch, n) is not None]
        joint = getattr(self.backbone, "batch_statistics", False)
        out: dict[str, torch.Tensor] = {}
        if "u_w" in names and not joint:
            with torch.no_grad():
                out["u_w"] = self.features(batch.u_w)
            names.remove("u_w")
        parts = [getattr(batch, n) for n in names]
        feats = self.features(torch.cat(parts) if len(parts) > 1 else parts[0])
        for name, f in zip(names, feats.split([len(p) for p in parts])):
            out[name] = f.detach() if name == "u_w" else f
        return out

    def ssl_features(
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Features of (labeled, weak unlabeled, strong unlabeled); see :meth:`view_features`."""
        f = self.view_features(batch)
        return f["x_l"], f.get("u_w"), f.get("u_s")

    # -- hooks the engine calls ------------------------------------------------------------
    def training_step(self, batch: Batch) -> StepOutput:
        """Losses for one (micro-)batch."""
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

    def after_optimizer_step(self, step: int) -> None:
        """Called once per optimiser step on every process, after the update (e.g. PAF's
        momentum fitting); ``step`` is the 0-based index of the step just taken (``Batch.step``).
        Not called for a step skipped as non-finite (``train.on_nonfinite=skip``)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called on every process when epoch ``epoch`` (1-based count of finished epochs) ends,
        after that step's :meth:`after_optimizer_step` and before the scheduled evaluation and
        checkpoint (per-epoch statistics: ACR's tau, FineSSL's learning-status counter)."""

    def diagnostics(self) -> dict[str, Any]:
        """Method-specific values logged at each evaluation (JSON-serialisable)."""
        return {}


#: the method registry (``ulfine.registry.METHODS``, typed for methods)
METHODS: Registry[type[Method]] = _METHODS
