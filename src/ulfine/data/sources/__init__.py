"""Dataset sources; importing this package registers every dataset in ``DATASETS``."""

from . import cifar, fashion_mnist, folder, imagenet127, stl10, synthetic

try:  # written by the micro-world part of the project
    from . import microworld
except ImportError:  # pragma: no cover - only while that module does not exist yet
    microworld = None  # type: ignore[assignment]

__all__ = ["cifar", "fashion_mnist", "folder", "imagenet127", "microworld", "stl10", "synthetic"]
