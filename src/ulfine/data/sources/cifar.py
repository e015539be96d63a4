"""CIFAR-10 and CIFAR-100 from their python pickle batches.

We read the pickles ourselves (not torchvision's CIFAR classes) so that a truncated or corrupt
batch is one clear DataError instead of an MD5 failure or an unpickling traceback; torchvision is
used only for ``data.download=true``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from ..base import DATASETS, DatasetSpec, ImageSet, SourceData
from ._common import find_dir, missing, torchvision_download

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]

# the 100 fine labels, in label-index order (alphabetical, as in cifar-100-python/meta)
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
]

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def read_batch(path: Path, label_key: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch as (images uint8 (N,32,32,3), labels int64), or a one-line DataError."""
    how = "delete it and run again with data.download=true on a connected machine, or re-copy it"
    if not path.is_file():
        raise missing(dataset, f"batch {path.name}", [path.parent],
                      "run with data.download=true on a connected machine, or place the "
                      "extracted python version there (see docs/datasets.md)")
    try:
        with path.open("rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
    except Exception as exc:  # EOFError, UnpicklingError, ValueError ... on a damaged file
        raise DataError(f"{dataset}: batch {path} is truncated or corrupt "
                        f"({type(exc).__name__}); {how}") from None
    if not isinstance(entry, dict):
        raise DataError(f"{dataset}: batch {path} is not a CIFAR pickle (no dict inside); {how}")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise DataError(f"{dataset}: batch {path} lacks the keys 'data'/'{label_key}'; {how}")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(labels):
        raise DataError(f"{dataset}: batch {path} has data of shape {data.shape} for "
                        f"{len(labels)} labels (expected N x 3072); {how}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _locate(cfg: DataConfig, folder: str, dataset: str, download_fn) -> Path:  # noqa: ANN001
    root = Path(cfg.root)
    candidates = [root / folder, root]
    found = find_dir(candidates, "batches.meta" if folder == CIFAR10_DIR else "meta")
    if found is None and cfg.download:
        torchvision_download(dataset, lambda: download_fn(str(root)), root)
        found = find_dir(candidates, "batches.meta" if folder == CIFAR10_DIR else "meta")
    if found is None:
        raise missing(dataset, f"folder {folder}/", candidates,
                      "run with data.download=true on a connected machine, or extract the "
                      f"python version of {dataset} there (see docs/datasets.md)")
    return found


def read_cifar10(cfg: DataConfig) -> SourceData:
    """CIFAR-10: data_batch_1..5 (train pool, 5000/class) and test_batch (1000/class)."""
    from torchvision.datasets import CIFAR10

    base = _locate(cfg, CIFAR10_DIR, "cifar10", lambda r: CIFAR10(r, train=True, download=True))
    parts = [read_batch(base / name, "labels", "cifar10") for name in CIFAR10_TRAIN]
    train = ImageSet(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = ImageSet(*read_batch(base / "test_batch", "labels", "cifar10"))
    return SourceData("cifar10", list(CIFAR10_CLASSES), train, test, None, 32)


def read_cifar100(cfg: DataConfig) -> SourceData:
    """CIFAR-100: ``train`` (500/class) and ``test`` (100/class), fine labels."""
    from torchvision.datasets import CIFAR100

    base = _locate(cfg, CIFAR100_DIR, "cifar100", lambda r: CIFAR100(r, train=True, download=True))
    train = ImageSet(*read_batch(base / "train", "fine_labels", "cifar100"))
    test = ImageSet(*read_batch(base / "test", "fine_labels", "cifar100"))
    return SourceData("cifar100", list(CIFAR100_CLASSES), train, test, None, 32)


DATASETS.register("cifar10")(DatasetSpec(
    name="cifar10", num_classes=10, class_names=list(CIFAR10_CLASSES), native_size=32,
    has_natural_unlabeled=False,
    description="CIFAR-10: 50k train / 10k test, 32 px, 10 classes (python pickle batches)",
    reader=read_cifar10, train_counts=[5000] * 10,
))
DATASETS.register("cifar100")(DatasetSpec(
    name="cifar100", num_classes=100, class_names=list(CIFAR100_CLASSES), native_size=32,
    has_natural_unlabeled=False,
    description="CIFAR-100: 50k train / 10k test, 32 px, 100 fine classes (python pickles)",
    reader=read_cifar100, train_counts=[500] * 100,
))
