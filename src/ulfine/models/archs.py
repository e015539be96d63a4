"""Architectures that ulfine adds to open_clip's registry (data, not code: JSON in ``configs/``)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import open_clip

CONFIG_DIR = Path(__file__).parent / "configs"
MICRO_ARCH = "ulfine-micro-vit"


@cache
def register_archs() -> list[str]:
    """Add ``configs/*.json`` to open_clip once, so ``create_model('ulfine-micro-vit')`` works."""
    open_clip.add_model_config(CONFIG_DIR)
    return [p.stem for p in CONFIG_DIR.glob("*.json") if p.stem in open_clip.list_models()]


@cache
def _arch_preprocess() -> dict[str, dict[str, Any]]:
    data = json.loads((CONFIG_DIR / "preprocess.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def arch_preprocess(arch: str) -> dict[str, Any]:
    """Preprocessing of an ulfine-registered arch ({} for open_clip's own archs)."""
    return dict(_arch_preprocess().get(arch, {}))


def normalise_arch(arch: str) -> str:
    """open_clip spells ``ViT-B/16`` as ``ViT-B-16``; accept both."""
    if arch.startswith(("hf-hub:", "local-dir:")):
        return arch
    return arch.replace("/", "-")
