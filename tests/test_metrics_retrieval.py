"""Image-text retrieval recall and zero-shot accuracy vs brute-force loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tips_eval.errors import DataError
from tips_eval.metrics import retrieval_recall, zeroshot_accuracy


def _norm(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_recall(img, txt, t2i, ks, ties="optimistic"):
    img, txt = _norm(img.astype(np.float64)), _norm(txt.astype(np.float64))
    cmp = (lambda a, b: a > b) if ties == "optimistic" else (lambda a, b: a >= b)
    t2i_hits = {k: 0 for k in ks}
    for j, t in enumerate(txt):
        s = [float(np.dot(t, im)) for im in img]
        rank = sum(cmp(s[i], s[t2i[j]]) for i in range(len(img)) if i != t2i[j])
        for k in ks:
            t2i_hits[k] += rank < k
    i2t_hits = {k: 0 for k in ks}
    for i, im in enumerate(img):
        s = [float(np.dot(im, t)) for t in txt]
        best = max(s[j] for j in range(len(txt)) if t2i[j] == i)
        rank = sum(cmp(s[j], best) for j in range(len(txt)) if t2i[j] != i)
        for k in ks:
            i2t_hits[k] += rank < k
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = 100.0 * i2t_hits[k] / len(img)
        out[f"t2i_R@{k}"] = 100.0 * t2i_hits[k] / len(txt)
    return out


def make_pairs(seed, n_img=40, noise=1.6, dim=12):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n_img, dim))
    n_caps = rng.integers(1, 6, n_img)
    t2i = np.repeat(np.arange(n_img), n_caps)
    rng.shuffle(t2i)
    txt = img[t2i] + noise * rng.normal(size=(len(t2i), dim))
    return img.astype(np.float32), txt.astype(np.float32), t2i


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
def test_matches_brute_force(ties):
    img, txt, t2i = make_pairs(0)
    ks = (1, 5, 10)
    got = retrieval_recall(img, txt, t2i, ks=ks, ties=ties)
    ref = brute_recall(img, txt, t2i, ks, ties)
    assert got == pytest.approx(ref)
    assert 0 < got["i2t_R@1"] < got["i2t_R@5"] < 100 and got["t2i_R@1"] < got["t2i_R@10"]
    # i2t uses ANY caption: it must differ from a first-caption-only definition here
    assert got["i2t_R@1"] > got["t2i_R@1"]


def test_matches_clip_benchmark_topk_definition_without_ties():
    img, txt, t2i = make_pairs(1)
    scores = torch.from_numpy(_norm(txt.astype(np.float64)) @ _norm(img.astype(np.float64)).T)
    pos = torch.zeros_like(scores, dtype=torch.bool)
    pos[torch.arange(len(t2i)), torch.from_numpy(t2i)] = True
    got = retrieval_recall(img, txt, t2i, ks=(1, 5))
    for k in (1, 5):
        top_t2i = scores.topk(k, dim=1).indices
        t2i_r = pos.gather(1, top_t2i).any(1).float().mean().item() * 100
        top_i2t = scores.T.topk(k, dim=1).indices
        i2t_r = pos.T.gather(1, top_i2t).any(1).float().mean().item() * 100
        assert got[f"t2i_R@{k}"] == pytest.approx(t2i_r)
        assert got[f"i2t_R@{k}"] == pytest.approx(i2t_r)


def test_duplicate_captions_tie_by_the_documented_rule():
    # two images, one identical caption each: every positive ties with a negative
    img = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    txt = np.array([[1.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    t2i = np.array([0, 1])
    opt = retrieval_recall(img, txt, t2i, ks=(1, 2))
    pes = retrieval_recall(img, txt, t2i, ks=(1, 2), ties="pessimistic")
    assert opt == {"i2t_R@1": 100.0, "t2i_R@1": 100.0, "i2t_R@2": 100.0, "t2i_R@2": 100.0}
    assert pes == {"i2t_R@1": 0.0, "t2i_R@1": 0.0, "i2t_R@2": 100.0, "t2i_R@2": 100.0}


def test_many_duplicate_captions_across_images_match_brute_force():
    img, txt, t2i = make_pairs(2, n_img=60, noise=1.0, dim=20)
    rng = np.random.default_rng(3)
    src = rng.integers(0, len(txt), 40)
    dst = rng.integers(0, len(txt), 40)
    txt[dst] = txt[src]  # identical embeddings, now captioning (mostly) other images
    img[5] = img[9]  # and two identical images
    for ties in ("optimistic", "pessimistic"):
        got = retrieval_recall(img, txt, t2i, ks=(1, 3, 10), ties=ties)
        assert got == pytest.approx(brute_recall(img, txt, t2i, (1, 3, 10), ties)), ties
    assert retrieval_recall(img, txt, t2i, chunk_size=7) == retrieval_recall(img, txt, t2i)


def test_retrieval_bad_inputs():
    img, txt, t2i = make_pairs(4, n_img=6)
    with pytest.raises(DataError, match="no caption"):
        retrieval_recall(np.concatenate([img, img[:1]]), txt, t2i)
    with pytest.raises(DataError, match="text_to_image"):
        retrieval_recall(img[:3], txt, t2i)
    with pytest.raises(DataError, match="text_to_image"):
        retrieval_recall(img, txt, t2i[:-1])
    bad = txt.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="text_x"):
        retrieval_recall(img, bad, t2i)
    with pytest.raises(DataError, match="ties"):
        retrieval_recall(img, txt, t2i, ties="random")


def brute_zeroshot(img, cls, labels, tops):
    img, cls = _norm(img.astype(np.float64)), _norm(cls.astype(np.float64))
    hits = {t: 0 for t in tops}
    preds = []
    for x, y in zip(img, labels):
        s = [float(np.dot(x, c)) for c in cls]
        rank = sum(s[c] > s[y] or (s[c] == s[y] and c < y) for c in range(len(cls)))
        for t in tops:
            hits[t] += rank < t
        preds.append(int(np.argmax(s)))
    return {f"top{t}": 100.0 * hits[t] / len(labels) for t in tops}, np.array(preds)


def test_zeroshot_matches_brute_force_and_sklearn_balanced_accuracy():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    cls = rng.normal(size=(12, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 150)  # classes 10, 11 never occur but can be predicted
    img = (cls[labels] + 1.2 * rng.normal(size=(150, 10))).astype(np.float32)
    got = zeroshot_accuracy(img, cls, labels, topk=(1, 3, 5))
    ref, preds = brute_zeroshot(img, cls, labels, (1, 3, 5))
    for key, v in ref.items():
        assert got[key] == pytest.approx(v)
    assert 0 < got["top1"] < got["top5"] < 100
    with pytest.warns(UserWarning):  # sklearn warns about predicted classes absent from y_true
        expected = 100 * balanced_accuracy_score(labels, preds)
    assert got["mean_per_class_recall"] == pytest.approx(expected)
    assert got["mean_per_class_recall"] != pytest.approx(got["top1"])


def test_zeroshot_identical_class_embeddings_lowest_id_wins():
    # like ImageNet's two "crane" classes: identical prompts give identical embeddings
    rng = np.random.default_rng(1)
    cls = rng.normal(size=(8, 16)).astype(np.float32)
    cls[6] = cls[2]
    img = np.repeat(cls[[2]], 4, 0) + 0.01 * rng.normal(size=(4, 16)).astype(np.float32)
    assert zeroshot_accuracy(img, cls, [2, 2, 2, 2])["top1"] == 100.0
    got = zeroshot_accuracy(img, cls, [6, 6, 6, 6], topk=(1, 2))
    assert got["top1"] == 0.0 and got["top2"] == 100.0


def test_zeroshot_bad_inputs():
    cls = np.eye(3, dtype=np.float32)
    with pytest.raises(DataError, match="labels"):
        zeroshot_accuracy(cls, cls, [0, 1, 3])
    with pytest.raises(DataError, match="labels"):
        zeroshot_accuracy(cls, cls, [0, 1])
    with pytest.raises(DataError, match="class_text_x"):
        zeroshot_accuracy(cls, np.full((3, 3), np.inf, dtype=np.float32), [0, 1, 2])
