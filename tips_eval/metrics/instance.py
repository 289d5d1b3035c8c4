"""Instance-level retrieval metrics of UnED (Universal Image Embeddings).

Source: nikosips/Universal-Image-Embeddings ``knn_utils.py``
(``compute_knn_metrics``), summarised in PROTOCOLS.md section 6.

- Similarity: dot product of the descriptors, which are L2-normalised first
  (``normalize=True``, i.e. cosine; pass ``False`` for the raw dot product).
- A neighbour is correct when it shares a label with the query **and** lies
  in the same domain. Query labels may be lists (multi-label: any shared
  label counts); index labels are one per item.
- R@1: the first neighbour is correct. mMP@k: mean over queries of
  (#correct among the first min(k, n_q)) / min(k, n_q), where n_q is the
  number of correct items in the index. Queries with n_q = 0 have no defined
  precision (UnED would divide by zero) and are left out of the mMP mean; they
  still count as R@1 misses.
- ``exclude_self=True`` (query set == index set): the query itself is never
  retrieved and n_q excludes it. UnED drops the *first* neighbour instead;
  the two agree whenever the query is its own nearest neighbour, which
  cosine guarantees unless an identical copy sits at a lower index.
- Ties: equal similarities take the lower index row first
  (see :mod:`tips_eval.metrics._topk`).

Values are percentages in [0, 100].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tips_eval.errors import DataError

from ._common import as_features, resolve_device, same_dim, same_length, to_numpy
from ._topk import iter_topk, prepare_index


def _flat_labels(y: Any, name: str, n: int, allow_multi: bool) -> tuple[np.ndarray, np.ndarray]:
    """(values, owner): every label value and the row it belongs to."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    if isinstance(y, np.ndarray) and y.dtype != object:
        if y.ndim != 1:
            raise DataError(f"{name} must be 1-D (one label per item), got shape {y.shape}")
        same_length(len(y), n, name, "its features")
        return y, np.arange(n)
    y = list(y)
    same_length(len(y), n, name, "its features")
    vals, owner = [], []
    for i, v in enumerate(y):
        if isinstance(v, (list, tuple, np.ndarray)):
            if not allow_multi:
                raise DataError(f"{name}[{i}] is a list; index labels must be one label per item")
            if len(v) == 0:
                raise DataError(f"{name}[{i}] is an empty label list")
            vals.extend(v)
            owner.extend([i] * len(v))
        else:
            vals.append(v)
            owner.append(i)
    return np.asarray(vals), np.asarray(owner, dtype=np.int64)


def _domains(d: Any, name: str, n: int) -> np.ndarray:
    if d is None:
        return np.zeros(n, dtype=np.int64)
    a = to_numpy(d, name)
    if a.ndim == 0:
        return np.full(n, a.item())
    if a.ndim != 1:
        raise DataError(f"{name} must be 1-D (one domain per item) or a scalar, got shape {a.shape}")
    same_length(len(a), n, name, "its features")
    return a


