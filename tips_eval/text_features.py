"""Cached text embeddings (captions, class prompts): computed once per (encoder, texts).

Like image features, text features are keyed by the encoder fingerprint and
a hash of the exact strings, stored as one ``.npy`` written atomically; a
second run reads them instead of running the text tower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import CacheError, DataError

log = logging.getLogger("tips_eval.text")


def text_cache_dir(cache_dir=None) -> Path:
    from .features import default_cache_dir

    return Path(cache_dir) / "text" if cache_dir else Path(default_cache_dir()) / "text"


def encode_texts(encoder, texts: Sequence[str], *, cache_dir=None, batch_size: int = 256, progress: bool = True,
                 what: str = "texts") -> np.ndarray:
    """(N, D) float32 embeddings of ``texts`` (not normalised), cached on disk."""
    import torch

    texts = [str(t) for t in texts]
    if not texts:
        raise DataError(f"no {what} to encode")
    key = hashlib.sha256(json.dumps([encoder.fingerprint(), texts]).encode()).hexdigest()[:24]
    path = text_cache_dir(cache_dir) / f"{key}.npy"
    if path.is_file():
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.shape[0] == len(texts):
                return np.array(arr, dtype=np.float32)  # an in-memory, writable copy
        except (OSError, ValueError):
            pass
        log.warning("text feature cache %s is unreadable; recomputing", path)
    from tqdm.auto import tqdm

    out = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(texts), batch_size), desc=f"encode {what}", unit="batch",
                      disable=not progress or len(texts) <= batch_size):
            out.append(encoder.encode_text(texts[s:s + batch_size]).float().cpu().numpy())
    arr = np.concatenate(out).astype(np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{encoder.name}: NaN/Inf text embedding for {what} item {i} ({texts[i][:60]!r})")
    _atomic_save(path, arr)
    return arr


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True) if "tmp" in locals() else None
        raise CacheError(f"cannot write text features to {path}: {e.strerror or e}") from None
