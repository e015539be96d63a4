"""Loading the peers' golden vectors (tests/golden/fixtures) and building ulfine methods on them.

The fixtures were computed by the peers' own code (scripts/golden/make_*.py); the tests only read
them, so CI needs no peer repository. Methods are built on the frozen-tower stand-in
(:class:`~ulfine.models.CachedFeatures`): the "images" of a batch are features, and a method's
head turns them into the same logits the peer's loop saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ulfine.config import load_config
from ulfine.methods import METHODS, MethodContext
from ulfine.methods.base import Method
from ulfine.models import CachedFeatures

FIXTURES = Path(__file__).parent / "fixtures"
TOL = {"atol": 1e-5, "rtol": 1e-5}


def load(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of fixture ``name``."""
    return load_file(str(FIXTURES / f"{name}.safetensors")), json.loads((FIXTURES / f"{name}.json").read_text())


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """A loss term or probability: equal to 1e-5 (in float64, whatever the peer's dtype)."""
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(), **TOL)


def same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """A label or mask: exactly equal (masks compared as booleans, labels as int64)."""
    if expected.dtype.is_floating_point or expected.dtype == torch.bool:
        assert torch.equal(actual.detach().bool(), expected.bool()), (actual, expected)
    else:
        assert torch.equal(actual.detach().long(), expected.long()), (actual, expected)


def mismatches(check: Callable[[], None]) -> bool:
    """True when ``check`` fails: the "can fail" tests assert a perturbed ulfine misses the peer."""
    try:
        check()
    except AssertionError:
        return True
    return False


def build(method: str, overrides: list[str], counts: torch.Tensor, feature_dim: int, *,
          prototypes: torch.Tensor | None = None, num_unlabeled: int = 64, steps_per_epoch: int = 1,
          from_labeled: torch.Tensor | None = None) -> Method:
    """ulfine's ``method`` on cached features, with the labeled class counts of the fixture."""
    cfg = load_config(None, [f"method={method}", *overrides])
    k = len(counts)
    ctx = MethodContext(k, [f"c{i}" for i in range(k)], counts, prototypes, float("nan"), num_unlabeled,
                        feature_dim, steps_per_epoch=steps_per_epoch, unlabeled_from_labeled=from_labeled)
    return METHODS.get(method).from_config(cfg, CachedFeatures(), ctx)


def identity_head(method: Method) -> Method:
    """Set a linear ``head`` to the identity, so features of dimension K are the logits."""
    with torch.no_grad():
        method.head.fc.weight.copy_(torch.eye(method.head.fc.weight.shape[0]))
        method.head.fc.bias.zero_()
    return method


__all__ = ["FIXTURES", "TOL", "build", "close", "identity_head", "load", "mismatches", "same"]
