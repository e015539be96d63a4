"""Files ulfine writes and reads: durable, atomic, private while written, and never executable.

Why one module at the bottom of the house: run folders, model folders and caches are shared
between people and machines, and runs are killed at any instant. So every file ulfine writes is
written to a temporary name, flushed and fsynced, then renamed over the target
(:func:`atomic_write_bytes`): a reader sees the old file or the new one, never half of one. The
temporary name is unpredictable and created exclusively (:func:`create_temporary`), so a symlink
planted in a shared folder cannot redirect the write; files get mode 0666 less the umask (0644
usually), so colleagues can read them. A folder written as a whole (an exported model) is built
next to its target and swapped in (:func:`replace_folder`). A pickle found where ulfine reads
(:func:`refuse_pickles`) is refused with one line instead of loaded. Tensors and nested states are
written by :mod:`ulfine.statefiles` on top of this. Standard library only, so the config layer
(which writes ``config.yaml`` atomically) stays light.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
import sys
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
#: how ulfine names its temporary files: ``.<target name>.tmp-<pid>-<8 hex digits>``
TEMP_INFIX = ".tmp-"
_TEMP_NAME = re.compile(r"^\..+\.tmp-\d+(-[0-9a-f]{8})?$")  # older versions wrote ``.<name>.tmp-<pid>``
#: every temporary file is created new (never opened if something is already there, a symlink
#: included), so a link planted under its name cannot redirect the write
_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
#: files are created with this mode less the umask (0644 under the usual umask 022), so colleagues
#: can read a shared run folder, model folder or cache, as with any file a shell writes
FILE_MODE = 0o666
_ATTEMPTS = 100


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


def temporary_name(path: Path) -> Path:
    """A fresh temporary name next to ``path``: unpredictable, so nobody can plant a file there first."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_INFIX}{os.getpid()}-{secrets.token_hex(4)}")


def create_temporary(path: Path) -> tuple[int, Path]:
    """Create a new, empty temporary file next to ``path``; its descriptor (open for writing) and name.

    Why not ``open(tmp, "wb")``: in a folder others can write to, a symlink planted at a
    predictable temporary name would make that write land in the file it points to. Why not
    ``tempfile.mkstemp``: it creates the file 0600, and shared folders must stay readable.
    """
    for _ in range(_ATTEMPTS):
        tmp = temporary_name(path)
        try:
            return os.open(tmp, _EXCLUSIVE, FILE_MODE), tmp
        except FileExistsError:
            continue  # someone (or something) holds that name: draw another
    raise FileExistsError(f"could not create a temporary file next to {path} ({_ATTEMPTS} names taken)")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` so that a kill at any instant leaves the old content or the new, whole.

    The temporary file is created exclusively (:func:`create_temporary`); the final rename replaces
    whatever entry ``path`` is (a symlink there is replaced, its target is never written).
    """
    path = Path(path)
    fd, tmp = create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as fh:
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


def _umask() -> int:
    """The process umask, read without changing it where the system says it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (a brief window other threads may see)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------- whole folders
#: staging and set-aside folders of :func:`replace_folder`: ``.<name>.ulfine-new-<pid>-<hex>``,
#: ``.<name>.ulfine-old-<pid>-<hex>``
_SIBLING = re.compile(r"^\.(?P<name>.+)\.ulfine-(?P<kind>new|old)-(?P<pid>\d+)-[0-9a-f]{8}$")
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def staging_folder(target: Path) -> Path:
    """A new private folder next to ``target`` to build its replacement in.

    Private (0700) while it is written, so nobody can plant a file or a link in it; next to the
    target, so the final rename stays on one file system.
    """
    target = Path(target)
    name = f".{target.name}.ulfine-new-{os.getpid()}-{secrets.token_hex(4)}"
    folder = target.parent / name
    folder.mkdir(mode=0o700)
    return folder


def publish_files(folder: Path) -> None:
    """Give a staged folder and its files the modes a shell would have given them (umask
    applied), so colleagues can read the result (``mkdtemp``-like folders are 0700)."""
    folder = Path(folder)
    umask = _umask()
    for path in folder.rglob("*"):
        if _is_regular(path):
            path.chmod(FILE_MODE & ~umask)
        elif path.is_dir() and not path.is_symlink():
            path.chmod(0o777 & ~umask)
    folder.chmod(0o777 & ~umask)


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` at ``target`` (made by :func:`staging_folder`), replacing
    the old one, so that a kill at any instant leaves the old folder or the new one, whole.

    Where the system can (Linux ``renameat2(RENAME_EXCHANGE)``), the two folders swap names in
    one step and ``target`` is never missing. Elsewhere the old folder is renamed aside first;
    a kill between the two renames leaves it aside, and :func:`recover_folder` puts it back.
    """
    new, target = Path(new), Path(target)
    if target.exists() and _exchange(new, target):
        fsync_dir(target.parent)
        shutil.rmtree(new)  # now the old folder
        return
    aside = None
    if target.exists():
        aside = target.parent / f".{target.name}.ulfine-old-{os.getpid()}-{secrets.token_hex(4)}"
        _rename(target, aside)
    try:
        _rename(new, target)
    except BaseException:
        if aside is not None:
            _rename(aside, target)
        raise
    if aside is not None:
        shutil.rmtree(aside)


def recover_folder(target: Path) -> list[Path]:
    """Tidy what a kill during :func:`replace_folder` left next to ``target``; the paths removed.

    A set-aside old folder goes back to ``target`` when ``target`` is missing (the kill fell
    between the two renames), else it is removed; staging folders of processes that are gone are
    removed (live ones are another export at work, and left alone).
    """
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    for entry in sorted(target.parent.iterdir()):
        match = _SIBLING.match(entry.name)
        if not match or match["name"] != target.name or entry.is_symlink() or not entry.is_dir():
            continue
        if match["kind"] == "old" and not target.exists():
            _rename(entry, target)
        elif match["kind"] == "old" or not _process_alive(int(match["pid"])):
            shutil.rmtree(entry)
            removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process on this machine (ours counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _rename(src: Path, dst: Path) -> None:
    """One durable rename (a function of its own so tests can stop between two)."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names of ``a`` and ``b`` atomically; False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


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


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is named as ulfine names its temporary files (never read by anyone)."""
    return bool(_TEMP_NAME.match(Path(path).name))


def remove_temporaries(folder: Path) -> int:
    """Delete what killed :func:`atomic_write_bytes` calls left in ``folder``; returns how many.

    Only regular files named as ulfine names its temporaries are removed (a symlink or a folder
    under such a name is not ulfine's). Call it only on a folder that is an ulfine run or model
    folder, and only where no other process writes: their writers are gone.
    """
    stale = [p for p in Path(folder).iterdir() if is_temporary(p) and _is_regular(p)]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _is_regular(path: Path) -> bool:
    """A regular file, not a symlink to one."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _read_files(folder: Path) -> Iterator[Path]:
    """The files of ``folder`` and of its checkpoint folders, but not unfinished temporary ones."""
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and entry.name.startswith("checkpoint"):
            yield from (p for p in sorted(entry.iterdir()) if p.is_file() and not is_temporary(p))
        elif entry.is_file() and not is_temporary(entry):
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
    "DATA_SUFFIXES", "FILE_MODE", "PICKLE_SUFFIXES", "TEMP_INFIX", "atomic_write_bytes", "atomic_write_text",
    "create_temporary", "fsync_dir", "is_temporary", "looks_like_pickle", "refuse_pickles", "remove_temporaries",
    "publish_files", "recover_folder", "replace_folder", "staging_folder", "temporary_name",
]
