"""Deterministic, memory-bounded cosine top-k of queries against an index.

One matmul + one ``torch.topk`` per query chunk: memory is bounded by
``chunk_size x num_index`` similarities. Ordering rule, applied exactly:
neighbours are sorted by similarity (descending) and **equal similarities
take the lower index first** (``torch.topk`` does not guarantee any order
among ties, so ties are re-sorted; rows with a tie straddling the k-th place
are recomputed with a stable full sort).

Identical index rows are scored once (see
:func:`~tips_eval.metrics._common.group_identical_rows`), so duplicates tie
exactly instead of differing by BLAS rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ._common import RowGroups, group_identical_rows, l2_normalize, resolve_device

#: default budget for one chunk's similarity block (large enough that a 1.28M-row
#: index still gets ~200-row chunks: small-M matmuls run far below peak)
CHUNK_BYTES = 2**30


@dataclass
class Index:
    """Index features prepared once: distinct rows, normalised, on the device."""

    vectors: torch.Tensor  # (G, D) distinct rows (L2-normalised if requested), on device
    groups: RowGroups | None  # None when every row is distinct
    size: int  # N, number of original rows

    @property
    def num_distinct(self) -> int:
        return self.vectors.shape[0]


def prepare_index(x: torch.Tensor, device: torch.device | str | None = None, normalize: bool = True) -> Index:
    """Group identical rows, normalise the distinct ones, move them to ``device``."""
    dev = resolve_device(device)
    groups = group_identical_rows(x)
    vec = x[groups.rep] if groups.has_duplicates else x
    vec = vec.to(dev)
    if normalize:
        vec = l2_normalize(vec)
    return Index(vec.contiguous(), groups.to(dev) if groups.has_duplicates else None, x.shape[0])


def default_chunk_size(num_index: int) -> int:
    """Query rows per chunk so one similarity block stays within ``CHUNK_BYTES``."""
    return int(max(1, min(2048, CHUNK_BYTES // (4 * max(num_index, 1)))))


def _order_ties(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (value descending, index ascending)."""
    idx, p = idx.sort(dim=1)
    vals = vals.gather(1, p)
    vals, p = vals.sort(dim=1, descending=True, stable=True)
    return vals, idx.gather(1, p)


def _topk_rows(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of each row under the (value desc, index asc) order."""
    n = sims.shape[1]
    if k >= n:
        vals, idx = sims.sort(dim=1, descending=True, stable=True)
        return vals, idx
    vals, idx = sims.topk(k + 1, dim=1)
    boundary_tie = vals[:, k - 1] == vals[:, k]
    vals, idx = vals[:, :k], idx[:, :k]
    tied = (vals[:, 1:] == vals[:, :-1]).any(1).nonzero()[:, 0]  # topk leaves the order of equal values open
    if len(tied):
        vals[tied], idx[tied] = _order_ties(vals[tied], idx[tied])
    if bool(boundary_tie.any()):
        rows = boundary_tie.nonzero()[:, 0]
        v, i = sims[rows].sort(dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = v[:, :k], i[:, :k]
    return vals, idx


def _expand_groups(
    vals: torch.Tensor, gid: torch.Tensor, groups: RowGroups, k: int, self_index: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a top list of distinct rows into the top-k original rows.

    Each group contributes its members (lowest index first, at most ``k``,
    plus one when the query itself must be skipped); all candidates of a
    query are ordered by (score desc, index asc) and the first ``k`` kept.
    """
    dev = vals.device
    b, kk = gid.shape
    cap = k + (1 if self_index is not None else 0)
    counts = groups.counts[gid].clamp(max=cap).reshape(-1)
    slot = torch.repeat_interleave(torch.arange(b * kk, device=dev), counts)
    start = torch.cumsum(counts, 0) - counts
    within = torch.arange(slot.numel(), device=dev) - start[slot]
    member = groups.members[groups.offsets[gid.reshape(-1)][slot] + within]
    row = slot // kk
    score = vals.reshape(-1)[slot]
    if self_index is not None:
        keep = member != self_index[row]
        member, row, score = member[keep], row[keep], score[keep]
    # lexicographic sort by (row asc, score desc, member asc) via stable sorts
    p = member.argsort(stable=True)
    p = p[score[p].argsort(descending=True, stable=True)]
    p = p[row[p].argsort(stable=True)]
    member, row, score = member[p], row[p], score[p]
    n_row = torch.bincount(row, minlength=b)
    pos = torch.arange(row.numel(), device=dev) - (torch.cumsum(n_row, 0) - n_row)[row]
    keep = pos < k
    return score[keep].reshape(b, k), member[keep].reshape(b, k)


def iter_topk(
    queries: torch.Tensor,
    index: Index,
    k: int,
    chunk_size: int | None = None,
    exclude_self: bool = False,
    normalize: bool = True,
    self_index: "np.ndarray | None" = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, sims (B, k), idx (B, k))`` for consecutive query chunks.

    ``queries`` is a (Q, D) CPU float tensor; each chunk is moved to the
    index's device and (optionally) L2-normalised. ``exclude_self`` means the
    query set *is* the index set: query ``i`` never retrieves index row ``i``
    (its identical copies still can). ``self_index`` generalises it: query ``i``
    never retrieves index row ``self_index[i]`` (``-1``: nothing excluded), for
    query sets that only partly overlap the index. ``k`` must not exceed the
    number of retrievable rows.
    """
    dev = index.vectors.device
    g = index.groups
    q_total = queries.shape[0]
    if exclude_self:
        self_index = np.arange(q_total)
    excl = None
    if self_index is not None:
        excl = torch.as_tensor(np.asarray(self_index, dtype=np.int64), device=dev)
        if excl.numel() != q_total or (q_total and int(excl.max()) >= index.size):
            raise ValueError("self_index needs one index position (or -1) per query, inside the index")
    n_avail = index.size - (1 if excl is not None and bool((excl >= 0).any()) else 0)
    if not 1 <= k <= n_avail:
        raise ValueError(f"k={k} outside [1, {n_avail}]")
    chunk = chunk_size or default_chunk_size(index.num_distinct)
    for s in range(0, q_total, chunk):
        q = queries[s : s + chunk].to(dev, non_blocking=True)
        if normalize:
            q = l2_normalize(q)
        sims = q @ index.vectors.T
        rows = torch.arange(q.shape[0], device=dev)
        self_idx = excl[s : s + q.shape[0]] if excl is not None else None
        has = self_idx >= 0 if self_idx is not None else None
        if g is None:
            if self_idx is not None:
                sims[rows[has], self_idx[has]] = float("-inf")
            yield (s, *_topk_rows(sims, k))
            continue
        if self_idx is not None:  # a query alone in its group cannot be retrieved at all
            gid_self = g.uid[self_idx.clamp(min=0)]
            alone = (g.counts[gid_self] == 1) & has
            sims[rows[alone], gid_self[alone]] = float("-inf")
        # the query's own group stays selectable (its other members count);
        # a lone self group scores -inf and its only member is dropped below
        kk = min(k, index.num_distinct)
        vals, gid = _topk_rows(sims, kk)
        yield (s, *_expand_groups(vals, gid, g, k, self_idx))
