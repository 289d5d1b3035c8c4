"""UnED R@1 and mMP@5 vs a brute-force loop written from PROTOCOLS.md section 6."""

from __future__ import annotations

import numpy as np
import pytest

from tips_eval.errors import DataError
from tips_eval.metrics import instance_retrieval_metrics, mean_precision_at_k, recall_at_1


def brute_uned(qx, qy, ix, iy, k=5, qd=None, idom=None, exclude_self=False):
    qx = qx / np.linalg.norm(qx, axis=1, keepdims=True)
    ix = ix / np.linalg.norm(ix, axis=1, keepdims=True)
    qd = np.zeros(len(qx), int) if qd is None else qd
    idom = np.zeros(len(ix), int) if idom is None else idom
    r1, mp, n_mp = 0, 0.0, 0
    for q in range(len(qx)):
        labels = set(np.atleast_1d(qy[q]).tolist())
        cand = [j for j in range(len(ix)) if not (exclude_self and j == q)]
        sims = {j: float(np.dot(qx[q], ix[j])) for j in cand}
        order = sorted(cand, key=lambda j: (-sims[j], j))
        correct = [iy[j] in labels and idom[j] == qd[q] for j in order]
        r1 += correct[0]
        n_q = sum(iy[j] in labels and idom[j] == qd[q] for j in cand)
        if n_q:
            m = min(k, n_q)
            mp += sum(correct[:m]) / m
            n_mp += 1
    return 100.0 * r1 / len(qx), 100.0 * mp / n_mp


def make(seed, n_index=120, n_query=40, dim=10, classes=15, domains=3):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(domains, classes, dim))
    iy, idom = rng.integers(0, classes, n_index), rng.integers(0, domains, n_index)
    qy, qd = rng.integers(0, classes, n_query), rng.integers(0, domains, n_query)
    ix = means[idom, iy] + 0.9 * rng.normal(size=(n_index, dim))
    qx = means[qd, qy] + 0.9 * rng.normal(size=(n_query, dim))
    return qx.astype(np.float32), qy, qd, ix.astype(np.float32), iy, idom


def test_query_against_merged_index_with_domains():
    qx, qy, qd, ix, iy, idom = make(0)
    got = instance_retrieval_metrics(qx, qy, ix, iy, k=5, query_domain=qd, index_domain=idom)
    r1, mmp = brute_uned(qx, qy, ix, iy, 5, qd, idom)
    assert got == {"R@1": pytest.approx(r1), "mMP@5": pytest.approx(mmp)}
    assert recall_at_1(qx, qy, ix, iy, query_domain=qd, index_domain=idom) == pytest.approx(r1)
    assert mean_precision_at_k(qx, qy, ix, iy, 5, query_domain=qd, index_domain=idom) == pytest.approx(mmp)
    # ignoring domains must change the numbers on this data (labels repeat across domains)
    no_dom = instance_retrieval_metrics(qx, qy, ix, iy)
    assert no_dom["R@1"] > got["R@1"]
    assert no_dom == pytest.approx(dict(zip(("R@1", "mMP@5"), brute_uned(qx, qy, ix, iy))))


def test_same_label_other_domain_is_not_a_hit():
    ix = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    q = np.array([[1.0, 0.1]], dtype=np.float32)
    assert recall_at_1(q, [4], ix, [4, 4], query_domain=[0], index_domain=[1, 0]) == 0.0
    assert recall_at_1(q, [4], ix, [4, 4], query_domain=[1], index_domain=[1, 0]) == 100.0
    # n_q = 1 -> precision over the first neighbour only
    assert mean_precision_at_k(q, [4], ix, [4, 4], query_domain=[0], index_domain=[1, 0]) == 0.0


def test_exclude_self_on_query_equals_index():
    _, _, _, ix, iy, idom = make(1, n_index=90)
    got = instance_retrieval_metrics(ix, iy, ix, iy, query_domain=idom, index_domain=idom, exclude_self=True)
    r1, mmp = brute_uned(ix, iy, ix, iy, 5, idom, idom, exclude_self=True)
    assert got == {"R@1": pytest.approx(r1), "mMP@5": pytest.approx(mmp)}
    # UnED's own rule: drop the first neighbour (self, which cosine ranks first here)
    keep = instance_retrieval_metrics(ix, iy, ix, iy, query_domain=idom, index_domain=idom)
    assert keep["R@1"] == 100.0 and got["R@1"] < 100.0


