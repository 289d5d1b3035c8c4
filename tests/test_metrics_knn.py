"""kNN classification metric vs a brute-force loop, sklearn, and the documented tie rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tips_eval.errors import DataError
from tips_eval.metrics import knn_accuracy, knn_evaluate, knn_predict


def brute_knn(train_x, train_y, test_x, test_y, ks, temperature=0.07, weights="distance"):
    """Loop reference: neighbours ordered by (similarity desc, index asc); lowest class id wins a tie."""
    tr = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    te = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    c = int(max(train_y.max(), test_y.max())) + 1
    out = {k: {"top1": 0, "top5": 0, "pred": []} for k in ks}
    for q, y in zip(te, test_y):
        sims = np.array([float(np.dot(q, r)) for r in tr])
        order = np.lexsort((np.arange(len(tr)), -sims))
        for k in ks:
            nn = order[: min(k, len(tr))]
            scores = np.zeros(c)
            for j in nn:
                scores[train_y[j]] += np.exp(sims[j] / temperature) if weights == "distance" else 1.0
            rank = sum(scores[cl] > scores[y] or (scores[cl] == scores[y] and cl < y) for cl in range(c))
            out[k]["pred"].append(int(np.argmax(scores)))
            out[k]["top1"] += rank == 0
            out[k]["top5"] += rank < 5 and scores[y] > 0
    n = len(test_y)
    return {k: {"top1": 100.0 * v["top1"] / n, "top5": 100.0 * v["top5"] / n, "pred": np.array(v["pred"])} for k, v in out.items()}


def make_data(seed, n_train=300, n_test=60, dim=16, classes=7, sep=0.35):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)) * sep
    ytr = rng.integers(0, classes, n_train)
    yte = rng.integers(0, classes, n_test)
    xtr = (means[ytr] + rng.normal(size=(n_train, dim))).astype(np.float32)
    xte = (means[yte] + rng.normal(size=(n_test, dim))).astype(np.float32)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_all_k_from_one_topk(seed):
    xtr, ytr, xte, yte = make_data(seed)
    ks = (1, 3, 10, 20, 100)
    ref = brute_knn(xtr.astype(np.float64), ytr, xte.astype(np.float64), yte, ks)
    got = knn_evaluate(xtr, ytr, xte, yte, ks=ks)
    for k in ks:
        assert got[k]["top1"] == pytest.approx(ref[k]["top1"])
        assert got[k]["top5"] == pytest.approx(ref[k]["top5"])
    acc = knn_accuracy(xtr, ytr, xte, yte, ks=ks)
    assert acc == {k: pytest.approx(ref[k]["top1"]) for k in ks}
    preds = knn_predict(xtr, ytr, xte, ks=ks)
    for k in ks:
        np.testing.assert_array_equal(preds[k], ref[k]["pred"])
    # accuracies must differ across k on this data, or the test could not see a k mix-up
    assert len({round(v, 6) for v in acc.values()}) > 1


def test_chunking_and_input_types_do_not_change_results():
    xtr, ytr, xte, yte = make_data(3)
    base = knn_evaluate(xtr, ytr, xte, yte, ks=(5, 20))
    for chunk in (1, 7, 1000):
        assert knn_evaluate(xtr, ytr, xte, yte, ks=(5, 20), chunk_size=chunk) == base
    assert knn_evaluate(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), yte.tolist(), ks=(5, 20)) == base


def test_k_larger_than_train_set_is_clamped():
    xtr, ytr, xte, yte = make_data(4, n_train=25)
    got = knn_accuracy(xtr, ytr, xte, yte, ks=(25, 200, 10_000))
    assert got[200] == got[25] == got[10_000]
    ref = brute_knn(xtr.astype(np.float64), ytr, xte.astype(np.float64), yte, (25,))
    assert got[200] == pytest.approx(ref[25]["top1"])


def test_equal_similarities_take_the_lower_train_index():
    # the query is identical to train rows 2 and 5 (label 7 and 3): k=1 must pick row 2
    rng = np.random.default_rng(0)
    xtr = rng.normal(size=(8, 6)).astype(np.float32)
    xtr[5] = xtr[2]
    ytr = np.array([0, 1, 7, 2, 4, 3, 5, 6])
    q = xtr[2:3].copy()
    assert knn_predict(xtr, ytr, q, ks=(1,))[1][0] == 7
    ytr2 = ytr.copy()
    ytr2[[2, 5]] = [3, 7]
    assert knn_predict(xtr, ytr2, q, ks=(1,))[1][0] == 3
    # k=2: both tied neighbours vote with equal weight -> the lowest class id wins
    assert knn_predict(xtr, ytr, q, ks=(2,))[2][0] == 3


def test_many_duplicate_train_rows_match_exact_tie_order():
    # BLAS may round identical columns differently; duplicates must still tie exactly
    rng = np.random.default_rng(5)
    base = rng.normal(size=(40, 24)).astype(np.float32)
    src = rng.integers(0, 40, 500)
    xtr = base[src]
    ytr = rng.integers(0, 9, 500)
    xte = rng.normal(size=(50, 24)).astype(np.float32)
    xte[:10] = base[:10]
    yte = rng.integers(0, 9, 50)
    ks = (1, 4, 15, 60)
    ref = brute_knn(xtr.astype(np.float64), ytr, xte.astype(np.float64), yte, ks)
    for chunk in (None, 3):
        preds = knn_predict(xtr, ytr, xte, ks=ks, chunk_size=chunk)
        for k in ks:
            np.testing.assert_array_equal(preds[k], ref[k]["pred"], err_msg=f"k={k}")
    got = knn_evaluate(xtr, ytr, xte, yte, ks=ks)
    for k in ks:
        assert got[k]["top1"] == pytest.approx(ref[k]["top1"])
        assert got[k]["top5"] == pytest.approx(ref[k]["top5"])


def tied_rows_data(seed=0, n_random=600, dim=64):
    """Distinct train rows of which 2*(dim-1) have exactly the same cosine (0.6) with the query e0."""
    rng = np.random.default_rng(seed)
    rand = rng.normal(size=(n_random, dim))
    rand[:, 0] = -np.abs(rand[:, 0])  # random rows stay far below 0.6
    tied = np.zeros((2 * (dim - 1), dim))
    tied[:, 0] = 0.6
    j = np.arange(dim - 1)
    tied[j, j + 1] = 0.8
    tied[dim - 1 + j, j + 1] = -0.8
    x = np.concatenate([rand, tied])
    perm = rng.permutation(len(x))
    x = x[perm].astype(np.float32)
    tied_pos = np.sort(np.nonzero(perm >= n_random)[0])
    q = np.zeros((1, dim), dtype=np.float32)
    q[0, 0] = 1.0
    return x, q, tied_pos


def test_tie_at_the_k_boundary_takes_the_lowest_indices():
    from tips_eval.metrics._topk import iter_topk, prepare_index

    x, q, tied_pos = tied_rows_data()
    index = prepare_index(torch.from_numpy(x))
    assert index.groups is None  # all rows distinct: the plain top-k path
    for k in (1, 10, 50, len(tied_pos), len(tied_pos) + 5):
        _, sims, idx = next(iter_topk(torch.from_numpy(q), index, k))
        n_tied = min(k, len(tied_pos))
        np.testing.assert_array_equal(idx[0, :n_tied].numpy(), tied_pos[:n_tied], err_msg=f"k={k}")
        assert torch.all(sims[0, :n_tied] == sims[0, 0])
    # the same rule seen through the public API
    y = np.random.default_rng(1).integers(0, 5, len(x))
    ref = brute_knn(x.astype(np.float64), y, q.astype(np.float64), np.array([0]), (1, 10, 50))
    preds = knn_predict(x, y, q, ks=(1, 10, 50))
    for k in (1, 10, 50):
        assert preds[k][0] == ref[k]["pred"][0]


def test_top5_needs_a_vote_for_the_true_class():
    # k=1: only one class gets a vote; the true class 0 (lowest id, zero votes) is not a top-5 hit
    xtr = np.eye(4, dtype=np.float32)
    ytr = np.array([3, 1, 2, 0])
    got = knn_evaluate(xtr, ytr, xtr[:1], np.array([0]), ks=(1,))
    assert got[1] == {"top1": 0.0, "top5": 0.0}
    got = knn_evaluate(xtr, ytr, xtr[:1], np.array([3]), ks=(1,))
    assert got[1] == {"top1": 100.0, "top5": 100.0}


def test_uniform_weights_match_sklearn():
    from sklearn.neighbors import KNeighborsClassifier

    xtr, ytr, xte, yte = make_data(6, n_train=400, n_test=80, sep=0.8)
    for k in (1, 5, 15):
        clf = KNeighborsClassifier(n_neighbors=k, weights="uniform", metric="cosine", algorithm="brute").fit(xtr, ytr)
        ours = knn_predict(xtr, ytr, xte, ks=(k,), weights="uniform")[k]
        np.testing.assert_array_equal(ours, clf.predict(xte))
        assert knn_accuracy(xtr, ytr, xte, yte, ks=(k,), weights="uniform")[k] == pytest.approx(100 * clf.score(xte, yte))


def test_temperature_changes_the_vote():
    # neighbours: one very close of class 1, two farther of class 0; low T -> class 1 wins
    xtr = np.array([[1.0, 0.05], [1.0, 0.5], [1.0, -0.5]], dtype=np.float32)
    ytr = np.array([1, 0, 0])
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    assert knn_predict(xtr, ytr, q, ks=(3,), temperature=0.01)[3][0] == 1
    assert knn_predict(xtr, ytr, q, ks=(3,), temperature=100.0)[3][0] == 0
    assert knn_predict(xtr, ytr, q, ks=(3,), weights="uniform")[3][0] == 0


def test_bad_inputs_raise_data_error_naming_the_argument():
    xtr, ytr, xte, yte = make_data(7, n_train=30, n_test=5)
    bad = xtr.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="train_x"):
        knn_accuracy(bad, ytr, xte, yte)
    bad = xte.copy()
    bad[1, 0] = np.inf
    with pytest.raises(DataError, match="test_x"):
        knn_accuracy(xtr, ytr, bad, yte)
    with pytest.raises(DataError, match="train_y"):
        knn_accuracy(xtr, ytr[:-1], xte, yte)
    with pytest.raises(DataError, match="test_y"):
        knn_accuracy(xtr, ytr, xte, yte[:2])
    with pytest.raises(DataError, match="dim"):
        knn_accuracy(xtr, ytr, xte[:, :4], yte)
    with pytest.raises(DataError, match="negative"):
        knn_accuracy(xtr, -ytr - 1, xte, yte)
    with pytest.raises(DataError, match="temperature"):
        knn_accuracy(xtr, ytr, xte, yte, temperature=0)
    with pytest.raises(DataError, match="ks"):
        knn_accuracy(xtr, ytr, xte, yte, ks=(0,))
