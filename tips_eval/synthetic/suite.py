"""The ``demo`` suite: all 8 tasks of the TIPS paper on the embedded synthetic scenes.

Same task modules and protocols as the ``paper`` suite, at a small resolution
with short probe schedules, so a laptop CPU runs it in minutes. Labels come
from the generator (exact ground truth): semantic masks, metric depth,
camera-frame normals, the largest object's shape (classification), the scene
(instance retrieval across the two views) and the generated caption.
"""

from __future__ import annotations

from tips_eval.suites import Column, SuiteEntry

#: resolution of every demo evaluation (a multiple of 14 and of 16)
DEMO_RESOLUTION = 112
#: deepest point of any demo scene is ~13.3 m (the floor is a 14 m square)
DEMO_MAX_DEPTH = 15.0
#: short probe schedules (the paper suite keeps the reference ones); recorded in every record
DENSE = {"steps": 300, "batch_size": 16, "warmup_steps": 30}
#: a narrow DPT (the reference widths, 256 / (128, 256, 512, 1024), cost ~2 s a step on 2 CPU cores)
SMALL_DPT = {"dpt_channels": 32, "dpt_post_process_channels": (16, 32, 64, 128)}

_TRAIN_TEST = {"train": "train", "test": "test"}


def _entry(id_, task, label, metric, splits=None, params=None, higher=True):
    return SuiteEntry(
        id_, task, "Synthetic scenes", "synthetic", "synthetic", splits or _TRAIN_TEST,
        {"resolution": DEMO_RESOLUTION, **(params or {})}, table="demo",
        columns=(Column(label, metric, higher),))


DEMO: tuple[SuiteEntry, ...] = (
    _entry("demo_seg", "semantic_segmentation", "Seg mIoU", "mIoU", params={"head": "linear", **DENSE}),
    _entry("demo_depth", "depth", "Depth RMSE", "rmse", higher=False,
           params={"head": "linear_bins", "max_depth": DEMO_MAX_DEPTH, **DENSE}),
    _entry("demo_normals", "normals", "Normals RMSE", "angular_rmse", higher=False,
           params={"head": "dpt", "normals_loss": "angular", **DENSE, **SMALL_DPT, "steps": 600, "lr": 2e-3}),
    _entry("demo_instance", "instance_retrieval", "Instance R@1", "R@1",
           splits={"query": {"split": "test", "view": 1}, "index": {"split": "test", "view": 2}},
           params={"label": "instance"}),
    _entry("demo_knn", "knn", "kNN top-1", "top1", params={"ks": (5, 10, 20), "headline_k": 10}),
    # 180 training images: DINOv2's batch 256 would be one step an epoch; smaller batches, more epochs
    _entry("demo_linear", "linear_probe", "Linear top-1", "top1",
           params={"batch_size": 32, "epochs": 30, "heldout_fraction": 0.2}),
    SuiteEntry("demo_retrieval", "image_text_retrieval", "Synthetic scenes", "synthetic", "synthetic",
               {"test": "test"}, {"resolution": DEMO_RESOLUTION}, table="demo",
               columns=(Column("I->T R@1", "i2t_R@1"), Column("T->I R@1", "t2i_R@1"))),
    _entry("demo_zeroshot", "zeroshot_classification", "0-shot top-1", "top1", splits={"test": "test"},
           params={"templates": "photo"}),
)
