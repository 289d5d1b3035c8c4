"""Tiny copies of the dense datasets' real on-disk layouts, for tests.

Each ``make_*`` writes into ``root`` and returns the path the reader takes.
Labels follow simple shapes a probe can learn: a background region and one
rectangle per image whose class is ``RECT_CLASSES[i % 3]``; every pixel's
colour is its class colour plus a little noise. Depth is a tilted plane
(``PLANE_NORMAL``, facing the camera), so normals have a known answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

from tips_eval.data.class_names import voc_palette
from tips_eval.data.geometry import encode_normals_png, intrinsics

SIZE = (48, 64)  # (H, W): not square, so transposes show
RECT = (slice(12, 36), slice(16, 48))
RECT_CLASSES = (1, 2, 3)
_COLOURS = np.random.default_rng(0).integers(30, 226, size=(256, 3))

#: unit normal of the depth plane (camera frame, towards the camera) and its offset: n . X = PLANE_D
PLANE_NORMAL = np.array([0.25, -0.15, -1.0]) / np.linalg.norm([0.25, -0.15, -1.0])
PLANE_D = -2.0


def _image(classes: np.ndarray, seed: int) -> Image.Image:
    noise = np.random.default_rng(seed).integers(-8, 9, size=classes.shape + (3,))
    return Image.fromarray(np.clip(_COLOURS[classes] + noise, 0, 255).astype(np.uint8), "RGB")


def _rect_classes(i: int, background: int, size=SIZE) -> np.ndarray:
    cls = np.full(size, background, dtype=np.int64)
    cls[RECT] = RECT_CLASSES[i % 3]
    return cls


def _ring(size=SIZE) -> np.ndarray:
    """A 1-pixel boundary just outside the rectangle (VOC marks object boundaries 255)."""
    ring = np.zeros(size, dtype=bool)
    r, c = RECT
    ring[r.start - 1:r.stop + 1, c.start - 1:c.stop + 1] = True
    ring[r, c] = False
    return ring


def _write_list(path: Path, ids) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def _save_palette_png(path: Path, mask: np.ndarray) -> None:
    img = Image.fromarray(mask.astype(np.uint8), "P")
    img.putpalette(voc_palette().ravel().tolist())
    img.save(path)


def make_voc(root: Path, n: int = 4, aug: bool = False, aug_list: str = "train_aug") -> Path:
    """``VOCdevkit/VOC2012`` with n train + n val images; ``aug=True`` adds n SBD-only ids,
    ``SegmentationClassAug`` (boundary-free grayscale masks, also for the train ids) and the
    aug list (``aug_list="train_aug"``: train_aug.txt with one id a line; ``"deeplab"``: train_aug.txt with
    DeepLab's ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` lines; ``"mmseg"``: mmseg's aug.txt,
    which leaves out the train ids)."""
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    train = [f"2007_{i:06d}" for i in range(n)]
    val = [f"2007_{i:06d}" for i in range(n, 2 * n)]
    for i, img_id in enumerate(train + val):
        cls = _rect_classes(i, background=0)
        _image(cls, i).save(voc / "JPEGImages" / f"{img_id}.jpg", quality=95)
        mask = cls.copy()
        mask[_ring()] = 255
        _save_palette_png(voc / "SegmentationClass" / f"{img_id}.png", mask)
    _write_list(voc / "ImageSets/Segmentation/train.txt", train)
    _write_list(voc / "ImageSets/Segmentation/val.txt", val)
    _write_list(voc / "ImageSets/Segmentation/trainval.txt", train + val)
    if aug:
        extra = [f"2008_{i:06d}" for i in range(n)]
        (voc / "SegmentationClassAug").mkdir(exist_ok=True)
        for i, img_id in enumerate(train + extra):
            cls = _rect_classes(i, background=0)
            if img_id in extra:
                _image(cls, 100 + i).save(voc / "JPEGImages" / f"{img_id}.jpg", quality=95)
            Image.fromarray(cls.astype(np.uint8), "L").save(voc / "SegmentationClassAug" / f"{img_id}.png")
        if aug_list == "train_aug":
            _write_list(voc / "ImageSets/Segmentation/train_aug.txt", train + extra)
        elif aug_list == "deeplab":
            _write_list(voc / "ImageSets/Segmentation/train_aug.txt",
                        [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in train + extra])
        else:
            _write_list(voc / "ImageSets/Segmentation/aug.txt", extra)
    return voc


def make_ade20k(root: Path, n: int = 4) -> Path:
    """``ADEChallengeData2016`` with n training + n validation images; file values: 1 (wall) background,
    rectangle ``RECT_CLASSES[i % 3] + 1``, and a 2-pixel frame of 0 (other, ignored)."""
    ade = Path(root) / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        (ade / "images" / split).mkdir(parents=True, exist_ok=True)
        (ade / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cls = _rect_classes(i, background=0)  # 0-based class ids
            raw = (cls + 1).astype(np.uint8)
            raw[:2, :] = raw[-2:, :] = 0
            raw[:, :2] = raw[:, -2:] = 0
            stem = f"{prefix}_{i + 1:08d}"
            _image(np.where(raw == 0, 255, cls), i).save(ade / "images" / split / f"{stem}.jpg", quality=95)
            Image.fromarray(raw, "L").save(ade / "annotations" / split / f"{stem}.png")
    return ade


def make_pascal_context(root: Path, n: int = 4) -> Path:
    """``VOCdevkit/VOC2010`` with n train + n val images; file values: 0 (background) outside the
    rectangle, ``RECT_CLASSES[i % 3]`` inside, 59 in the top-left 4x4 corner."""
    pc = Path(root) / "VOCdevkit" / "VOC2010"
    for d in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (pc / d).mkdir(parents=True, exist_ok=True)
    ids = {"train": [f"2008_{i:06d}" for i in range(n)], "val": [f"2008_{i:06d}" for i in range(n, 2 * n)]}
    for split, split_ids in ids.items():
        for img_id in split_ids:
            i = int(img_id[5:])
            cls = _rect_classes(i, background=0)
            cls[:4, :4] = 59
            _image(cls, i).save(pc / "JPEGImages" / f"{img_id}.jpg", quality=95)
            Image.fromarray(cls.astype(np.uint8), "L").save(pc / "SegmentationClassContext" / f"{img_id}.png")
        _write_list(pc / f"ImageSets/SegmentationContext/{split}.txt", split_ids)
    return pc


def nyu_plane_depth(size=SIZE, K=None, normal=PLANE_NORMAL, offset: float = PLANE_D) -> np.ndarray:
    """Depth (metres) of the plane ``normal . X = offset`` (default ``PLANE_NORMAL``, ``PLANE_D``) seen
    through ``K`` (default: NYU's intrinsics at ``size``)."""
    from tips_eval.data.nyu import nyu_intrinsics

    h, w = size
    K = nyu_intrinsics(h, w) if K is None else K
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((h, w))], -1)
    return (offset / (rays @ np.asarray(normal, float))).astype(np.float32)


