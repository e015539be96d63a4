"""Small helpers shared by the dataset sources: finding a dataset's folder, one-line errors,
listing image files."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ...errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


def find_dir(candidates: Iterable[Path], marker: str) -> Path | None:
    """The first candidate folder that holds ``marker`` (a file or folder name), else None."""
    for cand in candidates:
        if (cand / marker).exists():
            return cand
    return None


def missing(dataset: str, what: str, looked: Sequence[Path], how: str) -> DataError:
    """A one-line DataError: what is missing, where we looked, how to provide it."""
    where = ", ".join(str(p) for p in looked)
    return DataError(f"{dataset}: {what} not found (looked in {where}); {how}")


def is_hidden(path: Path, below: Path) -> bool:
    """Whether ``path`` or a folder between ``below`` and it starts with a dot.

    Why: ``.ipynb_checkpoints/``, ``.DS_Store`` and macOS's ``._photo.png`` (resource forks with an
    image suffix, not images) sit in real folders; read as data they become a class or stop the
    run. ``ulfine predict`` skips them the same way.
    """
    return any(part.startswith(".") for part in path.relative_to(below).parts)


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` in a stable (sorted) order, hidden files and folders left out."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern)
                  if p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p, folder) and p.is_file())


def torchvision_download(dataset: str, fn, root: Path) -> None:  # noqa: ANN001
    """Run a torchvision downloader, turning network failures into a one-line DataError."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        fn()
    except Exception as exc:  # network, checksum, disk: the user needs one clear line
        raise DataError(
            f"{dataset}: download into {root} failed ({type(exc).__name__}: {exc}); "
            "place the files there by hand (see docs/datasets.md)"
        ) from None
