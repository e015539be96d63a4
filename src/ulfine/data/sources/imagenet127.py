"""ImageNet-127 (ImageNet-1k grouped into 127 WordNet super-classes), downsampled.

It cannot be downloaded: ``scripts/prepare_imagenet127.py`` builds it from an ImageNet-1k
train/val tree and the 127-class mapping (docs/datasets.md, step by step). Prepared layout::

    ROOT/imagenet127_<S>/classes.txt          one class name per line (index = line number,
                                              head first: sorted by train count, descending)
    ROOT/imagenet127_<S>/train.txt, val.txt   "relative/path.png<TAB>label index" per image
    ROOT/imagenet127_<S>/train/<class>/*.png  S x S RGB PNGs (S = 32 or 64)
    ROOT/imagenet127_<S>/val/<class>/*.png    the balanced test set (50 per class by default)

``data.image_size`` picks S (default 32). Without the list files the class folders are scanned.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from ..base import DATASETS, DatasetSpec, ImageSet, SourceData
from ._common import list_images, missing

NUM_CLASSES = 127
DEFAULT_SIZE = 32
HOW = ("ImageNet cannot be downloaded automatically: prepare it with "
       "scripts/prepare_imagenet127.py (docs/datasets.md, 'ImageNet-127')")


def class_dir_name(name: str) -> str:
    """Folder name for a class name (no separators or spaces)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip()) or "_"


def dataset_dir(root: Path, size: int) -> Path:
    """Where the prepared tree of side ``size`` lives under ``data.root``."""
    return Path(root) / f"imagenet127_{size}"


class PathList(Sequence):
    """A lazy list of ``base / relative`` paths (1.2M Path objects would cost ~250 MB)."""

    def __init__(self, base: Path, relative: list[str]) -> None:
        self.base, self.relative = Path(base), relative

    def __len__(self) -> int:
        return len(self.relative)

    def __getitem__(self, index):  # noqa: ANN001, ANN204
        if isinstance(index, slice):
            return [self.base / r for r in self.relative[index]]
        return self.base / self.relative[index]


def _read_list(base: Path, listing: Path, num_classes: int) -> ImageSet | None:
    rel, labels = [], []
    for lineno, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit("\t", 1) if "\t" in line else line.rsplit(" ", 1)
        if len(parts) != 2 or not parts[1].strip().isdigit() or int(parts[1]) >= num_classes:
            raise DataError(f"imagenet127: {listing} line {lineno} is not 'path<TAB>label' with a "
                            f"label below {num_classes}; re-run scripts/prepare_imagenet127.py")
        rel.append(parts[0])
        labels.append(int(parts[1]))
    return ImageSet(PathList(base, rel), np.asarray(labels, dtype=np.int64))


def _scan(base: Path, role: str, names: list[str]) -> ImageSet:
    paths: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(names):
        files = list_images(base / role / class_dir_name(name))
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise missing("imagenet127", f"{role} images", [base / role], HOW)
    return ImageSet(paths, np.asarray(labels, dtype=np.int64))


def read_imagenet127(cfg: DataConfig) -> SourceData:
    """The prepared ImageNet-127 tree at ``data.image_size`` (32 or 64) px."""
    size = cfg.image_size or DEFAULT_SIZE
    base = dataset_dir(Path(cfg.root), size)
    classes_file = base / "classes.txt"
    if not classes_file.is_file():
        raise missing("imagenet127", f"prepared {size}px tree (classes.txt)", [base], HOW)
    names = [ln.strip() for ln in classes_file.read_text().splitlines() if ln.strip()]
    if len(names) != NUM_CLASSES:
        raise DataError(f"imagenet127: {classes_file} lists {len(names)} classes, expected "
                        f"{NUM_CLASSES}; re-run scripts/prepare_imagenet127.py")
    sets = {}
    for role in ("train", "val"):
        listing = base / f"{role}.txt"
        sets[role] = _read_list(base, listing, len(names)) if listing.is_file() else _scan(base, role, names)
        sets[role].image_size = size
    return SourceData("imagenet127", names, sets["train"], sets["val"], None, size)


DATASETS.register("imagenet127")(DatasetSpec(
    name="imagenet127", num_classes=NUM_CLASSES, class_names=None, native_size=DEFAULT_SIZE,
    has_natural_unlabeled=False,
    description="ImageNet-127: ImageNet-1k in 127 super-classes, naturally long-tailed "
    "(ratio ~286), 32/64 px; prepare with scripts/prepare_imagenet127.py",
    reader=read_imagenet127,
))
