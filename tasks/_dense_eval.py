"""Evaluation of a trained dense head at the original label resolution, plus qualitative output.

Test features always come from the feature engine (``ctx.features``):

- ``whole``: each image squashed to the training resolution, the head's
  output upsampled bilinearly (align_corners=False) to the label size.
- ``slide`` (DINOv2 / mmseg ``slide``): the short side resized to the window
  (= training resolution), windows with stride 2/3 of it (the last one
  clamped to the border) -- every window is an item of a cached
  :class:`SlideView`; window outputs are summed into the resized image and
  divided by the per-pixel window count, then upsampled to the label size.

Metrics: segmentation = one confusion matrix over the split (mmseg IoUMetric);
depth / normals = per image over its valid pixels, averaged over images.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tips_eval.errors import DataError
from tips_eval.metrics import depth_metrics, mean_iou, normal_metrics, segmentation_confusion

from ._dense_data import read_target
from ._dense_heads import predict
from ._dense_train import as_layers, layer_batch

DEPTH_KEYS = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")
NORMAL_KEYS = ("angular_rmse", "mean", "median", "within_11.25", "within_22.5", "within_30")


@torch.no_grad()
def _head_out(head, fs, rows: np.ndarray, slots: list[int], size: tuple[int, int], device) -> torch.Tensor:
    cls, patch = layer_batch(fs, rows, slots)
    return head(as_layers(cls.to(device), patch.to(device)), size).float()


def iter_outputs(head, fs, slots: list[int], size: tuple[int, int], device, batch: int, good: np.ndarray,
                 slide=None):
    """Yield ``(i, out (1, C, h, w))`` for every usable test image, in order: the head's output at the
    training resolution (``whole``) or stitched over the resized image (``slide``)."""
    head.eval()
    if slide is None:
        rows = np.flatnonzero(good)
        for s in range(0, len(rows), batch):
            chunk = rows[s:s + batch]
            out = _head_out(head, fs, chunk, slots, size, device)
            for j, i in enumerate(chunk):
                yield int(i), out[j:j + 1]
        return
    view, fs_win = slide
    by_image: dict[int, list[int]] = {}
    for k, (i, _, _) in enumerate(view.windows):
        by_image.setdefault(i, []).append(k)
    win_good = np.asarray(fs_win.good_mask, dtype=bool)
    for i in np.flatnonzero(good):
        ks = [k for k in by_image.get(int(i), []) if win_good[k]]
        if not ks:
            continue
        rh, rw = view.resized[int(i)]
        canvas, count = None, torch.zeros(1, 1, rh, rw, device=device)
        for s in range(0, len(ks), batch):
            chunk = np.array(ks[s:s + batch])
            out = _head_out(head, fs_win, chunk, slots, (view.window, view.window), device)
            if canvas is None:
                canvas = torch.zeros(1, out.shape[1], rh, rw, device=device)
            for j, k in enumerate(chunk):
                _, y, x = view.windows[k]
                hh, ww = min(view.window, rh - y), min(view.window, rw - x)
                canvas[:, :, y:y + hh, x:x + ww] += out[j:j + 1, :, :hh, :ww]
                count[:, :, y:y + hh, x:x + ww] += 1
        yield int(i), canvas / count.clamp(min=1)


def _to_label(out: torch.Tensor, hw: tuple[int, int], kind: str) -> torch.Tensor:
    if tuple(out.shape[-2:]) != tuple(hw):
        out = F.interpolate(out, size=hw, mode="bilinear", align_corners=False)
    return predict(out, kind)[0]


class Evaluator:
    """Accumulates one split's metrics from per-image predictions at label resolution."""

    def __init__(self, ds, kind: str, *, num_classes: int | None = None, min_depth: float = 0.001,
                 max_depth: float = 10.0, align: str | None = None, eval_mask: Callable | None = None):
        self.ds, self.kind, self.num_classes = ds, kind, num_classes
        self.min_depth, self.max_depth, self.align, self.eval_mask = min_depth, max_depth, align, eval_mask
        self.confusion = np.zeros((num_classes, num_classes), np.int64) if kind == "segmentation" else None
        self.per_image: list[dict] = []
        self.n_images, self.n_empty = 0, 0

    def add(self, i: int, out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Score image ``i`` from the head output ``out`` (1, C, h, w), upsampled to its label size; returns
        (target, prediction) maps (labels / depth / (H, W, 3) normals) for the qualitative figure."""
        value, valid = read_target(self.ds, i, self.kind, self.num_classes)
        pred = _to_label(out, valid.shape, self.kind)
        self.n_images += 1
        if self.kind == "segmentation":
            labels = pred.argmax(0).cpu().numpy()
            self.confusion += segmentation_confusion(labels, value, self.num_classes, ignore_index=255)
            return value, labels
        if self.kind == "depth":
            p = pred[0].clamp(self.min_depth, self.max_depth).cpu().numpy()
            m = valid & (value >= self.min_depth) & (value <= self.max_depth)
            if self.eval_mask is not None:
                m &= self.eval_mask(*value.shape)
            if m.any():
                self.per_image.append(depth_metrics(p, value, valid=m, align=self.align))
            else:
                self.n_empty += 1
            return value, p
        p = pred.permute(1, 2, 0).cpu().numpy()
        if valid.any():
            self.per_image.append(normal_metrics(p, value, valid=valid))
        else:
            self.n_empty += 1
        return value, p

    def result(self) -> tuple[dict[str, float], dict]:
        """(metrics, info) for the split."""
        if self.kind == "segmentation":
            if self.confusion.sum() == 0:
                raise DataError(f"{self.ds.name}/{self.ds.split}: no labelled pixel to evaluate (all ignored?)")
            r = mean_iou(self.confusion)
            names = list(getattr(self.ds, "class_names", None) or range(self.num_classes))
            return ({"mIoU": r["mIoU"], "aAcc": r["aAcc"], "mAcc": r["mAcc"]},
                    {"per_class_iou": {str(n): v for n, v in zip(names, r["per_class"])}})
        if not self.per_image:
            where = f" in [{self.min_depth:g}, {self.max_depth:g}] m" if self.kind == "depth" else ""
            raise DataError(f"{self.ds.name}/{self.ds.split}: no test image has a valid {self.kind} pixel{where}",
                            hint="is the depth in metres? the readers warn when it looks like millimetres"
                            if self.kind == "depth" else None)
        keys = DEPTH_KEYS if self.kind == "depth" else NORMAL_KEYS
        metrics = {k: float(np.mean([m[k] for m in self.per_image])) for k in keys}
        return metrics, {"images_without_valid_pixels": self.n_empty}


def save_qualitative(ctx, kind: str, samples: list[tuple], num_classes: int | None, title: str) -> dict:
    """``predictions.npz`` + ``predictions.png`` of a few test images; {} when there is no out_dir."""
    npz_path = ctx.artifact_path("predictions.npz")
    if npz_path is None or not samples:
        return {}
    from tips_eval.plots import dense_figure

    h, w = samples[0][1].shape[:2]
    images, targets, preds = [], [], []
    for img, target, pred in samples:
        images.append(np.asarray(img.convert("RGB").resize((w, h)), dtype=np.uint8))
        targets.append(_resize_map(target, (h, w)))
        preds.append(_resize_map(pred, (h, w)))
    arrays = {"images": np.stack(images), "targets": np.stack(targets), "preds": np.stack(preds),
              "kind": np.array(kind)}
    if num_classes is not None:
        arrays["num_classes"] = np.array(int(num_classes))
    np.savez_compressed(npz_path, **arrays)
    png = ctx.artifact_path("predictions.png")
    dense_figure(list(arrays["images"]), list(arrays["targets"]), list(arrays["preds"]), kind, png,
                 num_classes=num_classes, title=title)
    return {"predictions": str(npz_path), "figure": str(png)}


def _resize_map(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if a.shape[:2] == tuple(hw):
        return a
    t = torch.from_numpy(np.ascontiguousarray(a)).float()
    t = t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]
    t = F.interpolate(t, size=hw, mode="nearest-exact")[0]
    out = t.permute(1, 2, 0) if a.ndim == 3 else t[0]
    return out.numpy().astype(a.dtype)
