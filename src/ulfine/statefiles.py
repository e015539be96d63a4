"""Tensors and nested training states on disk without pickle: safetensors plus JSON.

Why: a resumable checkpoint holds optimiser, scheduler, grad-scaler and RNG states, which
``torch.save`` would pickle; a pickle runs code when loaded, and run folders travel between
people. :func:`save_tree` stores the same nested state as ``<stem>.json`` (structure, numbers,
strings; tuples, non-string keys and numpy arrays tagged) plus ``<stem>.safetensors`` (every
tensor), each written atomically and durably (:mod:`ulfine.safefiles`); :func:`load_tree` reads
it back exactly, and loading either file can only ever produce data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from .safefiles import atomic_write_bytes, atomic_write_text

_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__items__")


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written whole or not at all (:func:`~ulfine.safefiles.atomic_write_bytes`).

    Serialised in memory first, so a full disk raises an ``OSError`` with its errno (safetensors'
    own writer reports it as a SafetensorError without one), the temporary file cannot be
    redirected by a planted symlink, and the file gets mode 0666 less the umask (``save_file``
    makes it 0600, unreadable to colleagues sharing a run folder or a cache).
    """
    data = save({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, metadata=metadata)
    atomic_write_bytes(Path(path), data)


def _encode(x: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(x, torch.Tensor):
        key = f"t{id(x)}"  # one entry per tensor object (alive in ``obj``), however often it appears
        tensors.setdefault(key, x.detach().cpu().contiguous())
        return {"__tensor__": key}
    if isinstance(x, np.ndarray):
        return {"__ndarray__": x.tolist(), "dtype": str(x.dtype)}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in x]}
    if isinstance(x, list):
        return [_encode(v, tensors) for v in x]
    if isinstance(x, dict):
        if all(isinstance(k, str) and k not in _MARKERS for k in x):
            return {k: _encode(v, tensors) for k, v in x.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in x.items()]}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot store a {type(x).__name__} without pickle; use tensors, numbers, "
                    "strings, lists, tuples and dicts")


def _decode(x: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(x, list):
        return [_decode(v, tensors) for v in x]
    if not isinstance(x, dict):
        return x
    if "__tensor__" in x:
        return tensors[x["__tensor__"]]
    if "__ndarray__" in x:
        return np.asarray(x["__ndarray__"], dtype=np.dtype(x["dtype"]))
    if "__tuple__" in x:
        return tuple(_decode(v, tensors) for v in x["__tuple__"])
    if "__items__" in x:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in x["__items__"]}
    return {k: _decode(v, tensors) for k, v in x.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def save_tree(obj: Any, folder: Path, stem: str) -> list[Path]:
    """Store a nested state (dicts, lists, tuples, numbers, strings, tensors, numpy arrays) as
    ``stem.json`` + ``stem.safetensors`` in ``folder``, each written durably; returns the files.

    Why not ``torch.save``: a pickle runs code when loaded, and run folders travel.
    """
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(obj, tensors)
    folder = Path(folder)
    atomic_save_tensors(tensors, folder / f"{stem}.safetensors")
    atomic_write_text(folder / f"{stem}.json", json.dumps(encoded))
    return [folder / f"{stem}.json", folder / f"{stem}.safetensors"]


def load_tree(folder: Path, stem: str) -> Any:
    """Read what :func:`save_tree` wrote (tensors on the CPU); nothing is unpickled."""
    folder = Path(folder)
    tensors = load_file(str(folder / f"{stem}.safetensors"))
    return _decode(json.loads((folder / f"{stem}.json").read_text(encoding="utf-8")), tensors)


__all__ = ["atomic_save_tensors", "load_tree", "save_tree"]
