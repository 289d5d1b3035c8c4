"""The dataset protocol every reader implements, and the reader registry.

A reader is a function ``reader(root, split, **options) -> ImageDataset``
registered with ``@register_dataset("name")``. An :class:`ImageDataset` is one
split: a sequence of images plus per-item targets. Targets are plain dicts:

- ``label`` (int) / ``labels`` (list[int]) / ``domain`` (int)
- ``mask`` (H, W) int64 class ids with the dataset's ignore value
- ``depth`` (H, W) float32 metres, ``valid`` (H, W) bool
- ``normals`` (H, W, 3) float32 unit vectors (camera frame)
- ``captions`` (list[str])
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from tips_eval.errors import BadImageError, UnknownNameError

DATASETS: dict[str, Callable[..., "ImageDataset"]] = {}

#: reader modules under tips_eval/data/ (imported on first use; each registers its names)
READER_MODULES = ("imagenet", "uned", "captions", "hf", "voc", "ade20k", "pascal_context", "nyu", "navi", "synthetic")


def load_readers() -> dict[str, Callable[..., "ImageDataset"]]:
    """Import every reader module so the registry is complete; returns it."""
    from tips_eval._lazy import import_plugins

    import_plugins("tips_eval.data", READER_MODULES)
    return DATASETS


def register_dataset(name: str):
    """Decorator registering ``reader(root, split, **options) -> ImageDataset``."""

    def wrap(fn):
        if name in DATASETS:
            raise ValueError(f"dataset reader {name!r} registered twice")
        DATASETS[name] = fn
        return fn

    return wrap


def open_dataset(name: str, root: str | os.PathLike, split: str, **options) -> "ImageDataset":
    """Open one split of a registered dataset (e.g. ``open_dataset('voc2012', root, 'val')``)."""
    if name not in DATASETS:
        load_readers()
    if name not in DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}", hint=f"known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root, split, **options)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image fully and convert to RGB; a clear error names the file otherwise."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImageError(f"cannot decode image {path}: {str(e).splitlines()[0][:160]}",
                            hint="re-extract the file, or pass --skip-bad-images to count and skip it") from None


class ImageDataset(torch.utils.data.Dataset):
    """One split of a dataset. Subclasses implement ``__len__``, ``image_key``,
    ``load_image`` and ``target``; ``name``/``split`` identify it in records."""

    name: str = "dataset"
    split: str = "test"
    #: bump when a reader changes what it returns, so caches keyed on it refresh
    reader_version: str = "1"

    def __len__(self) -> int:
        raise NotImplementedError

    def image_key(self, i: int) -> str:
        """A stable identifier of item i (its relative path); used in errors and the cache key."""
        raise NotImplementedError

    def load_image(self, i: int) -> Image.Image:
        raise NotImplementedError

    def target(self, i: int) -> dict:
        return {}

    def __getitem__(self, i: int) -> dict:
        return {"image": self.load_image(i), **self.target(i)}

    def fingerprint(self) -> str:
        """Hash of name, split, reader version and every item's key (not the pixels)."""
        cached = getattr(self, "_fp", None)
        if cached is None:
            h = hashlib.sha256(f"{self.name}|{self.split}|{self.reader_version}|{len(self)}".encode())
            for i in range(len(self)):
                h.update(self.image_key(i).encode())
                h.update(b"\0")
            cached = self._fp = h.hexdigest()[:20]
        return cached

    def describe(self) -> dict:
        return {"name": self.name, "split": self.split, "size": len(self), "fingerprint": self.fingerprint()}


class ListDataset(ImageDataset):
    """Images from a list of file paths (or PIL images) with a list of target dicts."""

    def __init__(self, images: Sequence, targets: Sequence[dict] | None = None, *, name: str = "list",
                 split: str = "test", keys: Sequence[str] | None = None):
        self.images = list(images)
        self.targets = list(targets) if targets is not None else [{} for _ in self.images]
        if len(self.targets) != len(self.images):
            raise ValueError(f"{name}: {len(self.images)} images but {len(self.targets)} targets")
        self.keys = list(keys) if keys is not None else [
            str(x) if isinstance(x, (str, os.PathLike)) else f"{name}/{split}/{i}" for i, x in enumerate(self.images)]
        self.name, self.split = name, split

    def __len__(self) -> int:
        return len(self.images)

    def image_key(self, i: int) -> str:
        return self.keys[i]

    def load_image(self, i: int) -> Image.Image:
        x = self.images[i]
        return x.convert("RGB") if isinstance(x, Image.Image) else load_rgb(x)

    def target(self, i: int) -> dict:
        return dict(self.targets[i])
