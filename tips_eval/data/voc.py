"""PASCAL VOC 2012 semantic segmentation (21 classes incl. background, 255 = ignore).

Layout (as shipped, root = ``VOCdevkit/VOC2012`` or ``VOCdevkit``)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png           palette PNGs: the palette index is the class
    ImageSets/Segmentation/{train,val,trainval}.txt   (1,464 / 1,449 / 2,913 ids)
    SegmentationClassAug/<id>.png        optional, SBD-augmented grayscale index PNGs
    ImageSets/Segmentation/train_aug.txt optional, 10,582 ids (DeepLab name; mmseg writes trainaug.txt)

``aug=True`` reads the 10,582-image augmented train set. Its list is the first
of ``train_aug.txt``, ``trainaug.txt`` (mmseg's converter, 10,582 ids), or
mmseg's ``aug.txt`` (SBD minus VOC train and val: 9,118 ids) joined with
``train.txt``. Masks come from ``SegmentationClass`` where VOC has one (the
official, boundary-marked annotation; mmseg's ``pascal_voc12_aug`` config does
the same for the ``train.txt`` part) and from ``SegmentationClassAug`` otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from tips_eval.errors import DataError, DatasetLayoutError

from .base import register_dataset
from .class_names import VOC21
from .dense_common import SegmentationDataset, find_split_file, read_id_list, resolve_root

VOC_LAYOUT = "VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/<split>.txt}"
_SPLITS = ("train", "val", "trainval")
_AUG_LISTS = ("ImageSets/Segmentation/train_aug.txt", "ImageSets/Segmentation/trainaug.txt",
              "ImageSets/SegmentationAug/train_aug.txt")


def _aug_ids(root: Path) -> tuple[list[str], str]:
    """Ids of the augmented train set and the list file(s) they came from."""
    for rel in _AUG_LISTS:
        if (root / rel).is_file():
            return read_id_list(root / rel, dataset="voc2012"), rel
    seg = root / "ImageSets/Segmentation"
    if (seg / "aug.txt").is_file() and (seg / "train.txt").is_file():
        ids = read_id_list(seg / "train.txt", dataset="voc2012")
        seen = set(ids)
        ids += [i for i in read_id_list(seg / "aug.txt", dataset="voc2012") if i not in seen]
        return ids, "ImageSets/Segmentation/train.txt + aug.txt"
    looked = ", ".join(str(root / r) for r in _AUG_LISTS + ("ImageSets/Segmentation/aug.txt (+ train.txt)",))
    raise DatasetLayoutError(f"voc2012: aug=True but no augmented train list; looked for {looked}",
                             hint="mmseg's tools/dataset_converters/voc_aug.py writes trainaug.txt and aug.txt")


@register_dataset("voc2012")
def voc2012(root: str | os.PathLike, split: str = "val", *, aug: bool = False) -> SegmentationDataset:
    """Open one split of PASCAL VOC 2012 segmentation (``aug=True``: the 10,582-image train set)."""
    if split not in _SPLITS:
        raise DataError(f"voc2012: unknown split {split!r}; expected one of {', '.join(_SPLITS)}")
    markers = ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"]
    root = resolve_root(root, dataset="voc2012", markers=markers, layout=VOC_LAYOUT, alternatives=["VOC2012"])
    protocol = {"aug": bool(aug)}
    if aug and split == "trainval":
        raise DataError("voc2012: aug=True has no 'trainval' split (the augmented set excludes val)",
                        hint="use split='train' with aug=True, and split='val' to evaluate")
    if aug and split == "train":
        if not (root / "SegmentationClassAug").is_dir():
            raise DatasetLayoutError(f"voc2012: aug=True but {root / 'SegmentationClassAug'} is missing",
                                     hint="convert SBD with mmseg's voc_aug.py, or pass aug=False")
        ids, source = _aug_ids(root)
        items, n_aug = [], 0
        for i in ids:
            if (root / "SegmentationClass" / f"{i}.png").is_file():
                items.append((f"JPEGImages/{i}.jpg", f"SegmentationClass/{i}.png"))
            else:
                items.append((f"JPEGImages/{i}.jpg", f"SegmentationClassAug/{i}.png"))
                n_aug += 1
        protocol.update(split_list=source, masks_from_aug=n_aug, masks_from_voc=len(items) - n_aug,
                        mask_policy="SegmentationClass where present, else SegmentationClassAug")
    else:
        split_file = find_split_file(root, [f"ImageSets/Segmentation/{split}.txt"], dataset="voc2012", split=split)
        ids = read_id_list(split_file, dataset="voc2012")
        items = [(f"JPEGImages/{i}.jpg", f"SegmentationClass/{i}.png") for i in ids]
        protocol["split_list"] = f"ImageSets/Segmentation/{split}.txt"
    split_name = "train_aug" if aug and split == "train" else split  # records and caches tell the two apart
    return SegmentationDataset(root, items, name="voc2012", split=split_name, class_names=VOC21, max_raw=20,
                               reduce_zero_label=False, protocol=protocol)
