"""A Hugging Face ``datasets`` source: ``open_dataset("hf", path_or_name, split, ...)``.

Reads, offline and memory-mapped, a dataset written with ``save_to_disk``
(a ``DatasetDict`` or a single ``Dataset``), a local folder of parquet/arrow
files, or a hub dataset already in the local cache. Images come from an
``Image`` column (or a column of file paths); labels from a ``ClassLabel`` or
int column; captions from a string or list-of-strings column.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from tips_eval.data.base import ImageDataset, load_rgb, register_dataset
from tips_eval.errors import BadImageError, DataError, DatasetLayoutError


def _load_hf(path: str | os.PathLike, split: str, cache_dir: str | None):
    """The ``datasets.Dataset`` for one split, memory-mapped from local files."""
    import datasets

    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "dataset_dict.json").is_file():
            dd = datasets.load_from_disk(str(p))
            if split not in dd:
                raise DataError(f"Hugging Face dataset {p} has no split {split!r}; it has {', '.join(dd)}")
            return dd[split]
        if (p / "state.json").is_file():
            return datasets.load_from_disk(str(p))
        if (p / split / "state.json").is_file():
            return datasets.load_from_disk(str(p / split))
    elif p.exists() or not (isinstance(path, str) and path.count("/") == 1):
        what = "is a file, not a dataset folder" if p.exists() else "does not exist"
        raise DatasetLayoutError(f"Hugging Face dataset {p} {what}",
                                 hint="pass a save_to_disk folder, a folder of parquet/arrow files, or a hub name")
    try:  # a folder of data files, or a hub name served from the local cache
        return datasets.load_dataset(str(p) if p.is_dir() else str(path), split=split, cache_dir=cache_dir)
    except (ValueError, FileNotFoundError, ConnectionError, KeyError) as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise DatasetLayoutError(f"cannot open Hugging Face dataset {path} split {split!r}: {msg}",
                                 hint="expected a save_to_disk folder or parquet/arrow files with a split named "
                                      f"{split!r}; offline, hub datasets must already be in the cache") from None


class HFImageDataset(ImageDataset):
    """One split of a Hugging Face dataset; ``classes``/``captions`` when the columns exist."""

    name = "hf"

    def __init__(self, ds, split: str, source: str, image_column: str, label_column: str | None,
                 caption_column: str | None, class_names: Sequence[str] | None = None):
        self.split, self.source = split, source
        self.image_column, self.label_column, self.caption_column = image_column, label_column, caption_column
        self._images = ds.select_columns([image_column])
        self._base = Path(source) if os.path.isdir(source) else Path(".")
        self._hf_fingerprint = getattr(ds, "_fingerprint", None) or ""
        self.labels = self.classes = self.class_names = None
        self.class_names_source = None
        if label_column is not None:
            self.labels = np.asarray(ds[label_column], dtype=np.int64)
            feature = ds.features[label_column]
            if hasattr(feature, "names"):
                self.classes = list(feature.names)
            elif len(self.labels):
                self.classes = [str(i) for i in range(int(self.labels.max()) + 1)]
            if self.classes is not None:
                self.class_names, self.class_names_source = list(self.classes), "hf features"
            if class_names is not None:
                if self.classes is not None and len(class_names) != len(self.classes):
                    raise DataError(f"class_names has {len(class_names)} names but {source} has "
                                    f"{len(self.classes)} classes")
                self.class_names, self.class_names_source = list(class_names), "argument"
        self.captions_per_image = self.captions = self.text_to_image = None
        if caption_column is not None:
            per_image = [[c] if isinstance(c, str) else list(c) for c in ds[caption_column]]
            self.captions_per_image = per_image
            self.captions = [c for caps in per_image for c in caps]
            self.text_to_image = np.repeat(np.arange(len(per_image)), [len(c) for c in per_image])

    def __len__(self) -> int:
        return len(self._images)

    def image_key(self, i: int) -> str:
        return f"{self.split}/{i}"

    def load_image(self, i: int) -> Image.Image:
        try:
            value = self._images[int(i)][self.image_column]
        except (OSError, SyntaxError, ValueError) as e:  # PIL decode errors raised inside datasets
            raise BadImageError(f"cannot decode image {self.source} item {i}: {str(e).splitlines()[0][:160]}",
                                hint="re-create the dataset, or pass --skip-bad-images to count and skip it") from None
        if isinstance(value, Image.Image):
            return value.convert("RGB")
        if isinstance(value, str):
            return load_rgb(value if os.path.isabs(value) else self._base / value)
        if isinstance(value, dict) and value.get("bytes") is not None:
            import io

            try:
                with Image.open(io.BytesIO(value["bytes"])) as img:
                    return img.convert("RGB")
            except (OSError, SyntaxError, ValueError) as e:
                raise BadImageError(f"cannot decode image {self.source} item {i}: {e}") from None
        raise BadImageError(f"{self.source} item {i}: column {self.image_column!r} holds {type(value).__name__}, "
                            "not an image")

    def target(self, i: int) -> dict:
        out = {}
        if self.labels is not None:
            out["label"] = int(self.labels[i])
        if self.captions_per_image is not None:
            out["captions"] = list(self.captions_per_image[i])
        return out

    def fingerprint(self) -> str:
        """Name, split, size and the dataset's own content fingerprint (no per-row hashing)."""
        if getattr(self, "_fp", None) is None:
            text = f"{self.name}|{self.split}|{self.reader_version}|{len(self)}|{self._hf_fingerprint}"
            if not self._hf_fingerprint:
                text += "|" + os.path.abspath(self.source)
            self._fp = hashlib.sha256(text.encode()).hexdigest()[:20]
        return self._fp

    def describe(self) -> dict:
        return {**super().describe(), "source": str(self.source), "image_column": self.image_column,
                "label_column": self.label_column, "caption_column": self.caption_column}


@register_dataset("hf")
def hf_dataset(path: str | os.PathLike, split: str = "test", *, image_column: str = "image",
               label_column: str | None = "label", caption_column: str | None = None,
               class_names: Sequence[str] | None = None, cache_dir: str | None = None) -> HFImageDataset:
    """Open one split of a Hugging Face dataset (offline, memory-mapped).

    ``label_column`` defaults to ``"label"`` and is dropped silently when the
    dataset has no such column; any other missing column is an error.
    """
    ds = _load_hf(path, split, cache_dir)
    columns = list(ds.column_names)
    if label_column == "label" and "label" not in columns:
        label_column = None
    for role, col in (("image_column", image_column), ("label_column", label_column),
                      ("caption_column", caption_column)):
        if col is not None and col not in columns:
            raise DataError(f"Hugging Face dataset {path} split {split!r} has no column {col!r} ({role}); "
                            f"columns: {', '.join(columns)}")
    if len(ds) == 0:
        raise DatasetLayoutError(f"Hugging Face dataset {path} split {split!r} is empty")
    return HFImageDataset(ds, split, str(path), image_column, label_column, caption_column, class_names)
