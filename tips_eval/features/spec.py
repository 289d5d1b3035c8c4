"""What to extract (:class:`FeatureSpec`), at which precision, and the cache key naming it.

The key hashes everything that changes the stored numbers: the encoder
fingerprint (weights + preprocessing + adapter config), the dataset
fingerprint (name, split, reader version, every item key), the transform, the
spec fields and storage dtypes, the compute precision and the format version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass

import torch

from tips_eval.encoder import FEATURE_KINDS
from tips_eval.preprocess import Preprocess

#: bump when the on-disk layout or what a key covers changes (old caches are then ignored)
FORMAT_VERSION = 1

STORAGE_DTYPES = ("float32", "float16", "float64")

#: user spellings -> canonical compute precision ("32" = no autocast)
_PRECISIONS = {"32": "32", "32-true": "32", "fp32": "32", "float32": "32",
               "bf16": "bf16", "bf16-mixed": "bf16", "bfloat16": "bf16",
               "16": "16", "16-mixed": "16", "fp16": "16", "float16": "16"}


@dataclass(frozen=True)
class FeatureSpec:
    """Which features to store, in which dtypes, from which view of the images.

    ``layers`` are 0-based block indices (negative counts from the end), each
    stored as (cls, patch); ``kinds`` are extra ``encode_image`` kinds (e.g.
    ``("value",)``); ``preprocess=None`` uses the encoder's own transform;
    ``flip`` mirrors every image left-right before the transform (a TTA view).
    Global and layer-CLS tokens are stored in ``global_dtype``; final patch,
    layer patch and value tokens in ``patch_dtype``.
    """

    layers: tuple[int, ...] = ()
    kinds: tuple[str, ...] = ()
    patch: bool = True
    global_dtype: str = "float32"
    patch_dtype: str = "float16"
    preprocess: Preprocess | None = None
    flip: bool = False

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        for k in kinds:
            if k not in FEATURE_KINDS:
                raise ValueError(f"FeatureSpec.kinds: unknown feature kind {k!r}; expected one of {FEATURE_KINDS}")
        for field in ("global_dtype", "patch_dtype"):
            if getattr(self, field) not in STORAGE_DTYPES:
                raise ValueError(f"FeatureSpec.{field}={getattr(self, field)!r}; expected one of {STORAGE_DTYPES}")
        if self.preprocess is not None and not (callable(self.preprocess) and hasattr(self.preprocess, "to_dict")):
            raise TypeError("FeatureSpec.preprocess must be a tips_eval.Preprocess (callable with .to_dict()) or None")

    def to_dict(self) -> dict:
        """The spec fields that enter the cache key (the transform is keyed separately, resolved)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "preprocess"}
        d["layers"], d["kinds"] = list(self.layers), list(self.kinds)
        return d


def resolve_precision(precision: str, device_type: str) -> str:
    """``"auto"`` -> bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU."""
    p = str(precision).lower()
    if p == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "16"
        return "32"
    if p not in _PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected 'auto', '32', 'bf16' or '16'")
    return _PRECISIONS[p]


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[precision]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", str(text)).strip("-")[:40] or "x"


def cache_key(encoder, dataset, spec: FeatureSpec, transform, precision: str) -> tuple[str, dict]:
    """(key, the dict it hashes). The key reads ``<model>-<dataset>-<split>-<sha16>``."""
    layers = encoder.normalize_layers(spec.layers)
    payload = {
        "format": FORMAT_VERSION,
        "encoder": encoder.fingerprint(),
        "dataset": dataset.fingerprint(),
        "dataset_name": dataset.name,
        "split": dataset.split,
        "n": len(dataset),
        "transform": transform.to_dict(),
        "spec": {**spec.to_dict(), "layers": layers},
        "precision": precision,
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    key = f"{_slug(encoder.name)}-{_slug(dataset.name)}-{_slug(dataset.split)}-{digest}"
    return key, payload
