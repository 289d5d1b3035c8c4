"""Semantic segmentation probe on frozen patch tokens (DINOv2 "lin." protocol; DPT as an option).

Default head ``linear``: BatchNorm + 1x1 conv on the last block's patch
tokens, cross-entropy with ignore 255, 40k iterations x 16, AdamW 1e-3
(wd 1e-4), poly schedule with 1500 warm-up iterations (PROTOCOLS.md s.1).
Metrics: mIoU (headline), aAcc, mAcc from one confusion matrix over the
test split at the original label resolution (mmseg ``IoUMetric``); the IoU
of every class is in ``info.per_class_iou``. Engine, feature sources and
inference modes: :mod:`._dense`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tips_eval.errors import DataError
from tips_eval.task_api import TaskResult, register_task

from ._dense import DenseConfig, run_dense


@dataclass
class SegmentationConfig(DenseConfig):
    head: str = "linear"  # linear | dpt


@register_task("semantic_segmentation", SegmentationConfig, roles=("train", "test"),
               description="semantic segmentation probe (DINOv2 lin.; mIoU)")
def run(encoder, data, cfg: SegmentationConfig, ctx) -> TaskResult:
    train, test = data["train"], data["test"]
    c_train, c_test = getattr(train, "num_classes", None), getattr(test, "num_classes", None)
    if not c_train:
        raise DataError(f"dataset {train.name}/{train.split} has no num_classes; the segmentation task needs it")
    if c_test and c_test != c_train:
        raise DataError(f"train split {train.name}/{train.split} has {c_train} classes but test split "
                        f"{test.name}/{test.split} has {c_test}")
    n = int(c_train)
    return run_dense(
        encoder, data, cfg, ctx, "segmentation", num_outputs=n, loss_kw={"ignore_index": 255}, head_kw={},
        target_kw={"num_classes": n}, eval_kw={"num_classes": n, "headline": "mIoU"},
        protocol_extra={"num_classes": n, "ignore_index": 255, "loss": "cross-entropy (ignore 255)",
                        "metric": "mIoU over classes present in target or prediction (mmseg IoUMetric)"})
