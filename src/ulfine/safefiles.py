"""Files ulfine writes and reads: durable, atomic, and never executable.

Why one module at the bottom of the house: run folders, model folders and caches are shared
between people and machines, and runs are killed at any instant. So every file ulfine writes is
written to a temporary name, flushed and fsynced, then renamed over the target
(:func:`atomic_write_bytes`): a reader sees the old file or the new one, never half of one; and
a pickle found where ulfine reads (:func:`refuse_pickles`) is refused with one line instead of
loaded. Tensors and nested states are written by :mod:`ulfine.statefiles` on top of this.
Standard library only, so the config layer (which writes ``config.yaml`` atomically) stays light.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UnsafeFileError

#: suffixes of pickle-based formats (torch.save, pickle, joblib, Lightning checkpoints)
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib"})
#: formats ulfine writes that hold data only (their content is not sniffed)
DATA_SUFFIXES = frozenset({".safetensors", ".json", ".jsonl", ".yaml", ".yml", ".log", ".txt", ".csv",
                           ".md", ".png", ".svg"})


# ----------------------------------------------------------------------------- durable writes
def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` so that a kill at any instant leaves the old content or the new, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------- refusing pickles
def looks_like_pickle(path: Path) -> bool:
    """Whether ``path`` is a pickle or a ``torch.save`` zip by its suffix or its first bytes.

    Data formats ulfine writes (:data:`DATA_SUFFIXES`) are not sniffed: a safetensors header
    length may start with the pickle marker byte.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return True
    if suffix in DATA_SUFFIXES:
        return False
    with open(path, "rb") as fh:
        head = fh.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith(".pkl") for n in zf.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def _is_temporary(path: Path) -> bool:
    """A file :func:`atomic_write_bytes` was writing when it was killed (never read by anyone)."""
    return path.name.startswith(".") and ".tmp-" in path.name


def remove_temporaries(folder: Path) -> int:
    """Delete what killed :func:`atomic_write_bytes` calls left in ``folder`` (their writers are
    gone: call it only where no other process writes); returns how many."""
    stale = [p for p in Path(folder).glob(".*.tmp-*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _read_files(folder: Path) -> Iterator[Path]:
    """The files of ``folder`` and of its checkpoint folders, but not unfinished temporary ones."""
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and entry.name.startswith("checkpoint"):
            yield from (p for p in sorted(entry.iterdir()) if p.is_file() and not _is_temporary(p))
        elif entry.is_file() and not _is_temporary(entry):
            yield entry


def refuse_pickles(folder: Path, what: str = "run folder") -> None:
    """Raise :class:`~ulfine.errors.UnsafeFileError` (one line) if ``folder`` holds a pickle.

    ulfine writes none, so a pickle there was put by someone or something else, and loading it
    could run any code. Call this before reading a run or model folder (resume, eval, predict).
    """
    for path in _read_files(Path(folder)):
        if looks_like_pickle(path):
            raise UnsafeFileError(
                f"{path} is a pickle file, which ulfine never writes and never loads (unpickling can "
                f"run any code); this {what} was written by something else or altered: use a {what} "
                "written by this version of ulfine, or delete that file if you trust the rest")


__all__ = [
    "DATA_SUFFIXES", "PICKLE_SUFFIXES", "atomic_write_bytes", "atomic_write_text", "fsync_dir",
    "looks_like_pickle", "refuse_pickles", "remove_temporaries",
]
