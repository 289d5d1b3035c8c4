"""Oracle tests: tips_eval.metrics against mmseg 1.2.2's IoUMetric and DepthMetric.

IoUMetric (mmseg/evaluation/metrics/iou_metric.py): per image, pixels whose
label is ``ignore_index`` are dropped and torch.histc counts intersection,
prediction and label areas; areas are summed over the split, then per class
IoU = I / U and Acc = I / label area (NaN where 0/0), mIoU / mAcc = nanmean,
aAcc = sum I / sum label area; ``compute_metrics`` reports percentages rounded
to 2 decimals. Ours agrees exactly (same pooling, same NaN rules).
Difference: a predicted class id outside [0, C) is silently left out of
mmseg's prediction histogram (a miss); ours refuses it with a DataError.

DepthMetric (mmseg/evaluation/metrics/depth_metric.py): mask = min_depth_eval <
gt < max_depth_eval (strict; defaults 0 and inf) and, with crop_type="nyu_crop",
rows 45:471 x cols 41:601; predictions are never clipped; each metric is
computed per image and the per-image values are averaged (= our
``reduction="images"``). Differences, not bent here:
- d1-d3 are fractions in mmseg, percentages in ours (compared as 100 * d).
- an image with no valid pixel makes every mmseg metric NaN (0/0 enters the
  average); ours leaves that image out of the average.
- a prediction <= 0 gives NaN/-inf in mmseg's log10 and a ratio of +-inf;
  ours clamps predictions to >= 1e-9 in log10 and delta (a miss, not NaN).
- mmseg's window is exclusive at max_depth_eval; tips-eval's NYU reader keeps
  depth <= 10 m (inclusive), so a pixel at exactly 10.0 m counts in ours only.
- mmseg also reports sq_rel, rmse_log and silog; ours does not compute them.
- mmseg 1.2.2 bug: ``DepthMetric(depth_metrics=[...])`` raises TypeError
  (``isinstance(x, [tuple, list])``), so only the default full list works.
Agreement is checked where definitions match: positive predictions, every
image with a valid pixel, masks built the same way.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tips_eval.errors import DataError
from tips_eval.metrics import depth_metrics, mean_iou, segmentation_confusion

pytestmark = pytest.mark.mmseg

NUM_CLASSES = 7


@pytest.fixture(scope="module", autouse=True)
def mmseg():
    pytest.importorskip("mmseg", reason="needs the optional [mmseg] extra: pip install -e '.[mmseg]'")
    from tips_eval.mmseg import import_mmseg

    return import_mmseg()



def _seg_batch(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Images of different sizes; ~20% ignore; class 5 predicted but never labelled, class 6 in neither."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in [(17, 23), (32, 32), (9, 40)]:
        label = torch.randint(0, 5, (h, w), generator=g)
        label[torch.rand(h, w, generator=g) < 0.2] = 255
        pred = torch.randint(0, 6, (h, w), generator=g)
        agree = (torch.rand(h, w, generator=g) < 0.5) & (label != 255)
        out.append((torch.where(agree, label, pred), label))
    return out


def _iou_metric(batch):
    from mmseg.evaluation import IoUMetric

    metric = IoUMetric(ignore_index=255)
    metric.dataset_meta = {"classes": tuple(f"c{i}" for i in range(NUM_CLASSES))}
    samples = [{"pred_sem_seg": {"data": p[None]}, "gt_sem_seg": {"data": t[None]}} for p, t in batch]
    metric.process({}, samples)
    areas = [tuple(a.clone() for a in r) for r in metric.results]
    return metric.evaluate(len(batch)), areas


def test_iou_metric_matches_mmseg():
    from mmseg.evaluation import IoUMetric

    batch = _seg_batch()
    reported, areas = _iou_metric(batch)
    conf = sum(segmentation_confusion(p, t, NUM_CLASSES, ignore_index=255) for p, t in batch)
    ours = mean_iou(conf)
    # mmseg's summary: percentages rounded to 2 decimals, held in float32 (histc areas are float32)
    for key in ("mIoU", "aAcc", "mAcc"):
        assert float(reported[key]) == pytest.approx(round(ours[key], 2), rel=0, abs=1e-5), key
    # per image, mmseg's areas are our confusion matrix's diagonal / column / row sums
    for (p, t), (inter, union, area_pred, area_label) in zip(batch, areas):
        c = segmentation_confusion(p, t, NUM_CLASSES, ignore_index=255)
        np.testing.assert_array_equal(inter.numpy(), np.diag(c))
        np.testing.assert_array_equal(area_pred.numpy(), c.sum(0))
        np.testing.assert_array_equal(area_label.numpy(), c.sum(1))
        np.testing.assert_array_equal(union.numpy(), c.sum(0) + c.sum(1) - np.diag(c))
    # unrounded per class, through mmseg's own total_area_to_metrics (float64 areas)
    totals = [sum(a[i] for a in areas).double() for i in range(4)]
    theirs = IoUMetric.total_area_to_metrics(*totals, ["mIoU"])
    iou = [None if math.isnan(v) else 100 * v for v in theirs["IoU"]]
    acc = [None if math.isnan(v) else 100 * v for v in theirs["Acc"]]
    assert [v is None for v in iou] == [v is None for v in ours["per_class"]]
    assert [v is None for v in acc] == [v is None for v in ours["per_class_acc"]]
    # the NaN rules are exercised: 6 absent from both (no IoU), 5 predicted only (IoU 0, no Acc)
    assert ours["per_class"][6] is None and ours["per_class"][5] == 0.0 and ours["per_class_acc"][5] is None
    for a, b in zip(iou + acc, ours["per_class"] + ours["per_class_acc"]):
        if a is not None:
            assert b == pytest.approx(a, abs=1e-10)
    assert ours["mIoU"] == pytest.approx(100 * np.nanmean(theirs["IoU"]), abs=1e-10)
    assert ours["mAcc"] == pytest.approx(100 * np.nanmean(theirs["Acc"]), abs=1e-10)
    assert ours["aAcc"] == pytest.approx(100 * float(theirs["aAcc"]), abs=1e-10)


def test_iou_oracle_is_sensitive():
    """The comparison above would catch a metric that averaged per image instead of pooling areas."""
    batch = _seg_batch(seed=1)
    reported, _ = _iou_metric(batch)
    per_image = np.mean([mean_iou(segmentation_confusion(p, t, NUM_CLASSES))["mIoU"] for p, t in batch])
    assert abs(per_image - reported["mIoU"]) > 0.05


def test_out_of_range_prediction_differs():
    """mmseg counts a predicted id >= C as a plain miss (left out of histc); ours refuses it."""
    label = torch.tensor([[0, 1], [1, 255]])
    pred = torch.tensor([[0, 9], [1, 1]])
    reported, _ = _iou_metric([(pred, label)])
    assert reported["aAcc"] == pytest.approx(100 * 2 / 3, abs=0.01)
    with pytest.raises(DataError, match="pred has class id 9"):
        segmentation_confusion(pred, label, NUM_CLASSES)


def _depth_batch(seed: int = 0, sizes=((12, 16), (20, 9), (7, 7))) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """float64 (pred, gt) pairs; ~25% of gt missing (0); positive predictions."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        gt = 0.2 + 9.8 * torch.rand(h, w, generator=g, dtype=torch.float64)
        gt[torch.rand(h, w, generator=g) < 0.25] = 0.0
        noise = torch.exp(0.3 * torch.randn(h, w, generator=g, dtype=torch.float64))
        out.append(((gt.clamp(min=0.5) * noise).clamp(min=1e-3), gt))
    return out


