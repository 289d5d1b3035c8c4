"""Shared pieces of the dense readers: root checks, split lists, label PNGs.

Used by the VOC, ADE20K, Pascal Context, NYUv2 and NAVI readers. Every
failure is one line naming the path and the layout that was expected, and a
root one level too high or too low gets the right path suggested.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from tips_eval.errors import DataError, DatasetLayoutError

from .base import ImageDataset, load_rgb

IGNORE_INDEX = 255
_MAX_LISTED = 2000  # directory entries scanned when looking for a misplaced root


def _has_all(path: Path, markers: Sequence[str]) -> bool:
    return all((path / m).exists() for m in markers)


def _subdirs(path: Path) -> list[Path]:
    out = []
    try:
        with os.scandir(path) as it:
            for n, entry in enumerate(it):
                if n >= _MAX_LISTED:
                    break
                if entry.is_dir():
                    out.append(Path(entry.path))
    except OSError:
        pass
    return sorted(out)


def nearby_root(root: Path, markers: Sequence[str], alternatives: Sequence[str] = ()) -> Path | None:
    """A directory up to two levels above or one below ``root`` (plus ``alternatives`` under it)
    that holds every path in ``markers``; None if there is none."""
    nearby = [root.parent, root.parent.parent]
    for child in _subdirs(root) if root.is_dir() else []:
        nearby += [child] + [child / a for a in alternatives]
    return next((c for c in nearby if c.is_dir() and _has_all(c, markers)), None)


def resolve_root(root: str | os.PathLike, *, dataset: str, markers: Sequence[str], layout: str,
                 alternatives: Sequence[str] = ()) -> Path:
    """The directory that holds every path in ``markers``.

    Tries ``root`` and then ``root/alt`` for each accepted alternative (e.g.
    ``VOC2012`` under ``VOCdevkit``). Otherwise raises :class:`DatasetLayoutError`,
    suggesting a directory nearby (see :func:`nearby_root`) that does match.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetLayoutError(f"{dataset}: root {root} does not exist; expected {layout}")
    for cand in [root] + [root / a for a in alternatives]:
        if cand.is_dir() and _has_all(cand, markers):
            return cand
    near = nearby_root(root, markers, alternatives)
    if near is not None:
        raise DatasetLayoutError(f"{dataset}: {root} is not the dataset root (no {', '.join(markers)}); "
                                 f"the root looks like {near}", hint=f"pass {near}; expected {layout}")
    missing = [m for m in markers if not (root / m).exists()]
    raise DatasetLayoutError(f"{dataset}: {root} does not have the expected layout {layout} "
                             f"(missing: {', '.join(missing)})")


def find_split_file(base: Path, candidates: Sequence[str], *, dataset: str, split: str) -> Path:
    """The first existing ``base/candidate``; a clear error lists every path looked for."""
    for c in candidates:
        if (base / c).is_file():
            return base / c
    looked = ", ".join(str(base / c) for c in candidates)
    raise DatasetLayoutError(f"{dataset}: no split list for split {split!r}; looked for {looked}")


def read_id_list(path: Path, *, dataset: str) -> list[str]:
    """Image ids from a split list: one id per line, or lines of paths (the id is the first path's stem)."""
    ids = []
    with open(path) as f:
        for line in f:
            tok = line.split()
            if tok:
                ids.append(Path(tok[0]).stem if ("/" in tok[0] or "." in tok[0]) else tok[0])
    if not ids:
        raise DataError(f"{dataset}: split list {path} is empty")
    return ids


def read_label_png(path: Path) -> np.ndarray:
    """Class indices of a label PNG (palette 'P': the palette index; 'L'/'I': the value) as int64."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("RGB", "RGBA", "LA", "1", "CMYK", "YCbCr"):
                raise DataError(f"label file {path} is a {mode!r} image; expected class indices "
                                "(a palette 'P' or grayscale 'L' PNG)",
                                hint="colour-coded masks must be converted to index PNGs first")
            return np.asarray(img, dtype=np.int64)
    except FileNotFoundError:
        raise DatasetLayoutError(f"label file {path} is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot decode label file {path}: {str(e).splitlines()[0][:160]}") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only (no decode)."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise DatasetLayoutError(f"image file {path} is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return load_rgb(path).size  # raises a BadImageError naming the file


def convert_labels(raw: np.ndarray, *, path: Path, max_raw: int, reduce_zero_label: bool) -> np.ndarray:
    """Check raw file values lie in ``[0, max_raw]`` or are 255, then apply ``reduce_zero_label``
    (0 -> 255, k -> k-1, as mmseg/DINOv2). Out-of-range values raise a DataError naming them."""
    if raw.size and raw.max() > max_raw:
        bad = np.unique(raw[(raw > max_raw) & (raw != IGNORE_INDEX)])
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
            raise DataError(f"label file {path} has values {shown} outside 0..{max_raw} "
                            f"(and not the ignore value {IGNORE_INDEX})",
                            hint="is this the right dataset / number of classes?")
    if raw.size and raw.min() < 0:
        raise DataError(f"label file {path} has negative values; expected 0..{max_raw} or {IGNORE_INDEX}")
    if not reduce_zero_label:
        return raw
    out = raw - 1
    out[(raw == 0) | (raw == IGNORE_INDEX)] = IGNORE_INDEX
    return out


class SegmentationDataset(ImageDataset):
    """Images + label PNGs listed as (image path, mask path) relative to ``root``.

    ``target(i) = {"mask": (H, W) int64}`` with classes ``0..num_classes-1`` and
    ``ignore_index`` 255. The mask size is checked against the image header.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, root: Path, items: Sequence[tuple[str, str]], *, name: str, split: str,
                 class_names: Sequence[str], max_raw: int, reduce_zero_label: bool, protocol: dict | None = None):
        self.root = Path(root)
        self.items = list(items)
        self.name, self.split = name, split
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.max_raw = max_raw
        self.reduce_zero_label = reduce_zero_label
        self.protocol = dict(protocol or {})
        if not self.items:
            raise DataError(f"{name}: split {split!r} under {self.root} has no images")
        first_img, first_mask = self.items[0]
        for rel in (first_img, first_mask):
            if not (self.root / rel).is_file():
                raise DatasetLayoutError(f"{name}: {self.root / rel} is missing (first item of split {split!r})")

    def __len__(self) -> int:
        return len(self.items)

    def image_key(self, i: int) -> str:
        return self.items[i][0]

    def mask_key(self, i: int) -> str:
        return self.items[i][1]

    def load_image(self, i: int) -> Image.Image:
        path = self.root / self.items[i][0]
        if not path.exists():
            raise DatasetLayoutError(f"{self.name}: image file {path} is missing")
        return load_rgb(path)

    def target(self, i: int) -> dict:
        img_path, mask_path = (self.root / p for p in self.items[i])
        raw = read_label_png(mask_path)
        if raw.ndim != 2:
            raise DataError(f"label file {mask_path} has shape {raw.shape}; expected a single-channel (H, W) map")
        w, h = image_size(img_path)
        if raw.shape != (h, w):
            raise DataError(f"{self.name}: mask {mask_path} is {raw.shape[1]}x{raw.shape[0]} (WxH) but image "
                            f"{img_path} is {w}x{h}")
        mask = convert_labels(raw, path=mask_path, max_raw=self.max_raw, reduce_zero_label=self.reduce_zero_label)
        return {"mask": mask}

    def describe(self) -> dict:
        return {**super().describe(), "num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "reduce_zero_label": self.reduce_zero_label, **self.protocol}
