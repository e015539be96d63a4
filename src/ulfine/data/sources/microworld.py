"""``microworld``: the downstream LTSSL task of ulfine's procedural micro world (no download).

Why: the shipped tiny CLIP (``model.arch=ulfine-micro-vit model.pretrained=micro``) needs a task
it can read: 24 colour+shape classes ("purple star", "red circle", ...) drawn under a domain
shift from its pretraining world, 8 of them colour/shape pairs pretraining never showed. The
images are generated in memory from a fixed seed (a few seconds, cached per process), so every
machine sees the same bytes. See ``ulfine.microworld.task`` and docs/microworld.md.
"""

from __future__ import annotations

from ...config import DataConfig
from ...microworld.task import CLASS_NAMES, NUM_CLASSES, TEST_PER_CLASS, TRAIN_PER_CLASS, task_arrays
from ...microworld.world import IMAGE_SIZE
from ..base import DATASETS, DatasetSpec, ImageSet, SourceData


def read_microworld(cfg: DataConfig) -> SourceData:
    """The micro-world task: a 300-per-class train pool and a balanced 100-per-class test set."""
    x_train, y_train, x_test, y_test = task_arrays(TRAIN_PER_CLASS, TEST_PER_CLASS)
    return SourceData(
        "microworld", list(CLASS_NAMES), ImageSet(x_train, y_train), ImageSet(x_test, y_test),
        None, IMAGE_SIZE,
    )


DATASETS.register("microworld")(DatasetSpec(
    name="microworld", num_classes=NUM_CLASSES, class_names=list(CLASS_NAMES),
    native_size=IMAGE_SIZE, has_natural_unlabeled=False,
    description=f"procedural micro world: {NUM_CLASSES} colour+shape classes under a domain shift, "
    f"{TRAIN_PER_CLASS} train / {TEST_PER_CLASS} test each, 32 px, generated in memory",
    reader=read_microworld, train_counts=[TRAIN_PER_CLASS] * NUM_CLASSES,
))
