"""NAVI (v1 / v1.5) object-centric depth and normals, with Probe3D's splits.

Layout (google/navi README)::

    <root>/<object_id>/multiview-XX-<camera>/   (v1.0 may spell it multiview_XX...)
    <root>/<object_id>/wild_set/
        annotations.json    [{"filename", "image_size": [h, w], "camera": {"focal_length" (px), "q", "t"}, ...}]
        images/NNN.jpg      EXIF-rotated: ImageOps.exif_transpose gives the annotated frame
        depth/NNN.png       uint16 disparity v: depth = 65535 * 10 / v mm (v = 0: missing)
        masks/NNN.png       object mask (encoding unconfirmed; read as > 0)

Splits (Probe3D ``evals/datasets/navi.py``): objects without a ``wild_set``
(or without multiview scenes) are skipped; ``train`` = the first
``int(0.9 * n)`` multiview scenes of each object, ``val`` = the rest,
``trainval`` = all multiview scenes, ``test`` = ``wild_set``; the instance list
is then subsampled ``[::stride]`` (stride 4). Deviation, recorded in
``describe()``: objects, scenes and images are sorted here, while Probe3D
takes them in filesystem listing order, so its 90% cut and its ``[::4]``
subset are not reproducible across machines.

Images keep their native size (the task's transform resizes). ``K`` has the
annotation's focal length and the image centre as principal point (NAVI's
``w//2, h//2``), rescaled when the files on disk were resized (e.g. Probe3D's
``downsampled_`` copies, read with ``image_prefix="downsampled_"``).
``normals="from_depth"`` computes normals with :func:`geometry.normals_from_depth`
at native resolution (Probe3D computes them after its 512 px crop).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tips_eval.errors import BadImageError, DataError, DatasetLayoutError

from .base import ImageDataset, register_dataset
from .geometry import DepthUnitsCheck, intrinsics, normals_from_depth, scale_intrinsics

NAVI_LAYOUT = "<root>/<object_id>/{multiview-XX-<camera>,wild_set}/{annotations.json,images/,depth/,masks/}"
_SPLITS = {"train": "train", "val": "val", "valid": "val", "trainval": "trainval", "test": "test"}
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def decode_navi_depth(raw: np.ndarray) -> np.ndarray:
    """Metres from NAVI's uint16 disparity PNG values (``1 / (v / (65535 * 10))`` mm; 0 -> 0)."""
    v = np.asarray(raw, dtype=np.float64)
    with np.errstate(divide="ignore"):
        mm = np.where(v > 0, 65535.0 * 10.0 / np.maximum(v, 1), 0.0)
    return (mm / 1000.0).astype(np.float32)


def _is_scene(name: str) -> bool:
    return name.startswith("multiview") or name == "wild_set"


def _has_scenes(obj: Path) -> bool:
    return obj.is_dir() and any(_is_scene(p.name) and p.is_dir() for p in obj.iterdir())


def _find_root(root: Path) -> Path:
    if not root.is_dir():
        raise DatasetLayoutError(f"navi: root {root} does not exist; expected {NAVI_LAYOUT}")
    children = sorted(p for p in root.iterdir() if p.is_dir())
    if any(_has_scenes(c) for c in children):
        return root
    hint = None
    if _has_scenes(root):  # an object folder
        hint = root.parent
    elif (root / "annotations.json").is_file() and root.parent.parent.is_dir():  # a scene folder
        hint = root.parent.parent
    else:
        hint = next((c for c in children if any(_has_scenes(g) for g in c.iterdir() if g.is_dir())), None)
    if hint is not None:
        raise DatasetLayoutError(f"navi: {root} is not the dataset root; the root looks like {hint}",
                                 hint=f"pass {hint}; expected {NAVI_LAYOUT}")
    raise DatasetLayoutError(f"navi: {root} has no <object>/multiview*/ or <object>/wild_set/ folders; "
                             f"expected {NAVI_LAYOUT}")


