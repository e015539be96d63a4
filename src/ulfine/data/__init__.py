"""The data layer: dataset sources (registered by name), long-tailed splits, views and loaders.

Typical use::

    data = build_ssl_data(cfg.data, cfg.seed)      # read + draw the split
    data.save_split(run_dir)                        # split.json: indices + content hash
    for batch in ssl_batches(data, StreamSpec(32, mu=1, seed=cfg.seed)):
        ...                                         # ulfine.batch.Batch of uint8 images at native size
"""

from . import sources  # noqa: F401  (registers the datasets)
from .base import DATASETS, UNKNOWN_LABEL, DatasetSpec, ImageSet, SourceData, StoredArray
from .decode import image_array
from .loaders import LabeledSample, StreamSpec, UnlabeledSample, eval_batches, ssl_batches
from .splits import (
    SplitPlan,
    SSLData,
    build_ssl_data,
    check_split,
    class_counts,
    load_split,
    order_unlabeled,
    plan_counts,
    realised_counts,
    split_hash,
)
from .stream import TrainingStream, training_stream, views_on_device
from .views import build_views, strong_view, test_view, weak_view

__all__ = [
    "DATASETS", "UNKNOWN_LABEL", "DatasetSpec", "ImageSet", "LabeledSample", "StreamSpec", "TrainingStream",
    "UnlabeledSample", "training_stream", "views_on_device",
    "SSLData", "SourceData", "SplitPlan", "StoredArray", "build_ssl_data", "build_views",
    "check_split", "class_counts", "eval_batches", "image_array", "load_split", "order_unlabeled", "plan_counts",
    "realised_counts", "split_hash", "ssl_batches", "strong_view", "test_view", "weak_view",
]
