"""Tiny backbones for the model tests: ulfine-micro-vit with seeded random weights."""

from __future__ import annotations

import copy

import pytest
import torch
from modelfakes import IMAGE

from ulfine.config.schema import ModelConfig
from ulfine.models import build_backbone

_BUILT: dict[int, object] = {}


@pytest.fixture
def make_tiny():
    """Factory: a fresh tiny backbone whose random weights depend only on ``seed``.

    Each seed is built once through ``build_backbone`` per session; callers get deep copies
    (cheap), so tests stay independent while the 2-core machine is spared re-initialisation.
    """

    def make(seed: int = 0):
        if seed not in _BUILT:
            torch.manual_seed(seed)
            _BUILT[seed] = build_backbone(ModelConfig(arch="ulfine-micro-vit", pretrained="none"))
        return copy.deepcopy(_BUILT[seed])

    return make


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(123)
    return torch.randn(3, 3, IMAGE, IMAGE, generator=g)
