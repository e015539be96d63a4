"""Feature cache for frozen towers (LP without augmentation, zero-shot): compute once, mmap after."""

from .extract import cached_features
from .keys import feature_cache_key, indices_hash, key_digest, weights_fingerprint

__all__ = ["cached_features", "feature_cache_key", "indices_hash", "key_digest", "weights_fingerprint"]
