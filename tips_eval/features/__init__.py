"""Feature extraction engine: batched, cached on disk, resumable, distributed with Lightning.

>>> from tips_eval.features import FeatureSpec, extract_features
>>> fs = extract_features(enc, dataset, FeatureSpec(layers=enc.dpt_layers))
>>> fs.global_token("cls").shape, fs.patch_tokens.shape   # memory-mapped, read-only
"""

from .engine import default_cache_dir, extract_features
from .featureset import FeatureSet
from .index import CacheEntry, CacheIndex
from .spec import FORMAT_VERSION, FeatureSpec

__all__ = ["FeatureSpec", "FeatureSet", "extract_features", "CacheIndex", "CacheEntry", "default_cache_dir",
           "FORMAT_VERSION"]
