"""Optimiser over the trainable parameters only, and the per-step learning-rate schedule
(:func:`ulfine.schedule.lr_factor`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config, OptimConfig
from ..errors import ConfigError
from ..schedule import lr_factor
from .ema import TrainableEMA

NO_DECAY_KEYWORDS = ("prompt", "token", "pos_embed", "positional_embedding", "norm", "ln_")


def decays(name: str, param: nn.Parameter) -> bool:
    """Weight decay applies to weight matrices only: not to biases, norms, prompt tokens or
    positional embeddings (1-D tensors and names matching NO_DECAY_KEYWORDS)."""
    if param.ndim <= 1 or name.endswith(".bias"):
        return False
    leaf = name.lower()
    return not any(key in leaf for key in NO_DECAY_KEYWORDS)


def trainable_named_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every parameter that requires grad, in a stable order."""
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov if ``cfg.nesterov``) or AdamW over ``module``'s trainable parameters."""
    named = trainable_named_parameters(module)
    decay = [p for n, p in named if decays(n, p)]
    no_decay = [p for n, p in named if not decays(n, p)]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimiser-step schedule (stepped once after every optimiser step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_steps, cfg.schedule)
    )


@dataclass
class Optimization:
    """What only a method that trains has: optimiser, schedule, EMA and its trainable count."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: TrainableEMA | None
    n_trainable: int


def build_optimization(method: nn.Module, cfg: Config, total_steps: int) -> Optimization:
    """Optimiser, schedule over ``total_steps`` and EMA over the method's trainable parameters."""
    n_trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    if n_trainable == 0:
        raise ConfigError(f"method {cfg.method!r} with finetune={cfg.finetune} has nothing to train")
    optimizer = build_optimizer(method, cfg.optim)
    return Optimization(optimizer, build_scheduler(optimizer, cfg.optim, total_steps),
                        TrainableEMA(method, cfg.train.ema) if cfg.train.ema else None, n_trainable)


__all__ = ["Optimization", "build_optimization", "build_optimizer", "build_scheduler", "decays", "lr_factor",
           "trainable_named_parameters"]