def _nyu_depths(n: int, size=SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(inpainted, raw) depth stacks: raw has a hole (0) and a far block (12 m, beyond the 10 m cap)."""
    base = np.stack([nyu_plane_depth(size) * (1 + 0.1 * i) for i in range(n)])
    raw = base.copy()
    raw[:, :6, :8] = 0.0
    raw[:, -6:, -8:] = 12.0
    return base, raw


def make_nyu_mat(root: Path, n: int = 6, size=SIZE, normals: bool = True) -> Path:
    """``nyu_depth_v2_labeled.mat`` (HDF5 with MATLAB's 512-byte header and transposed datasets:
    images (N, 3, W, H) uint8, depths / rawDepths (N, W, H)) + ``splits.mat`` (v5; first half train,
    rest test, 1-based) + ``normals/NNNN.npy`` (the plane's normal) when ``normals``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    depths, raw = _nyu_depths(n, size)
    images = np.stack([np.asarray(_image((d * 40).astype(np.int64) % 256, i)) for i, d in enumerate(depths)])
    path = root / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("images", data=images.transpose(0, 3, 2, 1))
        f.create_dataset("depths", data=depths.transpose(0, 2, 1))
        f.create_dataset("rawDepths", data=raw.transpose(0, 2, 1))
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")
    n_train = n // 2
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.arange(1, n_train + 1, dtype=np.float64)[:, None],
                                           "testNdxs": np.arange(n_train + 1, n + 1, dtype=np.float64)[:, None]})
    if normals:
        (root / "normals").mkdir(exist_ok=True)
        for j in range(1, n + 1):
            np.save(root / "normals" / f"{j:04d}.npy", np.broadcast_to(PLANE_NORMAL, size + (3,)).astype(np.float32))
    return root


def make_nyu_sync(root: Path, n: int = 4, size=SIZE, normals: bool = True) -> Path:
    """BTS-style ``nyu_{train,test}.txt`` (``/<scene>/rgb_XXXXX.jpg /<scene>/sync_depth_XXXXX.png <focal>``),
    16-bit mm depth PNGs (raw-like: hole + 12 m block) and ``normals/<scene>/rgb_XXXXX.png`` when ``normals``."""
    from tips_eval.data.nyu import nyu_intrinsics

    root = Path(root)
    _, raw = _nyu_depths(2 * n, size)
    focal = float(nyu_intrinsics(*size)[0, 0])
    lines = {"train": [], "test": []}
    for i in range(2 * n):
        split = "train" if i < n else "test"
        scene = f"kitchen_{i % 2:04d}a"
        (root / scene).mkdir(parents=True, exist_ok=True)
        _image((raw[i] * 40).astype(np.int64) % 256, i).save(root / scene / f"rgb_{i:05d}.jpg", quality=95)
        Image.fromarray(np.round(raw[i] * 1000).astype(np.uint16)).save(root / scene / f"sync_depth_{i:05d}.png")
        lines[split].append(f"/{scene}/rgb_{i:05d}.jpg /{scene}/sync_depth_{i:05d}.png {focal:.4f}\n")
        if normals:
            (root / "normals" / scene).mkdir(parents=True, exist_ok=True)
            enc = encode_normals_png(np.broadcast_to(PLANE_NORMAL, size + (3,)))
            Image.fromarray(enc, "RGB").save(root / "normals" / scene / f"rgb_{i:05d}.png")
    for split, split_lines in lines.items():
        (root / f"nyu_{split}.txt").write_text("".join(split_lines))
    return root


