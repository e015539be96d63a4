"""Finished tiny runs shared by the apps tests (trained once per session, then only read).

- ``ulfine_run``: ULFine on LFT/AdaptFormer over the shipped micro CLIP, 2 epochs of 2 steps with
  the unlabeled loss active (ssl.tau=0.3), so PAF, DLF and the adapters really change;
- ``feature_run``: supervised LP on cached features (the ``CachedFeatures`` stand-in), random
  weights (``model.pretrained=none``), 2 steps;
- ``zeroshot_run``: zero-shot, evaluate only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from tiny import tiny_config

from ulfine.engine import train

ULFINE = ["method=ulfine", "finetune=lft", "model.pretrained=micro", "ssl.tau=0.3", "train.epochs=2",
          "adaptformer.bottleneck=8"]
FEATURES = ["method=supervised", "finetune=lp", "data.augment=false", "head=linear"]
ZEROSHOT = ["method=zeroshot", "finetune=lp", "model.pretrained=micro"]


@pytest.fixture(scope="session")
def ulfine_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tiny_config(tmp_path_factory.mktemp("ulfine"), *ULFINE))


@pytest.fixture(scope="session")
def feature_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tiny_config(tmp_path_factory.mktemp("features"), *FEATURES))


@pytest.fixture(scope="session")
def zeroshot_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tiny_config(tmp_path_factory.mktemp("zeroshot"), *ZEROSHOT))