def _depth_metric(batch, **kw) -> dict:
    from mmseg.evaluation import DepthMetric

    metric = DepthMetric(**kw)
    metric.dataset_meta = {}
    metric.process({}, [{"pred_depth_map": {"data": p[None]}, "gt_depth_map": {"data": t[None]}} for p, t in batch])
    return metric.evaluate(len(batch))


PAIRS = {"rmse": "rmse", "abs_rel": "abs_rel", "log10": "log10", "delta1": "d1", "delta2": "d2", "delta3": "d3"}


def _ours(batch, valid_fn) -> dict:
    """Our metric on each image (sizes differ), averaged over images as mmseg does."""
    per = [depth_metrics(p, t, valid=valid_fn(t), reduction="images") for p, t in batch]
    return {k: float(np.mean([m[k] for m in per])) for k in per[0]}


def _compare(ours: dict, theirs: dict) -> None:
    for k, m in PAIRS.items():
        scale = 100.0 if k.startswith("delta") else 1.0  # mmseg's d1-d3 are fractions
        assert ours[k] == pytest.approx(scale * theirs[m], rel=1e-6, abs=1e-9), k


def test_depth_metric_matches_mmseg_per_image():
    batch = _depth_batch()
    _compare(_ours(batch, lambda t: t > 0), _depth_metric(batch))