def _codes(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of two arrays over their joint set of values."""
    try:
        u, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    except TypeError:
        raise DataError(f"query and index {what} values cannot be compared (mixed types?)") from None
    inv = inv.reshape(-1)
    return inv[: len(a)], inv[len(a) :], len(u)


def _compute(
    query_x: Any,
    query_y: Any,
    index_x: Any,
    index_y: Any,
    k: int = 5,
    query_domain: Any = None,
    index_domain: Any = None,
    exclude_self: bool = False,
    normalize: bool = True,
    chunk_size: int | None = None,
    device: Any = None,
    self_index: Any = None,
) -> dict[str, float]:
    """(R@1, mMP@k or None when no query has a correct item)."""
    k = int(k)
    if k < 1:
        raise DataError(f"k must be a positive integer, got {k}")
    q = as_features(query_x, "query_x")
    x = as_features(index_x, "index_x")
    same_dim(q, x, "query_x", "index_x")
    nq, ni = q.shape[0], x.shape[0]
    if exclude_self and (nq != ni or not torch.equal(q, x)):
        raise DataError("exclude_self=True needs query_x to be the index itself (same rows in the same order)")
    if exclude_self and ni < 2:
        raise DataError("exclude_self=True needs at least 2 index items")
    if exclude_self and self_index is not None:
        raise DataError("give exclude_self=True or self_index, not both")
    if self_index is not None:
        self_index = np.asarray(to_numpy(self_index, "self_index"), dtype=np.int64).reshape(-1)
        if len(self_index) != nq or (nq and (self_index.max() >= ni or self_index.min() < -1)):
            raise DataError(f"self_index must hold one index position in [0, {ni}) or -1 per query")
    self_pos = np.arange(nq) if exclude_self else self_index
    if (query_domain is None) != (index_domain is None):
        raise DataError("give both query_domain and index_domain, or neither")
    qv, q_owner = _flat_labels(query_y, "query_y", nq, allow_multi=True)
    iv, _ = _flat_labels(index_y, "index_y", ni, allow_multi=False)
    qd = _domains(query_domain, "query_domain", nq)
    idom = _domains(index_domain, "index_domain", ni)
    ql, il, n_lab = _codes(qv, iv, "label")
    qdc, idc, _ = _codes(qd, idom, "domain")
    q_pair = qdc[q_owner] * n_lab + ql  # one (domain, label) code per query label
    i_pair = idc * n_lab + il
    counts = np.bincount(i_pair, minlength=int(max(q_pair.max(), i_pair.max())) + 1)
    # n_q: distinct (domain, label) pairs of each query, summed over the index
    qp = np.unique(np.stack([q_owner, q_pair], 1), axis=0)
    n_pos = np.bincount(qp[:, 0], weights=counts[qp[:, 1]], minlength=nq).astype(np.int64)
    if self_pos is not None:  # the query's own index entry is not a positive it can find
        n_pos -= (self_pos >= 0).astype(np.int64)
    # padded (Q, L) table of each query's pair codes, -1 = none
    n_per = np.bincount(qp[:, 0], minlength=nq)
    table = np.full((nq, int(n_per.max())), -1, dtype=np.int64)
    slot = np.arange(len(qp)) - (np.cumsum(n_per) - n_per)[qp[:, 0]]
    table[qp[:, 0], slot] = qp[:, 1]

    dev = resolve_device(device)
    index = prepare_index(x, dev, normalize=normalize)
    kk = min(k, ni - (1 if self_pos is not None and (self_pos >= 0).any() else 0))
    i_pair_t = torch.from_numpy(i_pair.astype(np.int64)).to(dev)
    table_t = torch.from_numpy(table).to(dev)
    n_pos_t = torch.from_numpy(n_pos).to(dev)
    r1 = 0
    prec_sum = 0.0
    for s, _, idx in iter_topk(q, index, kk, chunk_size, normalize=normalize, self_index=self_pos):
        b = idx.shape[0]
        hit = (i_pair_t[idx][:, :, None] == table_t[s : s + b][:, None, :]).any(2)  # (B, kk)
        r1 += int(hit[:, 0].sum())
        npos = n_pos_t[s : s + b]
        m = npos.clamp(max=k)
        correct = (hit & (torch.arange(kk, device=dev)[None, :] < m[:, None])).sum(1)
        has = npos > 0
        prec_sum += float((correct[has].double() / m[has].double()).sum())
    n_valid = int((n_pos > 0).sum())
    return 100.0 * r1 / nq, (100.0 * prec_sum / n_valid if n_valid else None)


def instance_retrieval_metrics(
    query_x: Any,
    query_y: Any,
    index_x: Any,
    index_y: Any,
    k: int = 5,
    query_domain: Any = None,
    index_domain: Any = None,
    exclude_self: bool = False,
    normalize: bool = True,
    chunk_size: int | None = None,
    device: Any = None,
    self_index: Any = None,
) -> dict[str, float]:
    """R@1 and mMP@k in one pass: ``{"R@1": .., f"mMP@{k}": ..}`` (percent).

    ``self_index[i]`` is the index position of query ``i`` itself (-1: not in the
    index) when the query set partly overlaps the index (UnED's merged index):
    that entry is never retrieved and not counted as a positive.
    """
    r1, mmp = _compute(query_x, query_y, index_x, index_y, k, query_domain, index_domain, exclude_self, normalize,
                       chunk_size, device, self_index)
    if mmp is None:
        raise DataError("no query has a correct item (same label and domain) in the index; mMP is undefined")
    return {"R@1": r1, f"mMP@{int(k)}": mmp}


def mean_precision_at_k(
    query_x: Any,
    query_y: Any,
    index_x: Any,
    index_y: Any,
    k: int = 5,
    query_domain: Any = None,
    index_domain: Any = None,
    exclude_self: bool = False,
    **kwargs: Any,
) -> float:
    """UnED mMP@k (percent); see the module docstring."""
    res = instance_retrieval_metrics(query_x, query_y, index_x, index_y, k, query_domain, index_domain, exclude_self, **kwargs)
    return res[f"mMP@{int(k)}"]


def recall_at_1(
    query_x: Any,
    query_y: Any,
    index_x: Any,
    index_y: Any,
    query_domain: Any = None,
    index_domain: Any = None,
    exclude_self: bool = False,
    **kwargs: Any,
) -> float:
    """UnED R@1 (percent): the nearest index item shares a label and the domain."""
    return _compute(query_x, query_y, index_x, index_y, 1, query_domain, index_domain, exclude_self, **kwargs)[0]
