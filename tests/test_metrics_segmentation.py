"""Confusion matrix and mIoU vs sklearn, torchmetrics and an mmseg-style histogram loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tips_eval.errors import DataError
from tips_eval.metrics import mean_iou, segmentation_confusion


def mmseg_style(preds, targets, c, ignore=255):
    """mmseg IoUMetric: per-image histograms summed, then IoU/Acc with NaN -> nanmean."""
    inter, union, area_t = np.zeros(c), np.zeros(c), np.zeros(c)
    for p, t in zip(preds, targets):
        keep = t != ignore
        p, t = p[keep], t[keep]
        i = np.histogram(p[p == t], bins=c, range=(0, c))[0]
        ap = np.histogram(p, bins=c, range=(0, c))[0]
        at = np.histogram(t, bins=c, range=(0, c))[0]
        inter += i
        union += ap + at - i
        area_t += at
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = inter / union, inter / area_t
    return {"mIoU": 100 * np.nanmean(iou), "aAcc": 100 * inter.sum() / area_t.sum(), "mAcc": 100 * np.nanmean(acc), "iou": iou}


def make_maps(seed, b=3, h=17, w=13, c=6):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, c, (b, h, w))
    p = np.where(rng.random((b, h, w)) < 0.6, t, rng.integers(0, c, (b, h, w)))
    t[rng.random((b, h, w)) < 0.1] = 255
    return p, t


def test_confusion_matches_sklearn_and_skips_ignored_pixels():
    from sklearn.metrics import confusion_matrix

    p, t = make_maps(0)
    conf = segmentation_confusion(p, t, 6)
    keep = t != 255
    np.testing.assert_array_equal(conf, confusion_matrix(t[keep], p[keep], labels=range(6)))
    assert conf.dtype == np.int64 and conf.shape == (6, 6) and conf.sum() == keep.sum()
    # rows are targets: an asymmetric case pins the orientation
    assert segmentation_confusion([[1, 1]], [[0, 0]], 2).tolist() == [[0, 2], [0, 0]]
    # torch tensors and a per-image sum give the same matrix
    total = sum(segmentation_confusion(torch.from_numpy(pi), torch.from_numpy(ti), 6) for pi, ti in zip(p, t))
    np.testing.assert_array_equal(total, conf)


def test_mean_iou_matches_mmseg_style_and_torchmetrics():
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    p, t = make_maps(1)
    res = mean_iou(segmentation_confusion(p, t, 6))
    ref = mmseg_style(p, t, 6)
    assert res["mIoU"] == pytest.approx(ref["mIoU"])
    assert res["aAcc"] == pytest.approx(ref["aAcc"])
    assert res["mAcc"] == pytest.approx(ref["mAcc"])
    np.testing.assert_allclose(res["per_class"], 100 * ref["iou"])
    pt, tt = torch.from_numpy(p), torch.from_numpy(t)
    assert res["mIoU"] == pytest.approx(100 * MulticlassJaccardIndex(6, ignore_index=255)(pt, tt).item(), abs=1e-4)
    assert res["aAcc"] == pytest.approx(100 * MulticlassAccuracy(6, ignore_index=255, average="micro")(pt, tt).item(), abs=1e-4)
    assert res["mAcc"] == pytest.approx(100 * MulticlassAccuracy(6, ignore_index=255, average="macro")(pt, tt).item(), abs=1e-4)
    assert res["mIoU"] != pytest.approx(res["aAcc"])


def test_absent_classes_are_left_out_like_mmseg():
    # class 3 absent everywhere, class 2 predicted but never a target
    t = np.array([[0, 0, 1, 1, 255]])
    p = np.array([[0, 2, 1, 1, 3]])
    res = mean_iou(segmentation_confusion(p, t, 4))
    assert res["per_class"] == [50.0, 100.0, 0.0, None]
    assert res["mIoU"] == pytest.approx(50.0)  # (50 + 100 + 0) / 3
    assert res["per_class_acc"] == [50.0, 100.0, None, None]
    assert res["mAcc"] == pytest.approx(75.0)
    assert res["aAcc"] == pytest.approx(75.0)
    ref = mmseg_style(p, t, 4)
    assert res["mIoU"] == pytest.approx(ref["mIoU"]) and res["mAcc"] == pytest.approx(ref["mAcc"])


def test_ignore_index_none_counts_every_pixel():
    t = np.array([[0, 1, 1]])
    p = np.array([[0, 1, 0]])
    assert segmentation_confusion(p, t, 2, ignore_index=None).sum() == 3


def test_segmentation_bad_inputs():
    t = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(DataError, match="pred has class id 5"):
        segmentation_confusion(np.full((4, 4), 5), t, 3)
    with pytest.raises(DataError, match="pred has class id -1"):
        segmentation_confusion(np.full((4, 4), -1), t, 3)
    with pytest.raises(DataError, match="target has class id 7"):
        segmentation_confusion(t, np.full((4, 4), 7), 3)
    with pytest.raises(DataError, match="shape"):
        segmentation_confusion(t, t[:2], 3)
    with pytest.raises(DataError, match="integer"):
        segmentation_confusion(t + 0.5, t, 3)
    with pytest.raises(DataError, match="empty"):
        mean_iou(segmentation_confusion(t, np.full((4, 4), 255), 3))
    with pytest.raises(DataError, match="square"):
        mean_iou(np.zeros((2, 3)))
