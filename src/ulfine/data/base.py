"""The contract every dataset source fulfils, and the dataset registry.

A source reads one dataset in its real on-disk format and returns a :class:`SourceData`: class
names, a train pool (labels known; the split engine draws labeled, unlabeled and validation
images from it), a balanced test set, and optionally a natural unlabeled set (STL-10's 100k
split, a user's ``unlabeled/`` folder) whose labels are -1 when unknown.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..registry import DATASETS as _DATASETS
from ..registry import Registry
from .decode import decode_image

if TYPE_CHECKING:

    from ..config import DataConfig

UNKNOWN_LABEL = -1


class StoredArray:
    """A uint8 image array kept on disk (np.memmap) and read one image at a time.

    Why: STL-10's 100k unlabeled images are 2.7 GB; they must not be loaded into RAM, and a
    data-loader worker must reopen the file rather than receive a pickled copy. ``layout``
    maps the stored axes to (N, H, W, C): e.g. STL-10 stores (N, C, W, H), so ``(0, 3, 2, 1)``.
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, ...],
        layout: tuple[int, ...] = (0, 1, 2, 3),
        offset: int = 0,
    ) -> None:
        self.path = Path(path)
        self.stored_shape = tuple(int(s) for s in shape)
        self.layout = tuple(layout)
        self.offset = int(offset)
        self._map: np.ndarray | None = None

    def _array(self) -> np.ndarray:
        if self._map is None:
            raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset,
                            shape=self.stored_shape)
            self._map = raw.transpose(self.layout)
        return self._map

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.stored_shape[a] for a in self.layout)

    def __len__(self) -> int:
        return self.stored_shape[0]

    def __getitem__(self, index: object) -> np.ndarray:
        return np.asarray(self._array()[index])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_map"] = None  # workers reopen the file instead of copying it
        return state

    def fingerprint(self) -> str:
        """The stored file's identity (path, size, modification time, layout): reading 2.7 GB to
        hash it would cost more than the features it guards."""
        return _file_identity([self.path], f"{self.stored_shape}{self.layout}{self.offset}")


def _file_identity(paths: Sequence[Path], salt: str = "") -> str:
    """sha256 of each file's path, size and modification time (a changed file changes it)."""
    h = hashlib.sha256(salt.encode())
    for path in paths:
        st = os.stat(path)
        h.update(f"{os.fspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass
class ImageSet:
    """Images of one role and their labels.

    ``images`` is either a uint8 array (N, H, W, 3) RGB at native resolution (CIFAR, STL-10,
    Fashion-MNIST converted to 3 channels, the micro world), a :class:`StoredArray` of that
    shape kept on disk (STL-10's unlabeled split), or a sequence of image file paths
    decoded lazily (image folders, ImageNet-127). ``labels`` holds ground truth where known and
    UNKNOWN_LABEL (-1) otherwise. For unlabeled roles the labels are for diagnostics only: the
    training loader never returns them.
    """

    images: np.ndarray | Sequence[Path]
    labels: np.ndarray
    image_size: int | None = None  # resize file images to this square size on load
    max_pixels: int | None = None  # decode bound of file images (data.max_image_pixels; None: the default)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 (H, W, 3) RGB (files: any mode, see :mod:`ulfine.data.decode`)."""
        if isinstance(self.images, (np.ndarray, StoredArray)):
            return np.ascontiguousarray(self.images[index])
        return decode_image(self.images[index], self.image_size, self.max_pixels)

    def fingerprint(self) -> str:
        """What the pixels are: a hash of the bytes of an in-memory array, else of the files'
        identity. Why: caches keyed by dataset name and indices alone would serve stale features
        after the images changed (an edited image folder, a re-generated micro world)."""
        if isinstance(self.images, np.ndarray):
            data = np.ascontiguousarray(self.images)
            return hashlib.sha256(f"{data.shape}{data.dtype}".encode() + data.data).hexdigest()
        if isinstance(self.images, StoredArray):
            return self.images.fingerprint()
        return _file_identity([Path(p) for p in self.images], str(self.image_size))

    def subset(self, indices: np.ndarray) -> ImageSet:
        """The images at ``indices`` (order kept)."""
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, (np.ndarray, StoredArray)):
            images: np.ndarray | list[Path] = np.asarray(self.images[indices])
        else:
            images = [self.images[i] for i in indices]
        return ImageSet(images, self.labels[indices], self.image_size, self.max_pixels)


@dataclass
class SourceData:
    """Everything a dataset source read from disk."""

    name: str
    class_names: list[str]
    train: ImageSet
    test: ImageSet
    unlabeled: ImageSet | None = None  # a natural unlabeled set, if the dataset has one
    native_size: int = 32  # square size images are stored/augmented at
    # files left out under data.on_bad_image=skip: {"path", "role", "problem"} each
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class DatasetSpec:
    """A registered dataset: static facts (known without files on disk) plus its reader."""

    name: str
    num_classes: int
    class_names: list[str] | None  # None when only the files know them (ImageNet-127, folders)
    native_size: int | None
    has_natural_unlabeled: bool
    description: str
    reader: "object" = field(repr=False, default=None)  # Callable[[DataConfig], SourceData]
    # per-class size of the train pool when static (CIFAR: 5000 each); lets plan_counts resolve
    # labeled_fraction / "all labeled" / "the rest unlabeled" without files on disk
    train_counts: list[int] | None = None

    def load(self, cfg: "DataConfig") -> SourceData:
        """Read the dataset from ``cfg.root`` (failing with a DataError that says where it looked)."""
        return self.reader(cfg)  # type: ignore[operator]


#: the dataset registry (``ulfine.registry.DATASETS``, typed for dataset specs)
DATASETS: Registry[DatasetSpec] = _DATASETS
