"""Reader of the embedded synthetic 3D benchmark (``tips_eval.synthetic.generate_dataset``).

``open_dataset("synthetic", root, split, view=1 | 2 | "both")``: ``root`` is
the folder ``generate_dataset`` returned (``manifest.json`` +
``dataset_dict.json`` + one folder per split) or its parent when that holds
exactly one such folder. Items are views of scenes: ``view="both"`` gives
2 items per scene (view 1 then view 2), which share ``instance`` (the scene
id) for instance retrieval.

Targets: ``label`` (shape of the largest object, into ``.label_names``),
``mask`` (semantic ids into ``.class_names``, every pixel labelled),
``depth`` + ``valid``, ``normals``, ``captions``, ``instance`` (scene id),
``domain`` (0), and for geometry tasks ``instance_mask`` (0 = none, k + 1 =
object k), ``K`` and ``cam_to_world``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from tips_eval.errors import DataError, DatasetLayoutError, UnknownNameError
from tips_eval.synthetic.scene import SEMANTIC_CLASSES, SHAPES
from tips_eval.synthetic.store import MANIFEST, SPLITS, read_manifest

from .base import ImageDataset, register_dataset

_TARGET_COLUMNS = ("depth", "valid", "normals", "semantic", "instance", "label", "caption", "cam_to_world")
_LAYOUT = "a folder written by tips_eval.synthetic.generate_dataset (manifest.json, dataset_dict.json, train/ val/ test/)"
_HINT = "generate one: python -c \"from tips_eval.synthetic import generate_dataset; print(generate_dataset('data/synthetic', 300))\""


def resolve_root(root: str | os.PathLike) -> tuple[Path, dict]:
    """The dataset folder and its manifest; accepts the folder or a parent holding exactly one."""
    root = Path(root)
    if (root / MANIFEST).exists() or (root / "dataset_dict.json").exists():
        manifest = read_manifest(root)
        if manifest is None or manifest.get("format") != "tips_eval.synthetic":
            raise DatasetLayoutError(f"synthetic dataset {root} is incomplete or not ours: expected {_LAYOUT}",
                                     hint="delete it and generate it again")
        return root, manifest
    found = sorted(p for p in root.glob("synthetic-*") if read_manifest(p) is not None) if root.is_dir() else []
    if len(found) == 1:
        return found[0], read_manifest(found[0])
    if len(found) > 1:
        raise DatasetLayoutError(f"{root} holds {len(found)} synthetic datasets ({', '.join(p.name for p in found)})",
                                 hint="pass the folder of the one you want")
    raise DatasetLayoutError(f"no synthetic dataset at {root}: expected {_LAYOUT}", hint=_HINT)


class SyntheticDataset(ImageDataset):
    """One split of a generated synthetic dataset, seen from view 1, view 2 or both."""

    name = "synthetic"
    reader_version = "1"
    class_names: tuple[str, ...] = SEMANTIC_CLASSES  # semantic classes of ``mask``
    num_classes: int = len(SEMANTIC_CLASSES)
    ignore_index: int = 255  # never present: every pixel has a class
    label_names: tuple[str, ...] = SHAPES  # image-level ``label``
    num_labels: int = len(SHAPES)

    def __init__(self, root: str | os.PathLike, split: str, view: int | str = 1):
        from datasets import load_from_disk

        self.path, self.manifest = resolve_root(root)
        if split not in SPLITS:
            raise UnknownNameError(f"synthetic: unknown split {split!r}", hint=f"one of {', '.join(SPLITS)}")
        if view not in (1, 2, "both"):
            raise DataError(f"synthetic: view={view!r}; expected 1, 2 or 'both'")
        self.split, self.view = split, view
        try:
            table = load_from_disk(str(self.path))[split]
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise DatasetLayoutError(f"cannot read split {split!r} of {self.path}: {str(e).splitlines()[0][:160]}",
                                     hint="delete the folder and generate it again") from None
        self.views = (1, 2) if view == "both" else (int(view),)
        self.scene_ids = [int(s) for s in table["scene_id"]]
        suffix = {1: "", 2: "_view2"}
        self._images = {v: table.select_columns([f"image{suffix[v]}"]) for v in self.views}
        self._targets = {v: table.select_columns([c + suffix[v] for c in _TARGET_COLUMNS] + ["K"]).with_format("numpy")
                         for v in self.views}
        self._suffix = suffix

    def __len__(self) -> int:
        return len(self.scene_ids) * len(self.views)

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"synthetic/{self.split}: index {i} out of range [0, {len(self)})")
        row, k = divmod(i, len(self.views))
        return row, self.views[k]

    def image_key(self, i: int) -> str:
        row, v = self._locate(i)
        return f"{self.path.name}/{self.split}/{self.scene_ids[row]:06d}/view{v}"

    def load_image(self, i: int) -> Image.Image:
        row, v = self._locate(i)
        return self._images[v][row][f"image{self._suffix[v]}"].convert("RGB")

    def target(self, i: int) -> dict:
        row, v = self._locate(i)
        r = {k.removesuffix("_view2"): x for k, x in self._targets[v][row].items()}
        valid = r["valid"].astype(bool)
        normals = r["normals"].astype(np.float32)
        norm = np.linalg.norm(normals, axis=-1, keepdims=True)
        normals = np.divide(normals, norm, out=np.zeros_like(normals), where=norm > 0)  # stored as float16
        return {
            "label": int(r["label"]),
            "mask": r["semantic"].astype(np.int64),
            "depth": r["depth"].astype(np.float32),
            "valid": valid,
            "normals": normals,
            "captions": [str(r["caption"])],
            "instance": self.scene_ids[row],
            "domain": 0,
            "instance_mask": r["instance"].astype(np.int64),
            "K": r["K"].astype(np.float32),
            "cam_to_world": r["cam_to_world"].astype(np.float32),
        }

    def describe(self) -> dict:
        return {**super().describe(), "view": self.view, "path": str(self.path), "params": self.manifest["params"]}


@register_dataset("synthetic")
def open_synthetic(root: str | os.PathLike, split: str, view: int | str = 1) -> SyntheticDataset:
    """``open_dataset("synthetic", root, split, view=1|2|"both")``."""
    return SyntheticDataset(root, split, view=view)
