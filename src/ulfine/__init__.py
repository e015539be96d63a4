"""ulfine: foundation-model-assisted long-tailed semi-supervised learning (ULFine and baselines).

``ulfine.load(RUN_DIR or MODEL_DIR)`` returns a classifier (``.predict(images)``,
``.class_names``); it lives in :mod:`ulfine.apps.model_io` and is imported only when first used
(PEP 562), so ``import ulfine`` stays light and this package, the bottom layer, imports nothing
of a higher one at import time.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public names resolved on first use: name -> module that defines it
_LAZY = {"load": "ulfine.apps.model_io"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ulfine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", "load"]
