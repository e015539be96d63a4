"""One way to turn what a run produces (configs, tensors, numpy values, dataclasses, paths)
into plain JSON data: metrics files, cache keys and model cards all go through :func:`jsonable`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def jsonable(value: Any, sort_keys: bool = False) -> Any:
    """Plain JSON data for ``value``; non-finite floats become None (JSON has no NaN), unknown
    objects their ``str``. ``sort_keys`` orders mappings (stable digests of cache keys)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "model_dump"):  # pydantic
        return jsonable(value.model_dump(mode="json"), sort_keys)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), sort_keys)
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: str(kv[0])) if sort_keys else value.items()
        return {str(k): jsonable(v, sort_keys) for k, v in items}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return jsonable(value.tolist() if isinstance(value, np.ndarray) else value.detach().cpu().tolist(),
                        sort_keys)
    if isinstance(value, np.generic):
        return jsonable(value.item(), sort_keys)
    if isinstance(value, (list, tuple)):
        return [jsonable(v, sort_keys) for v in value]
    return str(value)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested mappings as dotted keys (the spelling of
    ``key=value`` overrides), other values as they are. Config diffs, trackers and tables use it."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


__all__ = ["flatten", "jsonable"]
