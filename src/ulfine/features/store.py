"""On-disk storage of feature matrices: one ``.npy`` file plus a JSON sidecar holding its key.

Writes are atomic (a temporary file in the same folder, then ``os.replace``), so an interrupted
run or two concurrent runs never leave a half-written matrix that a later run would trust.
Reads are memory-mapped: reusing a 50k x 512 cache costs no copy and no RAM up front.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..safefiles import atomic_write_text, create_temporary

log = logging.getLogger(__name__)


def entry_paths(cache_dir: Path, digest: str) -> tuple[Path, Path]:
    """(matrix file, sidecar file) of a cache entry."""
    return cache_dir / f"{digest}.npy", cache_dir / f"{digest}.json"


def _atomic_target(path: Path) -> Path:
    """A new temporary file next to ``path``, created exclusively with the umask's mode
    (:func:`ulfine.safefiles.create_temporary`: ``mkstemp`` would make a shared cache 0600)."""
    fd, tmp = create_temporary(path)
    os.close(fd)
    return tmp


def open_writer(path: Path, shape: tuple[int, int], dtype: str = "float32") -> tuple[np.memmap, Path]:
    """A writable memory-mapped ``.npy`` at a temporary path next to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_target(path)
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=shape)
    return arr, tmp


def commit(arr: np.memmap, tmp: Path, path: Path, sidecar: Path, meta: Mapping[str, Any]) -> None:
    """Flush the matrix, move it into place, then write the sidecar (the entry's commit mark)."""
    arr.flush()
    del arr
    os.replace(tmp, path)
    atomic_write_text(sidecar, json.dumps(meta, indent=2, sort_keys=True))


def discard(tmp: Path) -> None:
    """Remove a temporary matrix after a failed extraction."""
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass


def read_entry(path: Path, sidecar: Path, key: Mapping[str, Any], rows: int) -> np.ndarray | None:
    """The memory-mapped matrix of a valid entry, or None (missing, stale, truncated, corrupt).

    ``mmap_mode="c"`` (copy-on-write) keeps the file read-only on disk while the array stays
    writable, so ``torch.from_numpy`` shares it without a copy or a warning.
    """
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        log.warning("feature cache: unreadable sidecar %s; recomputing", sidecar)
        return None
    if meta.get("key") != key:
        log.warning("feature cache: %s holds a different key (hash collision?); recomputing", path)
        return None
    try:
        arr = np.load(path, mmap_mode="c")
    except (OSError, ValueError):
        log.warning("feature cache: corrupt matrix %s; recomputing", path)
        return None
    if arr.ndim != 2 or arr.shape[0] != rows or list(arr.shape) != meta.get("shape"):
        log.warning("feature cache: %s has shape %s, expected %d rows; recomputing", path, arr.shape, rows)
        return None
    return arr
