"""STL-10 from its binary files (stl10_binary/), with the 100k unlabeled split memory-mapped.

Images are stored column-major as (N, 3, 96, 96) = (N, C, W, H) bytes, exactly as torchvision
reads them; labels are bytes 1..10. The unlabeled file (2.7 GB) is never loaded into RAM: it is a
:class:`StoredArray` that reads one image at a time and reopens in each data-loader worker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from ..base import DATASETS, UNKNOWN_LABEL, DatasetSpec, ImageSet, SourceData, StoredArray
from ._common import find_dir, missing, torchvision_download

STL10_CLASSES = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
]
STL10_DIR = "stl10_binary"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
LAYOUT = (0, 3, 2, 1)  # stored (N, C, W, H) -> (N, H, W, C)
HOW = ("run with data.download=true on a connected machine, or extract stl10_binary.tar.gz "
       "there (see docs/datasets.md)")


def _num_images(path: Path, expected: int | None) -> int:
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise DataError(f"stl10: {path} is truncated or corrupt ({size} bytes is not a whole number "
                        f"of {IMAGE_BYTES}-byte images); re-extract stl10_binary.tar.gz")
    n = size // IMAGE_BYTES
    if expected is not None and n != expected:
        raise DataError(f"stl10: {path} holds {n} images but its labels file has {expected}; "
                        "one of them is truncated, re-extract stl10_binary.tar.gz")
    return n


def _labels(path: Path) -> np.ndarray:
    raw = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if raw.size == 0 or raw.min() < 1 or raw.max() > 10:
        raise DataError(f"stl10: {path} does not hold labels 1..10 (empty or corrupt); "
                        "re-extract stl10_binary.tar.gz")
    return raw - 1


def read_images(path: Path, expected: int | None = None) -> np.ndarray:
    """A labeled STL-10 image file as uint8 (N, 96, 96, 3) in RAM (train/test are small)."""
    n = _num_images(path, expected)
    raw = np.fromfile(path, dtype=np.uint8).reshape(n, 3, SIDE, SIDE)
    return np.ascontiguousarray(raw.transpose(LAYOUT))


def _class_names(base: Path) -> list[str]:
    names_file = base / "class_names.txt"
    if names_file.is_file():
        names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
        if len(names) == 10:
            return names
    return list(STL10_CLASSES)


def read_stl10(cfg: DataConfig) -> SourceData:
    """STL-10: train (500/class) pool, test (800/class), natural unlabeled set (100k, label -1)."""
    root = Path(cfg.root)
    candidates = [root / STL10_DIR, root]
    base = find_dir(candidates, "train_X.bin")
    if base is None and cfg.download:
        from torchvision.datasets import STL10

        torchvision_download("stl10", lambda: STL10(str(root), split="train+unlabeled",
                                                    download=True), root)
        base = find_dir(candidates, "train_X.bin")
    if base is None:
        raise missing("stl10", f"folder {STL10_DIR}/ with train_X.bin", candidates, HOW)
    for name in ("train_y.bin", "test_X.bin", "test_y.bin"):
        if not (base / name).is_file():
            raise missing("stl10", f"file {name}", [base], HOW)
    y_train, y_test = _labels(base / "train_y.bin"), _labels(base / "test_y.bin")
    train = ImageSet(read_images(base / "train_X.bin", len(y_train)), y_train)
    test = ImageSet(read_images(base / "test_X.bin", len(y_test)), y_test)
    unlabeled = None
    unl_path = base / "unlabeled_X.bin"
    if unl_path.is_file():
        n = _num_images(unl_path, None)
        images = StoredArray(unl_path, (n, 3, SIDE, SIDE), LAYOUT)
        unlabeled = ImageSet(images, np.full(n, UNKNOWN_LABEL, dtype=np.int64))  # type: ignore[arg-type]
    elif cfg.num_unlabeled_head is None:
        raise missing("stl10", "file unlabeled_X.bin (the natural unlabeled set)", [base], HOW)
    return SourceData("stl10", _class_names(base), train, test, unlabeled, SIDE)


DATASETS.register("stl10")(DatasetSpec(
    name="stl10", num_classes=10, class_names=list(STL10_CLASSES), native_size=SIDE,
    has_natural_unlabeled=True,
    description="STL-10: 5k train / 8k test / 100k unlabeled (unknown distribution), 96 px",
    reader=read_stl10, train_counts=[500] * 10,
))