def test_exclude_self_keeps_identical_copies_and_small_classes():
    x = np.array([[1, 0], [1, 0], [0, 1], [0.1, 1], [1, 1]], dtype=np.float32)
    y = np.array([0, 0, 1, 1, 2])
    got = instance_retrieval_metrics(x, y, x, y, exclude_self=True, chunk_size=2)
    # rows 0/1 are copies (each other's neighbour), 2/3 are each other's neighbour, 4 has no positive
    assert got["R@1"] == pytest.approx(100.0 * 4 / 5)
    assert got["mMP@5"] == pytest.approx(100.0)  # query 4 (n_q = 0) is left out of the mean
    assert got == pytest.approx(dict(zip(("R@1", "mMP@5"), brute_uned(x, y, x, y, exclude_self=True))))


def test_multi_label_queries():
    qx, qy, _, ix, iy, _ = make(2, classes=8)
    multi = [[int(a), int((a + 3) % 8)] if i % 2 else [int(a)] for i, a in enumerate(qy)]
    got = instance_retrieval_metrics(qx, multi, ix, iy)
    assert got == pytest.approx(dict(zip(("R@1", "mMP@5"), brute_uned(qx, multi, ix, iy))))
    assert got != instance_retrieval_metrics(qx, qy, ix, iy)


def test_ties_take_the_lower_index_and_chunks_agree():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(12, 6)).astype(np.float32)
    ix = base[rng.integers(0, 12, 80)]
    iy = rng.integers(0, 4, 80)
    qx = base[rng.integers(0, 12, 25)]
    qy = rng.integers(0, 4, 25)
    ref = dict(zip(("R@1", "mMP@5"), brute_uned(qx.astype(np.float64), qy, ix.astype(np.float64), iy)))
    for chunk in (None, 1, 4):
        assert instance_retrieval_metrics(qx, qy, ix, iy, chunk_size=chunk) == pytest.approx(ref)


def test_instance_bad_inputs():
    qx, qy, qd, ix, iy, idom = make(4, n_index=20, n_query=5)
    with pytest.raises(DataError, match="exclude_self"):
        recall_at_1(qx, qy, ix, iy, exclude_self=True)
    with pytest.raises(DataError, match="both"):
        recall_at_1(qx, qy, ix, iy, query_domain=qd)
    with pytest.raises(DataError, match="index_y"):
        recall_at_1(qx, qy, ix, iy[:-1])
    with pytest.raises(DataError, match="index_y"):
        recall_at_1(qx, qy, ix, [[1, 2]] * len(ix))
    with pytest.raises(DataError, match="index_domain"):
        recall_at_1(qx, qy, ix, iy, query_domain=qd, index_domain=idom[:3])
    bad = qx.copy()
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match="query_x"):
        mean_precision_at_k(bad, qy, ix, iy)
    with pytest.raises(DataError, match="mMP"):
        mean_precision_at_k(qx, qy + 100, ix, iy)
    assert recall_at_1(qx, qy + 100, ix, iy) == 0.0


def brute_self(qx, qy, ix, iy, qd, idom, self_pos, k=5):
    """Loop reference for a query set that partly overlaps the index (UnED's merged index)."""
    qx = qx / np.linalg.norm(qx, axis=1, keepdims=True)
    ix = ix / np.linalg.norm(ix, axis=1, keepdims=True)
    r1, mp, n_mp = 0, 0.0, 0
    for q in range(len(qx)):
        cand = [j for j in range(len(ix)) if j != self_pos[q]]
        order = sorted(cand, key=lambda j: (-float(np.dot(qx[q], ix[j])), j))
        correct = [iy[j] == qy[q] and idom[j] == qd[q] for j in order]
        r1 += correct[0]
        n_q = sum(correct)
        if n_q:
            m = min(k, n_q)
            mp += sum(correct[:m]) / m
            n_mp += 1
    return 100.0 * r1 / len(qx), 100.0 * mp / n_mp


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_self_index_for_queries_partly_inside_the_index(seed):
    qx, qy, qd, ix, iy, idom = make(seed, n_index=90, n_query=30)
    rng = np.random.default_rng(seed)
    inside = rng.choice(len(ix), 12, replace=False)  # 12 queries are index items themselves
    qx[:12], qy[:12], qd[:12] = ix[inside], iy[inside], idom[inside]
    self_pos = np.full(len(qx), -1)
    self_pos[:12] = inside
    ref = brute_self(qx, qy, ix, iy, qd, idom, self_pos)
    got = instance_retrieval_metrics(qx, qy, ix, iy, k=5, query_domain=qd, index_domain=idom, self_index=self_pos)
    assert got["R@1"] == pytest.approx(ref[0]) and got["mMP@5"] == pytest.approx(ref[1])
    # without the exclusion a query finds itself first: R@1 would be inflated
    naive = instance_retrieval_metrics(qx, qy, ix, iy, k=5, query_domain=qd, index_domain=idom)
    assert naive["R@1"] > got["R@1"]
    with pytest.raises(DataError, match="self_index"):
        instance_retrieval_metrics(qx, qy, ix, iy, self_index=self_pos[:5])
