"""Finished tiny runs shared by the reliability tests (trained once per session, then read or
exported): two LP runs on cached features that differ only in their seed, so an export of one
over the other's model folder would show any mixing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from tiny import tiny_config

from ulfine.engine import train

LP = ["method=supervised", "finetune=lp", "data.augment=false", "head=linear"]


@pytest.fixture(scope="session")
def lp_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two finished LP runs (seeds 0 and 1) with a model folder's worth of different weights."""
    out = tmp_path_factory.mktemp("lp_runs")
    return (train(tiny_config(out / "a", *LP, "seed=0")), train(tiny_config(out / "b", *LP, "seed=1")))
