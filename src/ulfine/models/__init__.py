"""CLIP backbones (open_clip), scratch backbones, fine-tuning strategies, text prototypes and heads.

Importing this package registers ulfine's tiny architecture ``ulfine-micro-vit`` into open_clip,
the scratch backbones (``wrn-28-2``, ``resnet50``) into ``ulfine.registry.BACKBONES`` and the
fine-tuning modes and PEFT modules into ``ulfine.registry``.
"""

from .archs import MICRO_ARCH, input_size, register_archs
from .backbone import CachedFeatures, CLIPBackbone, PreprocessConfig, build_backbone
from .finetune import (
    FINETUNE_MODES,
    FinetuneMode,
    ParamSummary,
    apply_finetune,
    count_parameters,
    register_finetune_mode,
)
from .heads import LinearHead, PrototypeHead, cosine_logits
from .peft import PEFT_MODULES
from .preprocess import DeviceNormalizer, normalizer_for
from .scratch import ScratchBackbone, ScratchSpec, register_scratch
from .text import text_prototypes
from .weights import MICRO_WEIGHTS, WeightSource, resolve_weights

register_archs()
register_scratch()

__all__ = [
    "CachedFeatures",
    "CLIPBackbone",
    "DeviceNormalizer",
    "FINETUNE_MODES",
    "FinetuneMode",
    "register_finetune_mode",
    "LinearHead",
    "cosine_logits",
    "MICRO_ARCH",
    "MICRO_WEIGHTS",
    "PEFT_MODULES",
    "ParamSummary",
    "PreprocessConfig",
    "PrototypeHead",
    "ScratchBackbone",
    "ScratchSpec",
    "WeightSource",
    "apply_finetune",
    "build_backbone",
    "count_parameters",
    "input_size",
    "normalizer_for",
    "resolve_weights",
    "text_prototypes",
]
