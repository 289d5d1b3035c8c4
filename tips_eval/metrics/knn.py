"""Weighted k-NN classification on frozen features (DINO / DINOv2 protocol).

Protocol (facebookresearch/dino ``eval_knn.py``, dinov2 ``eval/knn.py``):

- features are L2-normalised; similarity is cosine;
- for each test chunk one matmul against the train set and **one** top-max(k)
  serve every k in ``ks`` (the k nearest are the first k of the top-max(k));
- each of the k neighbours votes for its class with weight exp(sim / T)
  (``weights="distance"``, T = ``temperature``) or 1 (``weights="uniform"``);
  class scores are the sums. DINOv2 uses softmax(sims / T) instead of DINO's
  exp(sims / T): a per-sample positive rescaling, so the ranking of classes
  (hence top-1 / top-5) is the same. We compute exp((sim - max sim) / T) in
  float64, the same ranking again, without overflow for small T;
- k larger than the train set is clamped to the train-set size (results stay
  keyed by the requested k).

Tie-breaking (deterministic): neighbours with equal similarity are taken in
increasing train index (identical train rows tie exactly, see
:mod:`tips_eval.metrics._topk`); a tied vote goes to the **lowest class id**.
Top-5 counts a hit when the true class is among the 5 best classes under that
order **and** received at least one vote (DINO's sort puts zero-vote classes
in an arbitrary order; a class no neighbour voted for is never a hit here).
Accuracies are percentages in [0, 100].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from tips_eval.errors import DataError

from ._common import as_features, as_labels, check_ks, resolve_device, same_dim
from ._topk import iter_topk, prepare_index

DEFAULT_KS = (10, 20, 100, 200)


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise DataError(f"temperature must be a positive number, got {temperature!r}")
    return t


def _inputs(train_x: Any, train_y: Any, test_x: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    train = as_features(train_x, "train_x")
    test = as_features(test_x, "test_x")
    same_dim(train, test, "train_x", "test_x")
    return train, as_labels(train_y, "train_y", train.shape[0]), test


def _topk_hits(scores: torch.Tensor, y: torch.Tensor, t: int, class_ids: torch.Tensor) -> torch.Tensor:
    """Bool (B,): true class voted for and ranked < t under (score desc, class id asc).

    One ``topk`` pass settles every row whose true score differs from the
    t-th best score; only rows tied with it get the exact rank count.
    """
    s_true = scores.gather(1, y[:, None])[:, 0]
    voted = s_true > 0
    if t == 1:
        return (scores.argmax(1) == y) & voted  # argmax returns the first (lowest id) maximum
    if t >= scores.shape[1]:
        return voted
    kth = scores.topk(t, dim=1, sorted=True).values[:, -1]
    hit = s_true > kth
    tied = (s_true == kth).nonzero()[:, 0]
    if len(tied):
        s, yy, st = scores[tied], y[tied], s_true[tied, None]
        rank = (s > st).sum(1) + ((s == st) & (class_ids[None, :] < yy[:, None])).sum(1)
        hit[tied] = rank < t
    return hit & voted


def _class_scores(
    train: torch.Tensor,
    labels: torch.Tensor,
    test: torch.Tensor,
    ks: Sequence[int],
    temperature: float,
    chunk_size: int | None,
    device: Any,
    weights: str,
    num_classes: int,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, k_eff, class_scores (B, C) float64)`` per chunk and clamped k.

    The yielded tensor is updated in place for the next k: use it before
    advancing the generator.
    """
    if weights not in ("distance", "uniform"):
        raise DataError(f"weights must be 'distance' or 'uniform', got {weights!r}")
    temperature = _check_temperature(temperature)
    dev = resolve_device(device)
    index = prepare_index(train, dev)
    steps = sorted({min(k, index.size) for k in ks})
    y_dev = labels.to(dev)
    for start, sims, idx in iter_topk(test, index, steps[-1], chunk_size):
        neigh = y_dev[idx]
        if weights == "distance":
            s = sims.double()
            w = ((s - s[:, :1]) / temperature).exp()
        else:
            w = torch.ones(sims.shape, dtype=torch.float64, device=dev)
        scores = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64, device=dev)
        prev = 0
        for k in steps:
            scores.scatter_add_(1, neigh[:, prev:k], w[:, prev:k])
            prev = k
            yield start, k, scores


def knn_predict(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    chunk_size: int | None = None,
    device: Any = None,
    weights: str = "distance",
) -> dict[int, np.ndarray]:
    """Predicted class of every test item for each k: ``{k: (N_test,) int64}``."""
    ks = check_ks(ks)
    train, labels, test = _inputs(train_x, train_y, test_x)
    c = int(labels.max()) + 1
    preds: dict[int, np.ndarray] = {}
    for start, k, scores in _class_scores(train, labels, test, ks, temperature, chunk_size, device, weights, c):
        arr = preds.setdefault(k, np.empty(test.shape[0], dtype=np.int64))
        pred = scores.argmax(1)  # first maximum: the lowest class id wins a tie
        arr[start : start + len(pred)] = pred.cpu().numpy()
    return {k: preds[min(k, train.shape[0])] for k in ks}


def knn_evaluate(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    chunk_size: int | None = None,
    device: Any = None,
    weights: str = "distance",
    topk: Sequence[int] = (1, 5),
) -> dict[int, dict[str, float]]:
    """Top-1 / top-5 (``topk``) accuracy for each k: ``{k: {"top1": .., "top5": ..}}``."""
    ks = check_ks(ks)
    tops = check_ks(topk, "topk")
    train, labels, test = _inputs(train_x, train_y, test_x)
    y = as_labels(test_y, "test_y", test.shape[0])
    c = max(int(labels.max()), int(y.max())) + 1
    class_ids = y_dev = None
    hits: dict[int, dict[int, int]] = {}
    for start, k, scores in _class_scores(train, labels, test, ks, temperature, chunk_size, device, weights, c):
        if y_dev is None:
            y_dev = y.to(scores.device)
            class_ids = torch.arange(c, device=scores.device)
        yt = y_dev[start : start + scores.shape[0]]
        h = hits.setdefault(k, {t: 0 for t in tops})
        for t in tops:
            h[t] += int(_topk_hits(scores, yt, t, class_ids).sum())
    n_train = train.shape[0]
    return {k: {f"top{t}": 100.0 * hits[min(k, n_train)][t] / len(y) for t in tops} for k in ks}


def knn_accuracy(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    chunk_size: int | None = None,
    device: Any = None,
    weights: str = "distance",
) -> dict[int, float]:
    """Top-1 accuracy (percent) for each k: ``{k: top1}``. See the module docstring."""
    res = knn_evaluate(train_x, train_y, test_x, test_y, ks, temperature, chunk_size, device, weights, topk=(1,))
    return {k: v["top1"] for k, v in res.items()}
