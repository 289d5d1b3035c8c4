"""Image-text retrieval sets: COCO and Flickr30K (Karpathy splits) and DOCCI.

- ``coco``: ``root/dataset_coco.json`` + ``root/{train2014,val2014}/``; images at
  ``root/<filepath>/<filename>``. Karpathy test = 5,000 images, ~5 captions each.
- ``flickr30k``: ``root/dataset_flickr30k.json`` + ``root/flickr30k-images/``; test = 1,000 x 5.
- ``docci``: ``root/docci_descriptions.jsonlines`` + ``root/images/``; one long
  description per image (test = 5,000). The image file is the record's
  ``image_file`` field (as in the released jsonlines), else ``<example_id>.jpg``.

Items are images with targets ``{"captions": [...]}``; every dataset also
exposes ``captions`` (flat list, image order) and ``text_to_image`` (caption j
-> image index) for retrieval. Captions are the ``raw`` sentences with
surrounding whitespace stripped (the tokenizers ignore it anyway).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from tips_eval.data.base import ImageDataset, load_rgb, register_dataset
from tips_eval.data.layout_utils import meant_root_hint, missing_files
from tips_eval.errors import DataError, DatasetLayoutError

COCO_LAYOUT = "root/dataset_coco.json (Karpathy splits) + root/train2014/ + root/val2014/"
FLICKR_LAYOUT = "root/dataset_flickr30k.json (Karpathy splits) + root/flickr30k-images/"
DOCCI_LAYOUT = "root/docci_descriptions.jsonlines + root/images/"
FLICKR_IMAGE_DIRS = ("flickr30k-images", "flickr30k_images", "flickr30k_images/flickr30k_images", "images")


class CaptionDataset(ImageDataset):
    """Images with their captions; ``captions``/``text_to_image`` index the text side."""

    def __init__(self, name: str, root: Path, split: str, paths: list[str], captions: list[list[str]],
                 image_ids: list | None = None, annotations: Path | None = None):
        self.name, self.root, self.split = name, Path(root), split
        self.paths, self.captions_per_image = paths, captions
        self.image_ids = image_ids if image_ids is not None else list(range(len(paths)))
        self.annotations = annotations
        self.captions = [c for caps in captions for c in caps]
        self.text_to_image = np.repeat(np.arange(len(paths), dtype=np.int64), [len(c) for c in captions])
        starts = np.concatenate([[0], np.cumsum([len(c) for c in captions])])
        #: image i's captions are captions[image_to_text[i][0]:image_to_text[i][1]]
        self.image_to_text = np.stack([starts[:-1], starts[1:]], axis=1)

    def __len__(self) -> int:
        return len(self.paths)

    def image_key(self, i: int) -> str:
        return self.paths[i]

    def load_image(self, i: int) -> Image.Image:
        return load_rgb(self.root / self.paths[i])

    def target(self, i: int) -> dict:
        return {"captions": list(self.captions_per_image[i])}

    def describe(self) -> dict:
        return {**super().describe(), "num_captions": len(self.captions),
                "annotations": str(self.annotations) if self.annotations else None}


def _check_images(name: str, root: Path, split: str, paths: list[str], source: Path, hint: str) -> None:
    missing = missing_files(root, paths)
    if missing:
        raise DatasetLayoutError(f"{name} {split}: {len(missing)} of {len(paths)} images listed in {source} are "
                                 f"missing, first {root / missing[0]}", hint=hint)


def _select_splits(name: str, split: str, available: Sequence[str], source: Path) -> set[str]:
    """``split`` may join several with '+', e.g. ``train+restval`` (the usual Karpathy train)."""
    wanted = set(split.split("+"))
    unknown = sorted(wanted - set(available))
    if unknown:
        counts = {s: list(available).count(s) for s in sorted(set(available))}
        listing = ", ".join(f"{s} ({n})" for s, n in counts.items())
        raise DataError(f"{name}: no split {unknown[0]!r} in {source}; it has {listing}")
    return wanted


def _find_annotation(root: Path, filename: str, annotations: str | os.PathLike | None, layout: str,
                     image_dirs: Sequence[str]) -> Path:
    if annotations is not None:
        path = Path(annotations).expanduser()
        if not path.is_file():
            raise DatasetLayoutError(f"annotation file {path} does not exist", hint=f"expected layout: {layout}")
        return path
    path = root / filename
    if path.is_file():
        return path
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root {root} does not exist", hint=f"expected layout: {layout}")
    if root.name in image_dirs and (root.parent / filename).is_file():
        hint = f"did you mean {root.parent}? ({root} is the image folder; expected layout: {layout})"
    else:
        hint = meant_root_hint(root, filename, layout)
    raise DatasetLayoutError(f"{path} not found", hint=hint)


def _read_karpathy(name: str, root: str | os.PathLike, split: str, filename: str, layout: str,
                   image_dirs: Sequence[str], default_dir: str | None, annotations, check_files: bool
                   ) -> CaptionDataset:
    root = Path(root).expanduser()
    source = _find_annotation(root, filename, annotations, layout, image_dirs)
    try:
        with open(source) as f:
            entries = json.load(f)["images"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DataError(f"{source} is not a Karpathy caption file ({type(e).__name__}: {e})",
                        hint="expected JSON {\"images\": [{\"filename\", \"split\", \"sentences\": [{\"raw\"}]}]}"
                        ) from None
    wanted = _select_splits(name, split, [e.get("split") for e in entries], source)
    if default_dir is None:  # Flickr: no filepath field; the image folder is the one holding its files
        first = next((e.get("filename") for e in entries if e.get("split") in wanted), None)
        default_dir = next((d for d in image_dirs if first and (root / d / str(first)).is_file()),
                           next((d for d in image_dirs if (root / d).is_dir()), image_dirs[0]))
    paths, captions, ids = [], [], []
    for k, e in enumerate(entries):
        if e.get("split") not in wanted:
            continue
        try:
            folder = e.get("filepath") or default_dir
            paths.append(f"{folder}/{e['filename']}")
            captions.append([s["raw"].strip() for s in e["sentences"]])
        except (KeyError, TypeError) as err:
            raise DataError(f"{source}: image entry {k} lacks {err} (need filename and sentences[].raw)") from None
        ids.append(e.get("cocoid", e.get("imgid", k)))
        if not captions[-1]:
            raise DataError(f"{source}: image {paths[-1]} has no captions")
    if check_files:
        _check_images(name, root, split, paths, source,
                      hint=f"extract the images so that root/<folder>/<file> exists (expected layout: {layout})")
    return CaptionDataset(name, root, split, paths, captions, ids, source)


@register_dataset("coco")
def coco(root: str | os.PathLike, split: str = "test", *, annotations: str | os.PathLike | None = None,
         check_files: bool = True) -> CaptionDataset:
    """COCO captions, Karpathy split (``test``, ``val``, ``train``, ``restval``; join with '+')."""
    return _read_karpathy("coco", root, split, "dataset_coco.json", COCO_LAYOUT, ("val2014", "train2014"),
                          "val2014", annotations, check_files)


@register_dataset("flickr30k")
def flickr30k(root: str | os.PathLike, split: str = "test", *, annotations: str | os.PathLike | None = None,
              image_dir: str | None = None, check_files: bool = True) -> CaptionDataset:
    """Flickr30K, Karpathy split; images in ``flickr30k-images/`` (or ``image_dir``)."""
    dirs = (image_dir,) if image_dir else FLICKR_IMAGE_DIRS
    return _read_karpathy("flickr30k", root, split, "dataset_flickr30k.json", FLICKR_LAYOUT, dirs,
                          image_dir, annotations, check_files)


@register_dataset("docci")
def docci(root: str | os.PathLike, split: str = "test", *, annotations: str | os.PathLike | None = None,
          image_dir: str = "images", check_files: bool = True) -> CaptionDataset:
    """DOCCI descriptions (``train``, ``test``, ``qual_dev``, ``qual_test``): one long caption per image."""
    root = Path(root).expanduser()
    source = _find_annotation(root, "docci_descriptions.jsonlines", annotations, DOCCI_LAYOUT, (image_dir,))
    paths, captions, ids, seen = [], [], [], []
    with open(source, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rec_split, example_id, text = rec["split"], rec["example_id"], rec["description"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{source}:{line_no}: not a DOCCI record ({type(e).__name__}: {e})",
                                hint="each line is JSON with example_id, split, description") from None
            seen.append(rec_split)
            if rec_split not in split.split("+"):
                continue
            paths.append(f"{image_dir}/{rec.get('image_file') or example_id + '.jpg'}")
            captions.append([text.strip()])
            ids.append(example_id)
    _select_splits("docci", split, seen, source)
    if check_files:
        _check_images("docci", root, split, paths, source,
                      hint=f"extract docci_images.tar.gz into {root} (expected layout: {DOCCI_LAYOUT})")
    return CaptionDataset("docci", root, split, paths, captions, ids, source)
