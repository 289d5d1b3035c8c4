"""ADE20K SceneParsing (``ADEChallengeData2016``): 150 classes, label 0 ignored.

Layout (as shipped)::

    ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*.png   grayscale, 0 = other, 1..150

Split ``train`` reads ``training``, ``val`` reads ``validation`` (2,000
images). Labels follow ``reduce_zero_label`` as in mmseg / the DINOv2 linear
config and DINOv3's ``ReduceZeroLabel``: file value 0 -> 255 (ignore), k -> k-1.
Images are listed by sorting the image folder; an image without its annotation
is an error, not silently dropped.
"""

from __future__ import annotations

import os

from tips_eval.errors import DataError, DatasetLayoutError

from .base import register_dataset
from .class_names import ADE150
from .dense_common import SegmentationDataset, resolve_root

ADE_LAYOUT = "ADEChallengeData2016/{images,annotations}/{training,validation}/*.{jpg,png}"
_FOLDERS = {"train": "training", "val": "validation"}


@register_dataset("ade20k")
def ade20k(root: str | os.PathLike, split: str = "val") -> SegmentationDataset:
    """Open one split (``train`` / ``val``) of ADE20K-150."""
    if split not in _FOLDERS:
        raise DataError(f"ade20k: unknown split {split!r}; expected 'train' or 'val'")
    folder = _FOLDERS[split]
    markers = [f"images/{folder}", f"annotations/{folder}"]
    root = resolve_root(root, dataset="ade20k", markers=markers, layout=ADE_LAYOUT,
                        alternatives=["ADEChallengeData2016"])
    stems = sorted(f[:-4] for f in os.listdir(root / "images" / folder) if f.lower().endswith(".jpg"))
    if not stems:
        raise DatasetLayoutError(f"ade20k: no .jpg images in {root / 'images' / folder}; expected {ADE_LAYOUT}")
    ann_dir = root / "annotations" / folder
    missing = [s for s in stems if not (ann_dir / f"{s}.png").is_file()]
    if missing:
        raise DatasetLayoutError(f"ade20k: {len(missing)} of {len(stems)} images in {root / 'images' / folder} "
                                 f"have no annotation, e.g. {ann_dir / (missing[0] + '.png')}")
    items = [(f"images/{folder}/{s}.jpg", f"annotations/{folder}/{s}.png") for s in stems]
    return SegmentationDataset(root, items, name="ade20k", split=split, class_names=ADE150, max_raw=150,
                               reduce_zero_label=True, protocol={"folder": folder})