NAVI_FOCAL = 60.0
NAVI_SIZE = (40, 56)


def navi_disparity(depth_m: np.ndarray) -> np.ndarray:
    """NAVI's uint16 encoding of depth in metres (0 stays 0)."""
    with np.errstate(divide="ignore"):
        v = np.where(depth_m > 0, 65535 * 10 / np.maximum(depth_m * 1000, 1e-9), 0)
    return np.clip(np.round(v), 0, 65535).astype(np.uint16)


def _navi_scene(scene: Path, obj: str, n_images: int, seed: int, rotate_first: bool) -> None:
    for d in ("images", "depth", "masks"):
        (scene / d).mkdir(parents=True, exist_ok=True)
    h, w = NAVI_SIZE
    K = intrinsics(NAVI_FOCAL, NAVI_FOCAL, (w - 1) / 2, (h - 1) / 2)
    obj_mask = np.zeros(NAVI_SIZE, dtype=bool)
    obj_mask[8:32, 10:46] = True
    entries = []
    for k in range(n_images):
        depth = np.where(obj_mask, nyu_plane_depth(NAVI_SIZE, K) / 4, 0.0)  # about 0.5 m
        img = np.zeros(NAVI_SIZE + (3,), dtype=np.uint8)
        img[: h // 2] = (220, 40, 40)  # bright top half shows whether EXIF rotation was applied
        img[h // 2:] = (20, 20, 60)
        pil = Image.fromarray(img, "RGB")
        name = f"{k:03d}"
        if rotate_first and k == 0:  # stored rotated, EXIF orientation 6 says "rotate 90 CW to view"
            exif = Image.Exif()
            exif[0x0112] = 6
            pil.transpose(Image.Transpose.ROTATE_90).save(scene / "images" / f"{name}.jpg", quality=95,
                                                          exif=exif.tobytes())
        else:
            pil.save(scene / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(navi_disparity(depth)).save(scene / "depth" / f"{name}.png")
        Image.fromarray((obj_mask * 255).astype(np.uint8), "L").save(scene / "masks" / f"{name}.png")
        entries.append({"object_id": obj, "filename": f"{name}.jpg", "filename_original": f"IMG_{seed}_{k}.jpg",
                        "image_size": [h, w], "scene_name": scene.name, "split": "train", "occluded": False,
                        "camera": {"focal_length": NAVI_FOCAL, "q": [1.0, 0.0, 0.0, 0.0], "t": [0.0, 0.0, 500.0],
                                   "camera_model": "pixel_5"}})
    (scene / "annotations.json").write_text(json.dumps(entries))


def make_navi(root: Path, objects: int = 2, multiview_scenes: int = 3, images_per_scene: int = 4,
              unpaired_object: bool = True) -> Path:
    """NAVI v1-style root: each object has ``multiview_scenes`` scenes (alternately spelled
    ``multiview-XX-<camera>`` and ``multiview_XX_<camera>``), a ``wild_set`` whose image 000 is stored
    EXIF-rotated, a ``3d_scan`` folder and a v1.5 ``video-00-...`` folder (both ignored);
    ``unpaired_object`` adds one object without a wild_set (skipped by the splits)."""
    root = Path(root) / "navi_v1"
    for o in range(objects):
        obj = f"obj_{o:02d}"
        (root / obj / "3d_scan").mkdir(parents=True, exist_ok=True)
        for j in range(multiview_scenes):
            name = f"multiview-{j:02d}-pixel_5" if j % 2 == 0 else f"multiview_{j:02d}_canon_t4i"
            _navi_scene(root / obj / name, obj, images_per_scene, seed=o * 10 + j, rotate_first=False)
        _navi_scene(root / obj / "wild_set", obj, images_per_scene, seed=o * 10 + 9, rotate_first=True)
        _navi_scene(root / obj / "video-00-pixel_5", obj, 1, seed=99, rotate_first=False)
    if unpaired_object:
        _navi_scene(root / "obj_zz_no_wild" / "multiview-00-pixel_5", "obj_zz_no_wild", images_per_scene, 7, False)
    return root
