"""Pure metric functions: numpy arrays or torch tensors in, plain Python floats out.

Percentages are in [0, 100]. Every function validates its inputs and raises
:class:`tips_eval.errors.DataError` (one line, naming the argument) on NaN/Inf
features, mismatched lengths or out-of-range labels. Each module's docstring
records the reference protocol it follows and its tie-breaking rules.
"""

from .dense import depth_metrics, normal_metrics
from .instance import instance_retrieval_metrics, mean_precision_at_k, recall_at_1
from .knn import knn_accuracy, knn_evaluate, knn_predict
from .retrieval import retrieval_recall, zeroshot_accuracy
from .segmentation import mean_iou, segmentation_confusion

#: One line per metric with the protocol choices a result record should carry
#: (the module docstrings give the sources and the reasons).
PROTOCOL_NOTES: dict[str, str] = {
    "knn": "cosine on L2-normalised features; one top-max(k) per test chunk; vote exp((sim - max sim) / T) "
    "per class (same ranking as DINO exp(sim/T) and DINOv2 softmax); k clamped to the train size; equal "
    "similarities -> lower train index; tied vote -> lowest class id; top-5 needs a vote for the true class",
    "retrieval": "cosine; t2i per caption, i2t per image with ANY caption (CLIP_benchmark); rank = negatives "
    "scoring strictly higher (ties optimistic); identical embeddings tie exactly",
    "zeroshot": "cosine to class embeddings; lowest class id wins a tie; mean_per_class_recall over classes "
    "present in the labels",
    "uned": "dot product of L2-normalised descriptors; hit = same label and same domain; mMP@k denominator "
    "min(k, n_q), queries with n_q = 0 left out of mMP; exclude_self drops the query itself",
    "segmentation": "mmseg IoUMetric: areas summed over the split, IoU/Acc NaN where the denominator is 0, "
    "nanmean; ignore_index pixels skipped; not rounded",
    "depth": "per image over valid pixels (target > 0 and valid), then mean over images (mmseg / Probe3D); "
    "delta in percent; predictions floored at 1e-9 in log10 and delta; optional per-image scale_shift "
    "(least squares) or median scale alignment",
    "normals": "both normalised; angle = acos(clamp(dot)) in degrees; per image then mean over images "
    "(Probe3D); within_* use strict <",
}

__all__ = [
    "PROTOCOL_NOTES",
    "knn_accuracy",
    "knn_evaluate",
    "knn_predict",
    "retrieval_recall",
    "zeroshot_accuracy",
    "mean_precision_at_k",
    "recall_at_1",
    "instance_retrieval_metrics",
    "segmentation_confusion",
    "mean_iou",
    "depth_metrics",
    "normal_metrics",
]
