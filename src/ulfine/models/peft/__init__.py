"""Lightweight fine-tuning modules, registered by name in ``PEFT_MODULES``."""

from . import adaptformer, bitfit, lora, vpt  # noqa: F401  (registration)
from .base import PEFT_MODULES, PEFTOptions, peft_options, vit_blocks

__all__ = ["PEFT_MODULES", "PEFTOptions", "peft_options", "vit_blocks"]
