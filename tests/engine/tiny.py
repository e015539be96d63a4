"""A tiny, fast run configuration shared by the engine tests (micro ViT, synthetic10, CPU), and
the checks that make equivalence tests able to fail: training really moved the weights, and the
unlabeled loss really took part."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ulfine.config import Config, load_config


def tiny_overrides(out: Path, *overrides: str) -> list[str]:
    """The ``key=value`` list of :func:`tiny_config` (for the command line: ``ulfine train PRESET ...``)."""
    return [
        "model.arch=ulfine-micro-vit", "model.pretrained=none", "model.text_cache_dir=null",
        "data.dataset=synthetic10", "data.num_labeled_head=20", "data.num_unlabeled_head=20",
        "data.imbalance_labeled=10", "data.imbalance_unlabeled=10", "data.num_workers=0",
        "train.batch_size=4", "train.epochs=1", "train.steps_per_epoch=2", "train.progress=false",
        "train.device=cpu", "eval.batch_size=100", "eval.pseudo_label_max=16",
        f"cache.dir={out / 'feature-cache'}", f"output_dir={out / 'run'}", *overrides,
    ]


def tiny_config(out: Path, *overrides: str) -> Config:
    """2 optimiser steps of batch 4 on synthetic10 with a random micro CLIP, no progress bar."""
    return load_config(None, tiny_overrides(out, *overrides))


def initial_weights(cfg: Config) -> dict[str, torch.Tensor]:
    """What ``weights.safetensors`` would hold before the first step: the run assembled, untrained."""
    from ulfine.engine import assemble_run
    from ulfine.engine.checkpoint import weight_state
    from ulfine.engine.runtime import make_runtime

    parts = assemble_run(cfg, make_runtime("cpu", "fp32"))
    return weight_state(parts.method)


def moved(run_dir: Path, init: dict[str, torch.Tensor], name: str = "weights.safetensors") -> float:
    """Largest change of any trained tensor between ``init`` and the run's final weights."""
    final = load_file(str(Path(run_dir) / name))
    assert final.keys() == init.keys()
    return max(float((final[k].float() - init[k].float()).abs().max()) for k in final)


def train_scalars(run_dir: Path) -> dict[str, list[float]]:
    """The run's ``train/*`` TensorBoard scalars, by tag (e.g. ``loss_u``, ``mask_rate``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tb"))
    acc.Reload()
    return {tag.split("/", 1)[1]: [e.value for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"] if tag.startswith("train/")}


def assert_unlabeled_loss_active(run_dir: Path) -> None:
    """The unlabeled loss took part: confident pseudo-labels and a positive loss on them."""
    s = train_scalars(run_dir)
    assert s["mask_rate"] and min(s["mask_rate"]) > 0.0, s.get("mask_rate")
    assert s["loss_u"] and min(s["loss_u"]) > 0.0, s.get("loss_u")
