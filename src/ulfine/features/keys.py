"""Cache keys for image features of frozen towers.

A cached feature file is only valid for one (architecture, weights, dataset, role + indices,
preprocessing) combination. The key is a small JSON-serialisable dict; its digest names the file
and the dict itself is stored next to it, so a stale or colliding entry can always be detected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..jsonable import jsonable
from ..models.fingerprint import weights_fingerprint

KEY_VERSION = 1  # bump when the stored layout or the extraction semantics change


def _blake(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def indices_hash(indices: np.ndarray | Sequence[int] | torch.Tensor) -> str:
    """Stable hash of an index list (order matters: row i of the cache is image indices[i])."""
    arr = np.ascontiguousarray(np.asarray(indices, dtype=np.int64))
    return _blake(arr.tobytes())


def _jsonable(value: Any) -> Any:
    """Cache keys as plain JSON data with sorted mappings (stable digests)."""
    return jsonable(value, sort_keys=True)


def preprocess_description(obj: Any) -> dict[str, Any] | None:
    """What a normaliser/preprocess does to pixels: size, mean, std, interpolation (if known)."""
    if obj is None:
        return None
    if isinstance(obj, Mapping) or hasattr(obj, "model_dump") or dataclasses.is_dataclass(obj):
        return _jsonable(obj)
    desc: dict[str, Any] = {"type": type(obj).__name__}
    for attr in ("size", "mean", "std", "interpolation", "antialias"):
        if hasattr(obj, attr):
            desc[attr] = _jsonable(getattr(obj, attr))
    for attr in ("preprocess", "cfg", "config"):  # wrappers that keep their config
        if hasattr(obj, attr) and len(desc) == 1:
            return preprocess_description(getattr(obj, attr))
    return desc


def feature_cache_key(
    backbone: nn.Module | None = None,
    *,
    arch: str,
    dataset: str,
    role: str,
    indices: np.ndarray | Sequence[int] | torch.Tensor | None = None,
    split_hash: str | None = None,
    weights: str | None = None,
    preprocess: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The identity of one cached feature matrix.

    ``weights`` is any string that identifies the weights; when omitted it is the
    :func:`weights_fingerprint` of ``backbone.visual`` (or of ``backbone``). ``indices`` (rows of
    the cached matrix, in order) and/or ``split_hash`` identify the subset of the dataset;
    ``preprocess`` (defaults to ``backbone.preprocess``) identifies the pixel pipeline.
    """
    if weights is None:
        if backbone is None:
            raise ValueError("feature_cache_key needs `weights` or a `backbone` to fingerprint")
        weights = weights_fingerprint(getattr(backbone, "visual", backbone))
    if preprocess is None and backbone is not None:
        preprocess = getattr(backbone, "preprocess", None)
    key: dict[str, Any] = {
        "version": KEY_VERSION,
        "arch": arch,
        "weights": weights,
        "dataset": dataset,
        "role": role,
        "split_hash": split_hash,
        "indices": None
        if indices is None
        else {"n": int(len(indices)), "hash": indices_hash(indices)},
        "preprocess": preprocess_description(preprocess),
    }
    if extra:
        key["extra"] = _jsonable(dict(extra))
    return _jsonable(key)


def key_digest(key: Mapping[str, Any]) -> str:
    """Short stable digest of a key (the cache file name)."""
    return _blake(json.dumps(_jsonable(key), sort_keys=True).encode())[:24]
