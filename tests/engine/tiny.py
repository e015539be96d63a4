"""A tiny, fast run configuration shared by the engine tests (micro ViT, synthetic10, CPU)."""

from __future__ import annotations

from pathlib import Path

from ulfine.config import Config, load_config


def tiny_config(out: Path, *overrides: str) -> Config:
    """2 optimiser steps of batch 4 on synthetic10 with a random micro CLIP, no progress bar."""
    base = [
        "model.arch=ulfine-micro-vit", "model.pretrained=none", "model.text_cache_dir=null",
        "data.dataset=synthetic10", "data.num_labeled_head=20", "data.num_unlabeled_head=20",
        "data.imbalance_labeled=10", "data.imbalance_unlabeled=10", "data.num_workers=0",
        "train.batch_size=4", "train.epochs=1", "train.steps_per_epoch=2", "train.progress=false",
        "train.device=cpu", "eval.batch_size=100", "eval.pseudo_label_max=16",
        f"cache.dir={out / 'feature-cache'}", f"output_dir={out / 'run'}",
    ]
    return load_config(None, base + list(overrides))
