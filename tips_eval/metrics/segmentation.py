"""Semantic segmentation: confusion matrix and mIoU / aAcc / mAcc (mmseg IoUMetric).

mmseg 1.x ``IoUMetric.total_area_to_metrics``: per class
IoU = intersect / union and Acc = intersect / target area, both NaN where the
denominator is 0, summarised with ``np.nanmean``; aAcc = total intersect /
total target area. So a class absent from both prediction and target
(union 0) is left out of mIoU, a class absent from the target is left out of
mAcc, and a class predicted but absent from the target counts as IoU 0.
Pixels whose target is ``ignore_index`` are skipped. Accumulate one
confusion matrix over a whole split (sum per-image matrices), then call
:func:`mean_iou` once, as mmseg sums areas before dividing. Values are
percentages in [0, 100], not rounded (mmseg rounds its summary to 2 decimals).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tips_eval.errors import DataError

from ._common import to_numpy


def _int_map(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        t = torch.from_numpy(np.ascontiguousarray(to_numpy(x, name)))
    if t.dtype.is_floating_point:
        if not bool(torch.isfinite(t).all()) or bool((t != t.round()).any()):
            raise DataError(f"{name} must hold integer class ids, got non-integer or NaN values")
    elif t.dtype == torch.bool or t.dtype.is_complex:
        raise DataError(f"{name} must hold integer class ids, got dtype {t.dtype}")
    return t.long()


def segmentation_confusion(pred: Any, target: Any, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """(C, C) int64 confusion matrix, rows = target class, columns = predicted class.

    ``pred`` and ``target`` are label maps of the same shape (any rank: one
    image or a batch). Pixels with ``target == ignore_index`` are skipped.
    A prediction outside [0, C), or a target outside [0, C) that is not
    ``ignore_index``, raises :class:`DataError`.
    """
    c = int(num_classes)
    if c < 1:
        raise DataError(f"num_classes must be >= 1, got {num_classes}")
    p = _int_map(pred, "pred")
    t = _int_map(target, "target").to(p.device)
    if p.shape != t.shape:
        raise DataError(f"pred has shape {tuple(p.shape)} but target has shape {tuple(t.shape)}; they must match")
    p, t = p.reshape(-1), t.reshape(-1)
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= c):
        bad = p[(p < 0) | (p >= c)][0]
        raise DataError(f"pred has class id {int(bad)} outside [0, {c}) (num_classes={c})")
    if ignore_index is not None:
        keep = t != int(ignore_index)
        p, t = p[keep], t[keep]
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
        bad = t[(t < 0) | (t >= c)][0]
        raise DataError(
            f"target has class id {int(bad)} outside [0, {c}) and it is not ignore_index={ignore_index}",
            hint="check num_classes and the dataset's label mapping (e.g. reduce_zero_label)",
        )
    conf = torch.bincount(t * c + p, minlength=c * c).reshape(c, c)
    return conf.cpu().numpy().astype(np.int64)


def mean_iou(confusion: Any) -> dict[str, Any]:
    """``{"mIoU", "aAcc", "mAcc", "per_class", "per_class_acc"}`` from a (C, C) confusion matrix.

    ``per_class`` holds each class's IoU (percent) or ``None`` where the class
    is absent from both target and prediction; ``per_class_acc`` holds each
    class's recall or ``None`` where it is absent from the target.
    """
    m = to_numpy(confusion, "confusion")
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise DataError(f"confusion must be a square (C, C) matrix, got shape {m.shape}")
    if m.dtype.kind not in "iu" and not (m.dtype.kind == "f" and np.all(m == np.round(m))):
        raise DataError(f"confusion must hold pixel counts (integers), got dtype {m.dtype}")
    m = m.astype(np.float64)
    if np.any(m < 0):
        raise DataError("confusion has negative counts")
    total = m.sum()
    if total == 0:
        raise DataError("confusion is empty: no labelled pixel was counted (all ignored?)")
    inter = np.diag(m)
    area_target = m.sum(1)
    union = area_target + m.sum(0) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
        acc = np.where(area_target > 0, inter / area_target, np.nan)
    return {
        "mIoU": float(100.0 * np.nanmean(iou)),
        "aAcc": float(100.0 * inter.sum() / total),
        "mAcc": float(100.0 * np.nanmean(acc)),
        "per_class": [None if np.isnan(v) else float(100.0 * v) for v in iou],
        "per_class_acc": [None if np.isnan(v) else float(100.0 * v) for v in acc],
    }
