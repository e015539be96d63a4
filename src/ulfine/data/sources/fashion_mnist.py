"""Fashion-MNIST from its IDX files (gzip or plain), grayscale repeated to 3 channels.

Looked up in ``data.root/fashion_mnist``, ``data.root/FashionMNIST/raw`` (torchvision's download
folder), ``data.root`` itself and Debian's ``/usr/share/datasets/fashion-mnist`` (package
``dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from ..base import DATASETS, DatasetSpec, ImageSet, SourceData
from ._common import missing, torchvision_download

FASHION_MNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
    "ankle_boot",
]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
HOW = ("run with data.download=true on a connected machine, `apt-get install "
       "dataset-fashion-mnist` on Debian, or place the four IDX files there")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzip or plain) as an ndarray, or a one-line DataError."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:  # type: ignore[operator]
            raw = fh.read()
    except (OSError, EOFError) as exc:  # gzip raises on a cut stream
        raise DataError(f"fashion_mnist: {path} is truncated or corrupt ({exc}); re-copy it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"fashion_mnist: {path} is not an unsigned-byte IDX file (bad magic); re-copy it")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"fashion_mnist: {path} is truncated (header cut); re-copy it")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise DataError(f"fashion_mnist: {path} is truncated or corrupt ({len(raw) - header} data "
                        f"bytes for shape {shape}, expected {expected}); re-copy it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _candidates(root: Path) -> list[Path]:
    return [root / "fashion_mnist", root / "FashionMNIST" / "raw", root, DEBIAN_DIR]


def read_fashion_mnist(cfg: DataConfig) -> SourceData:
    """Fashion-MNIST: 60k train (6000/class) pool, 10k test; 28 px, 3-channel uint8."""
    root = Path(cfg.root)
    folders = _candidates(root)
    if _find(folders, FILES["train_images"]) is None and cfg.download:
        from torchvision.datasets import FashionMNIST

        torchvision_download("fashion_mnist", lambda: FashionMNIST(str(root), download=True), root)
    paths = {}
    for key, stem in FILES.items():
        found = _find(folders, stem)
        if found is None:
            raise missing("fashion_mnist", f"file {stem}[.gz]", folders, HOW)
        paths[key] = found

    def images(key: str, labels: np.ndarray) -> np.ndarray:
        arr = read_idx(paths[key])
        if arr.ndim != 3 or arr.shape[0] != len(labels):
            raise DataError(f"fashion_mnist: {paths[key]} has shape {arr.shape} for {len(labels)} "
                            "labels; the image and label files do not match")
        return np.repeat(arr[..., None], 3, axis=-1)

    y_train = read_idx(paths["train_labels"]).astype(np.int64)
    y_test = read_idx(paths["test_labels"]).astype(np.int64)
    train = ImageSet(images("train_images", y_train), y_train)
    test = ImageSet(images("test_images", y_test), y_test)
    return SourceData("fashion_mnist", list(FASHION_MNIST_CLASSES), train, test, None, 28)


DATASETS.register("fashion_mnist")(DatasetSpec(
    name="fashion_mnist", num_classes=10, class_names=list(FASHION_MNIST_CLASSES), native_size=28,
    has_natural_unlabeled=False,
    description="Fashion-MNIST: 60k train / 10k test, 28 px grayscale (as RGB), IDX files",
    reader=read_fashion_mnist, train_counts=[6000] * 10,
))