def test_depth_metric_matches_mmseg_with_eval_window():
    batch = _depth_batch(seed=2)
    lo, hi = 1e-3, 8.0
    _compare(_ours(batch, lambda t: (t > lo) & (t < hi)), _depth_metric(batch, min_depth_eval=lo, max_depth_eval=hi))


def test_batched_reduction_images_matches_mmseg_and_differs_from_pixels():
    """One (B, H, W) call with reduction='images' equals mmseg's per-sample average."""
    batch = _depth_batch(seed=3, sizes=((10, 12),) * 4)
    pred, gt = torch.stack([p for p, _ in batch]), torch.stack([t for _, t in batch])
    ours = depth_metrics(pred, gt, reduction="images")
    _compare(ours, _depth_metric(batch))
    pooled = depth_metrics(pred, gt, reduction="pixels")
    assert abs(pooled["rmse"] - ours["rmse"]) > 1e-4  # so the comparison above can fail


def test_pixel_reduction_is_mmseg_on_one_pooled_sample():
    batch = _depth_batch(seed=4)
    pred = torch.cat([p.flatten() for p, _ in batch])[None]
    gt = torch.cat([t.flatten() for _, t in batch])[None]
    _compare(depth_metrics(pred, gt, reduction="pixels"), _depth_metric([(pred, gt)]))


def test_nyu_crop_is_our_eigen_crop():
    from mmseg.evaluation import DepthMetric

    from tips_eval.data.nyu import eigen_crop_mask

    crop = torch.from_numpy(eigen_crop_mask(480, 640))
    theirs = DepthMetric(crop_type="nyu_crop")._get_eval_mask(torch.full((480, 640), 5.0))
    np.testing.assert_array_equal(theirs.numpy(), crop.numpy())
    rows = _depth_batch(seed=5, sizes=((480, 1),) * 2)
    batch = [(p.expand(480, 640).contiguous(), t.expand(480, 640).contiguous()) for p, t in rows]
    window = dict(crop_type="nyu_crop", min_depth_eval=1e-3, max_depth_eval=10.0)
    _compare(_ours(batch, lambda t: (t > 1e-3) & (t < 10.0) & crop), _depth_metric(batch, **window))


def test_image_without_valid_pixel_differs():
    """mmseg averages a 0/0 NaN for an image with no valid depth; ours leaves the image out."""
    batch = _depth_batch(seed=6, sizes=((6, 8),) * 3)
    empty = (torch.ones(6, 8, dtype=torch.float64), torch.zeros(6, 8, dtype=torch.float64))
    theirs = _depth_metric(batch + [empty])
    assert math.isnan(theirs["rmse"]) and math.isnan(theirs["d1"])
    pred = torch.stack([p for p, _ in batch] + [empty[0]])
    gt = torch.stack([t for _, t in batch] + [empty[1]])
    _compare(depth_metrics(pred, gt, reduction="images"), _depth_metric(batch))  # = mmseg without the empty image
