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

__all__ = [
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
