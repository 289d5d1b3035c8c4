"""Image-text retrieval recall and zero-shot classification (CLIP_benchmark conventions).

Both L2-normalise image and text embeddings and score with the cosine.

Retrieval (``clip_benchmark/metrics/zeroshot_retrieval.py``):
text->image R@k: per caption, a hit if its image is within the top-k images;
image->text R@k: per image, a hit if **any** of its captions is within the
top-k texts; each is averaged over captions / images.

Ties are defined, not left to ``torch.topk``: the rank of a positive is the
number of *negatives* scoring strictly higher (``ties="optimistic"``, the
default: an item identical to the positive cannot push it down) or at least
as high (``ties="pessimistic"``); a hit is rank < k. For image->text the
best-scoring caption of the image is used. Identical embeddings (duplicate
captions) are scored once so they tie exactly (BLAS rounding could otherwise
split them).

Zero-shot classification (``metrics/zeroshot_classification.py``): logits are
cosines between images and class embeddings (CLIP_benchmark's x100 scale does
not change the ranking); top-k accuracy with **the lowest class id winning a
tie**; ``mean_per_class_recall`` is the mean over classes present in
``labels`` of the per-class top-1 recall (sklearn ``balanced_accuracy_score``).
All values are percentages in [0, 100].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tips_eval.errors import DataError

from ._common import as_features, as_labels, check_ks, group_identical_rows, l2_normalize, resolve_device, same_dim


def _distinct(x: torch.Tensor, dev: torch.device):
    """(distinct normalised rows on dev, uid (N,), counts (G,)) of a feature matrix."""
    g = group_identical_rows(x)
    vec = l2_normalize(x[g.rep].to(dev))
    return vec, g.uid.to(dev), g.counts.to(dev)


def _chunk(chunk_size: int | None, n_cols: int) -> int:
    return chunk_size or int(max(1, min(4096, (128 * 2**20) // (4 * max(n_cols, 1)))))


def retrieval_recall(
    image_x: Any,
    text_x: Any,
    text_to_image: Any,
    ks: Sequence[int] = (1, 5, 10),
    ties: str = "optimistic",
    chunk_size: int | None = None,
    device: Any = None,
) -> dict[str, float]:
    """``{"i2t_R@1", "t2i_R@1", ...}`` for each k in ``ks``; see the module docstring.

    ``text_to_image[j]`` is the index (row of ``image_x``) of caption ``j``'s image.
    """
    ks = check_ks(ks)
    if ties not in ("optimistic", "pessimistic"):
        raise DataError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")
    img = as_features(image_x, "image_x")
    txt = as_features(text_x, "text_x")
    same_dim(img, txt, "image_x", "text_x")
    t2i = as_labels(text_to_image, "text_to_image", txt.shape[0])
    n_img, n_txt = img.shape[0], txt.shape[0]
    if int(t2i.max()) >= n_img:
        raise DataError(f"text_to_image has image index {int(t2i.max())} but image_x has only {n_img} rows")
    n_caps = torch.bincount(t2i, minlength=n_img)
    if bool((n_caps == 0).any()):
        first = int((n_caps == 0).nonzero()[0, 0])
        raise DataError(f"{int((n_caps == 0).sum())} images have no caption in text_to_image (first: image {first})")
    dev = resolve_device(device)
    img_vec, img_uid, img_cnt = _distinct(img, dev)
    txt_vec, txt_uid, txt_cnt = _distinct(txt, dev)
    t2i = t2i.to(dev)
    strict = ties == "optimistic"
    kt = torch.tensor(ks, device=dev)

    # text -> image: one positive per caption
    t2i_hits = torch.zeros(len(ks), dtype=torch.int64, device=dev)
    step = _chunk(chunk_size, img_vec.shape[0])
    for s in range(0, n_txt, step):
        scores = txt_vec[txt_uid[s : s + step]] @ img_vec.T  # (B, G_img)
        pos = scores.gather(1, img_uid[t2i[s : s + step]][:, None])
        above = scores > pos if strict else scores >= pos
        rank = (above.double() @ img_cnt.double()).long() - (0 if strict else 1)
        t2i_hits += (rank[None, :] < kt[:, None]).sum(1)

    # image -> text: any caption; ranks use the best-scoring caption
    order = torch.argsort(t2i, stable=True)
    caps = torch.full((n_img, int(n_caps.max())), -1, dtype=torch.int64, device=dev)
    start = torch.cumsum(n_caps.to(dev), 0) - n_caps.to(dev)
    slot = torch.arange(n_txt, device=dev) - start[t2i[order]]
    caps[t2i[order], slot] = txt_uid[order]
    i2t_hits = torch.zeros(len(ks), dtype=torch.int64, device=dev)
    step = _chunk(chunk_size, txt_vec.shape[0])
    for s in range(0, n_img, step):
        scores = img_vec[img_uid[s : s + step]] @ txt_vec.T  # (B, G_txt)
        c = caps[s : s + step]
        pos = scores.gather(1, c.clamp(min=0)).masked_fill(c < 0, float("-inf"))
        best = pos.max(1, keepdim=True).values
        if strict:
            rank = ((scores > best).double() @ txt_cnt.double()).long()
        else:
            n_pos_tied = ((pos == best) & (c >= 0)).sum(1)
            rank = ((scores >= best).double() @ txt_cnt.double()).long() - n_pos_tied
        i2t_hits += (rank[None, :] < kt[:, None]).sum(1)

    out: dict[str, float] = {}
    for i, k in enumerate(ks):
        out[f"i2t_R@{k}"] = 100.0 * int(i2t_hits[i]) / n_img
        out[f"t2i_R@{k}"] = 100.0 * int(t2i_hits[i]) / n_txt
    return out


def zeroshot_accuracy(
    image_x: Any,
    class_text_x: Any,
    labels: Any,
    topk: Sequence[int] = (1, 5),
    chunk_size: int | None = None,
    device: Any = None,
) -> dict[str, float]:
    """``{"top1", "top5", "mean_per_class_recall"}`` of cosine zero-shot classification."""
    tops = check_ks(topk, "topk")
    img = as_features(image_x, "image_x")
    cls = as_features(class_text_x, "class_text_x")
    same_dim(img, cls, "image_x", "class_text_x")
    y = as_labels(labels, "labels", img.shape[0])
    n_cls = cls.shape[0]
    if int(y.max()) >= n_cls:
        raise DataError(f"labels has class id {int(y.max())} but class_text_x has only {n_cls} classes")
    dev = resolve_device(device)
    cls_vec, cls_uid, _ = _distinct(cls, dev)
    y = y.to(dev)
    class_ids = torch.arange(n_cls, device=dev)
    hits = torch.zeros(len(tops), dtype=torch.int64, device=dev)
    kt = torch.tensor(tops, device=dev)
    preds = torch.empty_like(y)
    step = _chunk(chunk_size, n_cls)
    for s in range(0, img.shape[0], step):
        q = l2_normalize(img[s : s + step].to(dev))
        scores = (q @ cls_vec.T)[:, cls_uid]  # (B, C); identical classes tie exactly
        yt = y[s : s + step]
        s_true = scores.gather(1, yt[:, None])
        rank = (scores > s_true).sum(1) + ((scores == s_true) & (class_ids[None, :] < yt[:, None])).sum(1)
        hits += (rank[None, :] < kt[:, None]).sum(1)
        preds[s : s + step] = scores.argmax(1)  # first maximum = lowest class id
    n = y.shape[0]
    out = {f"top{t}": 100.0 * int(hits[i]) / n for i, t in enumerate(tops)}
    y_np, p_np = y.cpu().numpy(), preds.cpu().numpy()
    support = np.bincount(y_np, minlength=n_cls)
    correct = np.bincount(y_np[p_np == y_np], minlength=n_cls)
    present = support > 0
    out["mean_per_class_recall"] = float(100.0 * np.mean(correct[present] / support[present]))
    return out
