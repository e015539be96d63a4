"""The CLIP backbone: an open_clip model behind a small interface the methods rely on.

:func:`build_backbone` is the one factory: a ``model.arch`` registered in
:data:`ulfine.registry.BACKBONES` (the scratch networks of :mod:`ulfine.models.scratch`) is built
by its registry entry, any other arch by open_clip.

Only the image tower is a registered submodule: ``.to()``, ``state_dict()``, optimisers and DDP
see the image tower (plus whatever fine-tuning injects), while the frozen text tower rides along
un-registered and is moved to the image tower's device the first time text is encoded.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import open_clip
import torch
from safetensors import SafetensorError
from torch import nn

from ..config.schema import ModelConfig
from ..errors import ConfigError, WeightsError
from ..registry import BACKBONES
from .archs import arch_preprocess, normalise_arch, register_archs
from .attention_layout import contiguous_attention_inputs
from .preprocess import PreprocessConfig
from .weights import WeightSource, resolve_weights

if TYPE_CHECKING:
    from .scratch import ScratchBackbone

log = logging.getLogger(__name__)


class CLIPBackbone(nn.Module):
    """Image tower (trainable per ``apply_finetune``) plus a frozen, lazily placed text tower.

    Attributes: ``visual`` (the open_clip image tower), ``clip`` (the whole open_clip model),
    ``preprocess``, ``logit_scale`` (float, exp of the model's), ``embed_dim``, ``tokenizer``,
    ``arch`` and ``weights_id`` (stable name of the weights, for caches).
    """

    has_text = True  # text prototypes can be computed (scratch backbones have none)
    batch_statistics = False  # LayerNorm towers: no statistics shared across a batch

    def __init__(
        self,
        clip: nn.Module,
        *,
        arch: str,
        weights_id: str,
        tokenizer: Callable[..., torch.Tensor],
        preprocess: PreprocessConfig,
        embed_dim: int,
    ) -> None:
        super().__init__()
        clip.requires_grad_(False)  # nothing trains until apply_finetune says so
        self.visual = clip.visual
        contiguous_attention_inputs(self.visual)  # the fast attention-input layout (issue 26)
        object.__setattr__(self, "_clip", clip)  # deliberately not a submodule (see module doc)
        self.arch = arch
        self.weights_id = weights_id
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.embed_dim = int(embed_dim)
        scale = clip.logit_scale.detach()
        self.logit_scale = float("nan") if scale.is_meta else float(scale.float().exp().reshape(-1)[0])
        self.frozen_features = False  # set by finetune=lp: features under no_grad, tower in eval
        self.finetune: str | None = None

    @property
    def clip(self) -> nn.Module:
        """The full open_clip model (its ``visual`` is this backbone's ``visual``)."""
        return self._clip

    def train(self, mode: bool = True) -> "CLIPBackbone":
        super().train(mode)
        if self.frozen_features:
            self.visual.eval()
        return self

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalised images -> (B,D) un-normalised joint-space features."""
        if self.frozen_features:
            # no_grad rather than inference_mode: a head trained on these features must backprop.
            with torch.no_grad():
                return self.visual(images)
        return self.visual(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)

    def _device(self) -> torch.device:
        return next(self.visual.parameters()).device

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """(T,) strings -> (T,D) L2-normalised float32 text features (frozen text tower)."""
        clip, device = self._clip, self._device()
        clip.to(device)  # lazy: a no-op once the text tower sits with the image tower
        for name, child in clip.named_children():
            if name != "visual":
                child.eval()
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(device)
            out.append(clip.encode_text(tokens, normalize=True).float())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim, device=device)


#: what a weights file that is not one raises inside open_clip's loader (``/etc/passwd`` read by
#: ``torch.load(weights_only=True)`` raises IndexError; a cut-short safetensors, SafetensorError)
_WEIGHTS_FILE_ERRORS = (IndexError, EOFError, pickle.UnpicklingError, SafetensorError)


def _create(source: WeightSource, arch: str, cache_dir: Path | None, device: str | torch.device) -> nn.Module:
    """open_clip.create_model with the tag's preprocessing and activation applied."""
    force_pp = {**arch_preprocess(arch), **source.tag_cfg} or None
    kwargs: dict[str, Any] = {
        "pretrained": source.path,
        "device": device,
        "force_preprocess_cfg": force_pp,
        "cache_dir": str(cache_dir) if cache_dir else None,
        # open_clip 3.x only *warns* when an OpenAI tag (trained with QuickGELU) is loaded into
        # a GELU config; honouring the tag keeps the published features.
        "force_quick_gelu": bool(source.tag_cfg.get("quick_gelu", False)),
    }
    try:
        if str(device) == "meta":
            with torch.device("meta"):
                return open_clip.create_model(source.model_name, **kwargs)
        return open_clip.create_model(source.model_name, **kwargs)
    except (RuntimeError, ValueError, KeyError, OSError, *_WEIGHTS_FILE_ERRORS) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:300]
        raise WeightsError(
            f"could not build model.arch={arch} from {source.describe()}: {first} "
            "(does model.arch match the architecture the weights were trained with?)"
        ) from e


def build_backbone(cfg: ModelConfig, device: str | torch.device = "cpu") -> "CLIPBackbone | ScratchBackbone":
    """A registered scratch arch (``wrn-28-2``, ``resnet50``, random weights, no text tower) or any
    open_clip model: built-in arch + tag/file/'none', ``local-dir:`` or ``hf-hub:``.

    E.g. ``build_backbone(ModelConfig(arch='ViT-B-16'))``; ``device='meta'`` builds the
    structure without memory (parameter counting of big models).
    """
    if cfg.arch in BACKBONES:
        return BACKBONES.get(cfg.arch).create(cfg, device)
    register_archs()
    arch = normalise_arch(cfg.arch)
    source = resolve_weights(arch, cfg.pretrained, cfg.cache_dir)
    clip = _create(source, arch, cfg.cache_dir, device)
    if not hasattr(clip, "visual") or not hasattr(clip, "encode_text"):
        raise ConfigError(f"model.arch={arch} is not a CLIP-style model (no image/text towers)")
    preprocess = PreprocessConfig.from_open_clip(clip.visual.preprocess_cfg)
    embed_dim = _embed_dim(clip)
    log.info("backbone %s (%s), preprocess %s", arch, source.describe(), preprocess)
    return CLIPBackbone(
        clip,
        arch=arch,
        weights_id=source.identity,
        tokenizer=open_clip.get_tokenizer(source.model_name if source.kind in ("folder", "hf-hub") else arch),
        preprocess=preprocess,
        embed_dim=embed_dim,
    )


def _embed_dim(clip: nn.Module) -> int:
    out = getattr(clip.visual, "output_dim", None)
    if out:
        return int(out)
    proj = getattr(clip, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    return int(proj.out_features)


class CachedFeatures(nn.Module):
    """The frozen-tower stand-in of feature mode: ``encode_image`` returns its input, which is
    the (B, D) features the real, frozen tower computed once (``ulfine.features``).

    Why explicit: a method then never guesses from a tensor's rank whether it got images or
    features; the engine decides, once, by which backbone it gives the method.
    """

    def __init__(self, backbone: CLIPBackbone | None = None) -> None:
        super().__init__()
        # the facts of the tower that computed the features (names for caches and model cards)
        for attr in ("arch", "weights_id", "preprocess", "embed_dim", "logit_scale", "finetune"):
            setattr(self, attr, getattr(backbone, attr, None))

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features