def _image_ids(scene: Path, prefix: str) -> list[str]:
    img_dir = scene / "images"
    if not img_dir.is_dir():
        raise DatasetLayoutError(f"navi: {img_dir} is missing; expected {NAVI_LAYOUT}")
    names = [f[:-4] for f in os.listdir(img_dir) if f.lower().endswith(".jpg")]
    ids = [n[len(prefix):] for n in names if n.startswith(prefix) and "_" not in n[len(prefix):]]
    return sorted(ids, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))


def _annotations(scene: Path) -> dict[str, dict]:
    path = scene / "annotations.json"
    try:
        entries = json.loads(path.read_text())
        return {Path(e["filename"]).stem: e for e in entries}
    except FileNotFoundError:
        raise DatasetLayoutError(f"navi: {path} is missing; expected {NAVI_LAYOUT}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"navi: {path} is not a list of entries with 'filename' ({type(e).__name__}: {e})") from None


class NAVIDataset(ImageDataset):
    """One Probe3D split of NAVI: items are (object, scene, image id)."""

    name = "navi"

    def __init__(self, root: Path, split: str, instances: list[tuple[str, str, str]], annos: dict, *,
                 prefix: str, max_depth: float | None, normals: str | None, object_mask: bool, protocol: dict):
        self.root, self.split, self.instances, self.annos = root, split, instances, annos
        self.prefix, self.max_depth, self.normals, self.object_mask = prefix, max_depth, normals, object_mask
        self.protocol = protocol
        self._units = DepthUnitsCheck("navi")
        if not instances:
            raise DataError(f"navi: split {split!r} under {root} has no images")

    def __len__(self) -> int:
        return len(self.instances)

    def _path(self, i: int, kind: str, ext: str) -> Path:
        obj, scene, img_id = self.instances[i]
        return self.root / obj / scene / kind / f"{self.prefix}{img_id}.{ext}"

    def image_key(self, i: int) -> str:
        obj, scene, img_id = self.instances[i]
        return f"{obj}/{scene}/images/{self.prefix}{img_id}.jpg"

    def load_image(self, i: int) -> Image.Image:
        path = self._path(i, "images", "jpg")
        try:
            with Image.open(path) as img:
                return ImageOps.exif_transpose(img).convert("RGB")
        except FileNotFoundError:
            raise DatasetLayoutError(f"navi: image file {path} is missing") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise BadImageError(f"cannot decode image {path}: {str(e).splitlines()[0][:160]}") from None

    def _image_hw(self, path: Path) -> tuple[int, int]:
        """Height and width after EXIF transpose, from the header only."""
        try:
            with Image.open(path) as img:
                w, h = img.size
                return (w, h) if img.getexif().get(0x0112, 1) in _ROTATED else (h, w)
        except (UnidentifiedImageError, OSError) as e:
            raise BadImageError(f"cannot read image header {path}: {e}") from None

    def target(self, i: int) -> dict:
        obj, scene, img_id = self.instances[i]
        dpath, ipath = self._path(i, "depth", "png"), self._path(i, "images", "jpg")
        try:
            with Image.open(dpath) as d:
                if d.mode not in ("I;16", "I;16B", "I;16L", "I"):
                    raise DataError(f"navi: depth {dpath} is a {d.mode!r} image; expected a uint16 disparity PNG")
                depth = decode_navi_depth(np.asarray(d))
        except FileNotFoundError:
            raise DatasetLayoutError(f"navi: depth file {dpath} is missing") from None
        h, w = depth.shape
        ih, iw = self._image_hw(ipath)
        if (ih, iw) != (h, w):
            raise DataError(f"navi: depth {dpath} is {w}x{h} (WxH) but image {ipath} is {iw}x{ih} after EXIF "
                            "transpose")
        anno = self.annos[(obj, scene)][img_id]
        h0, w0 = (int(x) for x in anno["image_size"])
        f = float(anno["camera"]["focal_length"])
        if (h0, w0) != (h, w) and (w0, h0) == (h, w) and h != w:
            raise DataError(f"navi: {ipath} is {w}x{h} but annotations.json says image_size [h, w] = [{h0}, {w0}]; "
                            "an EXIF rotation mismatch?")
        K = scale_intrinsics(intrinsics(f, f, (w0 - 1) / 2, (h0 - 1) / 2), (h0, w0), (h, w))
        valid = depth > 0
        self._units(depth, valid, dpath)
        if self.max_depth is not None:
            valid &= depth <= self.max_depth
        depth = np.where(valid, depth, 0.0).astype(np.float32)
        out = {"depth": depth, "valid": valid, "K": K, "object_id": obj, "scene": scene}
        if self.normals == "from_depth":
            out["normals"], out["normals_valid"] = normals_from_depth(depth, K, valid)
        if self.object_mask:
            mpath = self._path(i, "masks", "png")
            if not mpath.is_file():
                raise DatasetLayoutError(f"navi: object_mask=True but {mpath} is missing")
            m = np.asarray(Image.open(mpath))
            m = m if m.ndim == 2 else m[..., 0]
            if m.shape != (h, w):
                raise DataError(f"navi: mask {mpath} is {m.shape[1]}x{m.shape[0]} but depth {dpath} is {w}x{h}")
            out["object_mask"] = m > 0
        return out

    def describe(self) -> dict:
        return {**super().describe(), **self.protocol}


@register_dataset("navi")
def navi(root: str | os.PathLike, split: str = "test", *, stride: int = 4, max_depth: float | None = None,
         normals: str | bool | None = None, image_prefix: str = "", object_mask: bool = False) -> NAVIDataset:
    """Open a Probe3D split of NAVI (``train`` / ``val`` / ``trainval`` / ``test``)."""
    if split not in _SPLITS:
        raise DataError(f"navi: unknown split {split!r}; expected train, val, trainval or test")
    split = _SPLITS[split]
    if normals is True:
        normals = "from_depth"
    if normals not in (None, False, "from_depth"):
        raise DataError(f"navi: normals={normals!r}; expected None or 'from_depth' (NAVI ships no normals)")
    if not isinstance(stride, int) or stride < 1:
        raise DataError(f"navi: stride={stride!r}; expected a positive int (Probe3D: 4)")
    root = _find_root(Path(root).expanduser())
    instances, annos, skipped = [], {}, []
    for obj_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        scenes = sorted(p.name for p in obj_dir.iterdir() if p.is_dir() and _is_scene(p.name))
        multiview = [s for s in scenes if s.startswith("multiview")]
        if not scenes:
            continue
        if "wild_set" not in scenes or not multiview:
            skipped.append(obj_dir.name)
            continue
        n_train = int(0.9 * len(multiview))
        chosen = {"train": multiview[:n_train], "val": multiview[n_train:], "trainval": multiview,
                  "test": ["wild_set"]}[split]
        for scene in chosen:
            scene_dir = obj_dir / scene
            ann = annos[(obj_dir.name, scene)] = _annotations(scene_dir)
            for img_id in _image_ids(scene_dir, image_prefix):
                if img_id not in ann:
                    raise DataError(f"navi: image {scene_dir / 'images' / (image_prefix + img_id)}.jpg has no entry "
                                    f"in {scene_dir / 'annotations.json'}")
                instances.append((obj_dir.name, scene, img_id))
    protocol = {"stride": stride, "max_depth": max_depth, "normals": normals or None, "image_prefix": image_prefix,
                "skipped_objects": skipped, "order": "sorted objects/scenes/images (Probe3D: listing order)",
                "val_rule": "multiview scenes after int(0.9 * n) per object"}
    return NAVIDataset(root, split, instances[::stride], annos, prefix=image_prefix, max_depth=max_depth,
                       normals=normals or None, object_mask=object_mask, protocol=protocol)
