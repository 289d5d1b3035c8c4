"""Input checks shared by the metric functions.

Every metric accepts numpy arrays (memmaps included), torch tensors or nested
lists, and fails with a one-line :class:`~tips_eval.errors.DataError` naming
the argument when the input is malformed (wrong rank, NaN/Inf, mismatched
lengths, non-integer labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tips_eval.errors import DataError


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy view of ``x`` (torch tensors are moved to CPU and detached)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise DataError(f"{name}: cannot be read as an array ({e})") from None


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise DataError naming ``name`` and the first bad row if ``t`` has NaN/Inf.

    One cheap reduction first (a NaN or Inf anywhere makes the sum non-finite);
    the exact scan only runs when the sum says something may be wrong.
    """
    if t.numel() == 0 or torch.isfinite(t.sum(dtype=torch.float64)):
        return
    bad = ~torch.isfinite(t)
    n_bad = int(bad.sum())
    if n_bad == 0:  # the sum overflowed on huge but finite values
        return
    first = int(bad.reshape(bad.shape[0], -1).any(1).nonzero()[0, 0]) if t.ndim > 1 else int(bad.nonzero()[0, 0])
    raise DataError(f"{name} has {n_bad} NaN/Inf values (first in row {first})", hint="check the feature extraction")


def as_features(x: Any, name: str) -> torch.Tensor:
    """A finite (N, D) float32 CPU tensor, N >= 1, D >= 1."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu", torch.float32)
    else:
        a = to_numpy(x, name)
        if a.dtype.kind not in "fiub":
            raise DataError(f"{name} must be numeric features, got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if t.ndim != 2:
        raise DataError(f"{name} must be a 2-D (num_items, dim) array, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {tuple(t.shape)})")
    check_finite(t, name)
    return t.contiguous()


def as_labels(y: Any, name: str, length: int | None = None) -> torch.Tensor:
    """A 1-D int64 CPU tensor of non-negative class ids (of ``length`` items if given)."""
    a = to_numpy(y, name)
    if a.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of class ids, got shape {a.shape}")
    if length is not None and a.shape[0] != length:
        raise DataError(f"{name} has {a.shape[0]} labels but the features have {length} rows")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise DataError(f"{name} must hold integer class ids, got non-integer values")
    elif a.dtype.kind not in "iub":
        raise DataError(f"{name} must hold integer class ids, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise DataError(f"{name} has a negative class id ({int(a.min())}); ids must be >= 0")
    return torch.from_numpy(a)


def same_length(n_a: int, n_b: int, name_a: str, name_b: str) -> None:
    if n_a != n_b:
        raise DataError(f"{name_a} has {n_a} rows but {name_b} has {n_b}; they must match")


def same_dim(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise DataError(f"{name_a} has dim {a.shape[1]} but {name_b} has dim {b.shape[1]}; they must match")


def l2_normalize(t: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    return torch.nn.functional.normalize(t, dim=1, eps=1e-12)


def check_ks(ks: Any, name: str = "ks") -> tuple[int, ...]:
    """A tuple of positive ints (a bare int is accepted)."""
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    try:
        out = tuple(int(k) for k in ks)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be positive integers, got {ks!r}") from None
    if not out or any(k < 1 for k in out) or any(k != float(v) for k, v in zip(out, ks)):
        raise DataError(f"{name} must be positive integers, got {ks!r}")
    return out


@dataclass
class RowGroups:
    """Identical rows of a matrix, grouped.

    ``uid[i]`` is the group of row ``i``; groups are numbered by the first row
    in which they occur, so ``rep[g]`` (that first row) increases with ``g``.
    ``members`` lists all rows ordered by (group, row) and group ``g`` owns
    ``members[offsets[g]:offsets[g + 1]]``.
    """

    uid: torch.Tensor  # (N,) int64
    rep: torch.Tensor  # (G,) int64, increasing
    counts: torch.Tensor  # (G,) int64
    members: torch.Tensor  # (N,) int64
    offsets: torch.Tensor  # (G + 1,) int64

    @property
    def has_duplicates(self) -> bool:
        return len(self.rep) < len(self.uid)

    def to(self, device: torch.device) -> RowGroups:
        return RowGroups(*(v.to(device) for v in (self.uid, self.rep, self.counts, self.members, self.offsets)))


_HASH_WEIGHTS: dict[int, np.ndarray] = {}


def _row_hashes(a: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """64-bit hash of each float32 row's bits (exact integer arithmetic modulo 2^64)."""
    d = a.shape[1]
    if d not in _HASH_WEIGHTS:
        _HASH_WEIGHTS[d] = np.random.default_rng(0x71B5).integers(1, 2**63, size=d, dtype=np.uint64) | np.uint64(1)
    w = _HASH_WEIGHTS[d]
    bits = a.view(np.uint32)
    out = np.empty(a.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for s in range(0, a.shape[0], chunk):
            b = bits[s : s + chunk].astype(np.uint64)
            b[b == 0x80000000] = 0  # -0.0 hashes as +0.0 (they compare equal)
            out[s : s + chunk] = (b * w).sum(axis=1, dtype=np.uint64)
    return out


def group_identical_rows(t: torch.Tensor) -> RowGroups:
    """Group bitwise-identical rows of a float32 (N, D) CPU tensor.

    Why: a BLAS matmul may round the same dot product differently depending
    on where a column lands in its tiling, so identical feature rows can get
    scores that differ in the last bit. Scoring each distinct row once makes
    identical items tie exactly, which the tie-breaking rules rely on.
    Rows are hashed (exact integer arithmetic), then every row is verified
    against its group's first row; a hash collision falls back to an exact
    ``np.unique``.
    """
    a = t.numpy()
    n = a.shape[0]
    h = _row_hashes(a)
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    if len(first) < n:
        rep_of_row = first[inv]
        dup = np.nonzero(rep_of_row != np.arange(n))[0]
        for s in range(0, len(dup), 8192):
            rows = dup[s : s + 8192]
            if not np.array_equal(a[rows], a[rep_of_row[rows]]):
                _, first, inv = np.unique(a, axis=0, return_index=True, return_inverse=True)
                inv = inv.reshape(-1)
                break
    # renumber groups by first occurrence
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    uid = rank[inv]
    rep = first[order]
    members = np.argsort(uid, kind="stable")
    counts = np.bincount(uid, minlength=len(rep))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return RowGroups(*(torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for v in (uid, rep, counts, members, offsets)))


def resolve_device(device: Any) -> torch.device:
    """``None`` -> CPU; otherwise ``torch.device(device)``."""
    return torch.device("cpu") if device is None else torch.device(device)
