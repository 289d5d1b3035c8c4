"""ImageNet-1K in its canonical folder layout: ``root/{train,val}/<wnid>/*.JPEG``.

Class index = position of the wnid in sorted order (the standard ILSVRC-2012
order), so ``val/<wnid>/`` produced by the usual ``valprep.sh`` lines up with
released linear heads and with open_clip's class names. The Kaggle flat
validation layout (``val/*.JPEG`` + ``LOC_val_solution.csv``) is read too.

Zero-shot names come from ``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``
(CLIP_benchmark's list), looked up by each wnid's standard index (timm's
``ImageNetInfo`` synset list), so a subset of classes still gets real names.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from tips_eval.data.base import ImageDataset, load_rgb, register_dataset
from tips_eval.data.layout_utils import is_image_file, meant_root_hint
from tips_eval.errors import DataError, DatasetLayoutError

SPLITS = {"train": "train", "val": "val", "validation": "val"}
LAYOUT = "root/{train,val}/<wnid>/*.JPEG (val sorted into class folders, e.g. with valprep.sh)"
_WNID = re.compile(r"^n\d{8}$")


def standard_wnids() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in standard class-index order (sorted)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def imagenet_class_names(wnids: Sequence[str], class_names: Sequence[str] | Mapping[str, str] | None = None
                         ) -> tuple[list[str], str]:
    """Human class names for ``wnids`` and where they came from (``argument``/``open_clip``/``wnid``)."""
    if class_names is not None:
        if isinstance(class_names, Mapping):
            missing = [w for w in wnids if w not in class_names]
            if missing:
                raise DataError(f"class_names has no entry for wnid {missing[0]} ({len(missing)} missing)")
            return [str(class_names[w]) for w in wnids], "argument"
        if len(class_names) != len(wnids):
            raise DataError(f"class_names has {len(class_names)} names but the split has {len(wnids)} classes")
        return [str(n) for n in class_names], "argument"
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    index = {w: i for i, w in enumerate(standard_wnids())}
    if all(w in index for w in wnids):
        return [IMAGENET_CLASSNAMES[index[w]] for w in wnids], "open_clip"
    unknown = next(w for w in wnids if w not in index)
    warnings.warn(f"ImageNet class folder {unknown!r} is not an ILSVRC-2012 wnid; using folder names as class "
                  "names (pass class_names= for zero-shot)", stacklevel=3)
    return list(wnids), "wnid"


class ImageNetDataset(ImageDataset):
    """One ImageNet split; ``classes`` are wnids, ``class_names`` human names."""

    name = "imagenet"

    def __init__(self, root: Path, split: str, paths: list[str], labels: np.ndarray, classes: list[str],
                 class_names: list[str], class_names_source: str, per_class: int | None = None):
        self.root, self.split = Path(root), split
        self.paths, self.labels = paths, np.asarray(labels, dtype=np.int64)
        self.classes, self.class_names, self.class_names_source = classes, class_names, class_names_source
        self.per_class = per_class

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def image_key(self, i: int) -> str:
        return self.paths[i]

    def load_image(self, i: int) -> Image.Image:
        return load_rgb(self.root / self.paths[i])

    def target(self, i: int) -> dict:
        return {"label": int(self.labels[i])}

    def describe(self) -> dict:
        return {**super().describe(), "num_classes": self.num_classes, "per_class": self.per_class,
                "class_names_source": self.class_names_source, "label_order": "sorted wnids"}


def _looks_like_class_root(path: Path) -> bool:
    """A folder of wnid-named class folders (``train/`` or a sorted ``val/``)."""
    try:
        with os.scandir(path) as it:
            return any(e.is_dir() and _WNID.match(e.name) for e in it)
    except OSError:
        return False


def _looks_like_split(path: Path) -> bool:
    """A split folder: wnid class folders, or images directly (flat val)."""
    try:
        with os.scandir(path) as it:
            return any((e.is_dir() and _WNID.match(e.name)) or is_image_file(e.name) for e in it)
    except OSError:
        return False


def _split_dir(root: Path, split: str) -> Path:
    split_dir = root / split
    if split_dir.is_dir():
        return split_dir
    if not root.is_dir():
        raise DatasetLayoutError(f"ImageNet root {root} does not exist", hint=f"expected {LAYOUT}")
    if _looks_like_class_root(root):
        raise DatasetLayoutError(f"ImageNet root {root} holds class folders itself; no {split}/ folder in it",
                                 hint=f"did you mean {root.parent}? (expected {LAYOUT})")
    hint = meant_root_hint(root, split, LAYOUT, accept=lambda p: _looks_like_split(p / split))
    raise DatasetLayoutError(f"ImageNet root {root} has no {split}/ folder", hint=hint)


def _list_class_folders(split_dir: Path) -> tuple[list[str], list[list[str]]]:
    with os.scandir(split_dir) as it:
        classes = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    files = []
    for wnid in classes:
        with os.scandir(split_dir / wnid) as it:
            files.append(sorted(e.name for e in it if is_image_file(e.name) and not e.is_dir()))
    return classes, files


def _find_val_solution(split_dir: Path, val_labels: str | os.PathLike | None) -> Path | None:
    if val_labels is not None:
        path = Path(val_labels)
        if not path.is_file():
            raise DatasetLayoutError(f"val_labels file {path} does not exist")
        return path
    for folder in [split_dir, *list(split_dir.resolve().parents)[:4]]:
        if (folder / "LOC_val_solution.csv").is_file():
            return folder / "LOC_val_solution.csv"
    return None


def _read_flat_val(split_dir: Path, solution: Path) -> tuple[list[str], list[list[str]]]:
    """Kaggle layout: ``val/<ImageId>.JPEG`` with ``ImageId,PredictionString`` (first token = wnid)."""
    by_class: dict[str, list[str]] = {}
    with open(solution, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise DataError(f"{solution}: expected columns ImageId,PredictionString; got {reader.fieldnames}")
        for row in reader:
            wnid = (row["PredictionString"] or "").split()[:1]
            if not wnid:
                raise DataError(f"{solution}: no wnid in PredictionString for {row['ImageId']}")
            by_class.setdefault(wnid[0], []).append(row["ImageId"] + ".JPEG")
    with os.scandir(split_dir) as it:
        present = {e.name for e in it if is_image_file(e.name)}
    missing = [n for names in by_class.values() for n in names if n not in present]
    if missing:
        raise DatasetLayoutError(f"{solution} lists {len(missing)} images missing from {split_dir}, "
                                 f"first {split_dir / missing[0]}")
    classes = sorted(by_class)
    return classes, [sorted(by_class[c]) for c in classes]


def _subsample(files: list[str], n: int, seed: int, wnid: str) -> list[str]:
    """n files of one class, chosen by a generator seeded by (seed, wnid): stable when other classes change."""
    if len(files) <= n:
        return files
    rng = np.random.default_rng([seed, zlib.crc32(wnid.encode())])
    return [files[j] for j in sorted(rng.choice(len(files), size=n, replace=False))]


@register_dataset("imagenet")
def imagenet(root: str | os.PathLike, split: str = "val", *, per_class: int | None = None, seed: int = 0,
             class_names: Sequence[str] | Mapping[str, str] | None = None, val_labels: str | None = None,
             source: str = "folder", **hf_options) -> ImageDataset:
    """Open ImageNet-1K ``train`` or ``val`` (``validation`` is an alias).

    ``per_class``: keep at most n images per class (seeded, for quick runs).
    ``val_labels``: a ``LOC_val_solution.csv`` for a flat ``val/`` folder (found
    automatically in the folder or up to four levels above it).
    ``source="hf"``: read a Hugging Face dataset instead (see ``tips_eval.data.hf``).
    """
    if source == "hf":
        return _imagenet_hf(root, split, class_names=class_names, **hf_options)
    if source != "folder" or hf_options:
        raise DataError(f"imagenet: unknown source {source!r} or options {sorted(hf_options)}",
                        hint="source is 'folder' (default) or 'hf'")
    if split not in SPLITS:
        raise DataError(f"imagenet has splits train and val; got {split!r}")
    root = Path(root).expanduser()
    split_dir = _split_dir(root, SPLITS[split])
    classes, files = _list_class_folders(split_dir)
    flat = not classes
    if flat:
        solution = _find_val_solution(split_dir, val_labels) if SPLITS[split] == "val" else None
        if solution is None:
            with os.scandir(split_dir) as it:
                n_flat = sum(1 for e in it if is_image_file(e.name))
            what = f"{n_flat} images but no class folders" if n_flat else "no class folders"
            raise DatasetLayoutError(
                f"ImageNet split folder {split_dir} has {what}",
                hint="sort val images into val/<wnid>/ (valprep.sh), or pass val_labels=LOC_val_solution.csv"
                if n_flat and SPLITS[split] == "val" else f"expected {LAYOUT}")
        classes, files = _read_flat_val(split_dir, solution)
    empty = [c for c, f in zip(classes, files) if not f]
    if len(empty) == len(classes):
        raise DatasetLayoutError(f"ImageNet split {split_dir} has {len(classes)} class folders but no images "
                                 f"(.jpeg/.jpg/.png)", hint=f"expected {LAYOUT}")
    if empty:
        warnings.warn(f"ImageNet {split}: {len(empty)} empty class folders, first {split_dir / empty[0]}",
                      stacklevel=2)
    if per_class is not None:
        if int(per_class) < 1:
            raise DataError(f"imagenet: per_class must be a positive integer; got {per_class!r}")
        files = [_subsample(f, int(per_class), seed, c) for c, f in zip(classes, files)]
    rel = os.path.relpath(split_dir, root).replace(os.sep, "/")
    paths = [f"{rel}/{n}" if flat else f"{rel}/{c}/{n}" for c, names in zip(classes, files) for n in names]
    labels = np.repeat(np.arange(len(classes)), [len(f) for f in files])
    names, source_of_names = imagenet_class_names(classes, class_names)
    return ImageNetDataset(root, SPLITS[split], paths, labels, classes, names, source_of_names, per_class)


def _imagenet_hf(path, split, *, class_names=None, **options) -> ImageDataset:
    from tips_eval.data.hf import hf_dataset

    try:
        ds = hf_dataset(path, split, **options)
    except DataError:
        if split != "val":
            raise
        ds = hf_dataset(path, "validation", **options)  # the HF ImageNet-1K name of the val split
    if ds.classes is None:
        raise DataError(f"Hugging Face dataset {path} split {split!r} has no label column for ImageNet",
                        hint="pass label_column=<its name>")
    ds.name = "imagenet"
    if class_names is not None:
        ds.class_names, ds.class_names_source = imagenet_class_names(ds.classes, class_names)
    elif len(ds.classes) == 1000:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        # HF ImageNet-1K (ILSVRC/imagenet-1k) stores labels in the standard index order
        ds.class_names, ds.class_names_source = list(IMAGENET_CLASSNAMES), "open_clip (standard label order)"
    return ds


def check_same_classes(train: ImageDataset, val: ImageDataset) -> None:
    """Raise :class:`DataError` unless both splits have the same classes in the same order."""
    a, b = list(getattr(train, "classes", [])), list(getattr(val, "classes", []))
    name = getattr(train, "name", "dataset")
    if len(a) != len(b):
        only = sorted(set(a) ^ set(b))[:3]
        raise DataError(f"{name}: {train.split} has {len(a)} classes but {val.split} has {len(b)}",
                        hint=f"classes in only one split: {', '.join(map(str, only))}" if only else None)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            raise DataError(f"{name}: class {i} is {x!r} in {train.split} but {y!r} in {val.split}")
