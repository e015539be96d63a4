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


#: CLIP's input size, for an architecture whose config cannot be read without its weights
DEFAULT_INPUT_SIZE = 224


def input_size(arch: str) -> int:
    """Square input size of ``arch``'s image tower, read from its config without building it.

    Why: a dataset without a native size (a user's folder) is best stored at the size the tower
    sees, so images are resized once. ``hf-hub:``/``local-dir:`` archs read their folder's
    ``open_clip_config.json`` when it is local; otherwise :data:`DEFAULT_INPUT_SIZE`.
    """
    register_archs()
    arch = normalise_arch(arch)
    if arch.startswith("local-dir:"):
        path = Path(arch[len("local-dir:"):]).expanduser() / "open_clip_config.json"
        cfg = json.loads(path.read_text()).get("model_cfg", {}) if path.is_file() else {}
    else:
        cfg = open_clip.get_model_config(arch) or {}
    size = (cfg.get("vision_cfg") or {}).get("image_size", DEFAULT_INPUT_SIZE)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def normalise_arch(arch: str) -> str:
    """open_clip spells ``ViT-B/16`` as ``ViT-B-16``; accept both."""
    if arch.startswith(("hf-hub:", "local-dir:")):
        return arch
    return arch.replace("/", "-")
