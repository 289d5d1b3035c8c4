"""Pascal Context (VOC2010 + the Context labels), 59 or 60 classes, mmseg layout.

Layout (mmseg's ``tools/dataset_converters/pascal_context.py`` output; root =
``VOCdevkit/VOC2010`` or ``VOCdevkit``)::

    JPEGImages/<id>.jpg
    SegmentationClassContext/<id>.png          grayscale: 0 = background, 1..59 = classes
    ImageSets/SegmentationContext/{train,val}.txt   (4,996 / 5,104 ids)

- ``num_classes=60`` (``pascal_context60``): 0 = background is a class, labels kept.
- ``num_classes=59`` (``pascal_context59``): ``reduce_zero_label`` (0 -> 255, k -> k-1).

The plain name ``pascal_context`` needs ``num_classes`` spelled out: the two
variants give different mIoUs and must never be mixed up by a default.
"""

from __future__ import annotations

import os

from tips_eval.errors import DataError

from .base import register_dataset
from .class_names import PC59, PC60
from .dense_common import SegmentationDataset, find_split_file, read_id_list, resolve_root

PC_LAYOUT = "VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext/<split>.txt}"


@register_dataset("pascal_context")
def pascal_context(root: str | os.PathLike, split: str = "val", *, num_classes: int | None = None
                   ) -> SegmentationDataset:
    """Open one split (``train`` / ``val``) of Pascal Context with 59 or 60 classes."""
    if num_classes not in (59, 60):
        raise DataError(f"pascal_context: num_classes={num_classes!r}; expected 59 or 60",
                        hint="or open 'pascal_context59' / 'pascal_context60'")
    if split not in ("train", "val"):
        raise DataError(f"pascal_context: unknown split {split!r}; expected 'train' or 'val'")
    markers = ["JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"]
    root = resolve_root(root, dataset="pascal_context", markers=markers, layout=PC_LAYOUT, alternatives=["VOC2010"])
    split_file = find_split_file(root, [f"ImageSets/SegmentationContext/{split}.txt"], dataset="pascal_context",
                                 split=split)
    items = [(f"JPEGImages/{i}.jpg", f"SegmentationClassContext/{i}.png")
             for i in read_id_list(split_file, dataset="pascal_context")]
    return SegmentationDataset(root, items, name=f"pascal_context{num_classes}", split=split,
                               class_names=PC59 if num_classes == 59 else PC60, max_raw=59,
                               reduce_zero_label=num_classes == 59,
                               protocol={"split_list": f"ImageSets/SegmentationContext/{split}.txt"})


@register_dataset("pascal_context59")
def pascal_context59(root: str | os.PathLike, split: str = "val") -> SegmentationDataset:
    """Pascal Context-59 (background ignored)."""
    return pascal_context(root, split, num_classes=59)


@register_dataset("pascal_context60")
def pascal_context60(root: str | os.PathLike, split: str = "val") -> SegmentationDataset:
    """Pascal Context-60 (background is class 0)."""
    return pascal_context(root, split, num_classes=60)
