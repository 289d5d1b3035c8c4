"""Dense data views: per-kind targets, checked once, resized / flipped / augmented with their image.

A *kind* is ``segmentation`` (``mask`` int64, ``ignore_index``), ``depth``
(``depth`` metres + ``valid``) or ``normals`` (``normals`` unit vectors +
``valid``). :func:`read_target` turns a reader's target dict into one
canonical ``(value, valid)`` pair and fails with one line naming the dataset,
the item and what is wrong. Everything geometric (resize, crop, flip) is
applied to the image and its target together; a left-right flip also negates
the x component of normals (camera frame x right).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tips_eval.data.base import ImageDataset
from tips_eval.errors import BadImageError, DataError

KINDS = ("segmentation", "depth", "normals")
IGNORE = 255
_NORMALS_HINT = ("nyuv2: open it with normals='file' (Probe3D's normals, see convert_probe3d_pkl) or "
                 "normals='from_depth'; navi: normals='from_depth'")


def _where(ds: ImageDataset, i: int) -> str:
    try:
        key = ds.image_key(i)
    except Exception:  # noqa: BLE001 (only used in a message)
        key = f"#{i}"
    return f"{getattr(ds, 'name', 'dataset')}/{getattr(ds, 'split', '?')} item {key}"


def check_dataset(ds: ImageDataset, kind: str, role: str) -> None:
    """Fail early (before any extraction) when a split cannot feed this dense task (the first readable item
    is checked; unreadable images are the feature engine's business)."""
    if len(ds) == 0:
        raise DataError(f"{ds.name}/{ds.split} ({role}) is empty")
    for i in range(min(len(ds), 8)):
        try:
            t = ds.target(i)
            break
        except BadImageError:
            if i == min(len(ds), 8) - 1:
                raise
    need = {"segmentation": "mask", "depth": "depth", "normals": "normals"}[kind]
    if need not in t:
        have = ", ".join(sorted(k for k in t if not k.startswith("_"))) or "none"
        raise DataError(f"the {kind} task needs a {need!r} target, but dataset {ds.name}/{ds.split} ({role}) "
                        f"gives none (its targets: {have})", hint=_NORMALS_HINT if kind == "normals" else None)
    if kind == "segmentation" and not getattr(ds, "num_classes", None):
        raise DataError(f"dataset {ds.name}/{ds.split} has no num_classes; the segmentation task needs it")


def read_target(ds: ImageDataset, i: int, kind: str, num_classes: int | None = None,
                max_depth: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(value, valid)`` of item ``i``: mask (H, W) int64 / depth (H, W) float32 / normals (H, W, 3) float32,
    and a bool (H, W) mask of pixels that count. Label values are checked against ``num_classes``; depth
    beyond ``max_depth`` is invalid (set to 0, as Probe3D's loss does)."""
    t = ds.target(i)
    if kind == "segmentation":
        mask = np.asarray(t["mask"])
        if mask.ndim != 2:
            raise DataError(f"{_where(ds, i)}: mask has shape {mask.shape}; expected (H, W)")
        ignore = int(getattr(ds, "ignore_index", IGNORE))
        mask = mask.astype(np.int64)
        valid = mask != ignore
        if num_classes is not None and valid.any():
            lo, hi = int(mask[valid].min()), int(mask[valid].max())
            if lo < 0 or hi >= num_classes:
                bad = lo if lo < 0 else hi
                raise DataError(f"{_where(ds, i)}: label value {bad} outside 0..{num_classes - 1} "
                                f"(and not the ignore value {ignore})",
                                hint="check the dataset's number of classes and its label mapping")
        return np.where(valid, mask, IGNORE), valid
    if kind == "depth":
        depth = np.asarray(t["depth"], dtype=np.float32)
        if depth.ndim != 2:
            raise DataError(f"{_where(ds, i)}: depth has shape {depth.shape}; expected (H, W) metres")
        valid = np.isfinite(depth) & (depth > 0)
        if "valid" in t:
            valid &= np.asarray(t["valid"], dtype=bool)
        if max_depth is not None:
            valid &= depth <= max_depth
        return np.where(valid, depth, 0.0).astype(np.float32), valid
    if "normals" not in t:
        raise DataError(f"{_where(ds, i)} has no 'normals' target", hint=_NORMALS_HINT)
    n = np.asarray(t["normals"], dtype=np.float32)
    if n.ndim != 3 or n.shape[-1] != 3:
        raise DataError(f"{_where(ds, i)}: normals have shape {n.shape}; expected (H, W, 3)")
    norm = np.linalg.norm(n, axis=-1)
    valid = np.isfinite(norm) & (norm > 1e-6)
    if "normals_valid" in t:
        valid &= np.asarray(t["normals_valid"], dtype=bool)
    n = np.divide(n, norm[..., None], out=np.zeros_like(n), where=valid[..., None])
    return n, valid


# ------------------------------------------------------------- tensor helpers
def target_tensor(value: np.ndarray, valid: np.ndarray, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Channels-first torch view: mask (1, H, W) int64, depth (1, H, W), normals (3, H, W); valid (1, H, W)."""
    v = torch.from_numpy(np.ascontiguousarray(value))
    v = v.permute(2, 0, 1) if kind == "normals" else v[None]
    return v, torch.from_numpy(np.ascontiguousarray(valid))[None]


def resize_target(value: torch.Tensor, valid: torch.Tensor, size: tuple[int, int], kind: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest ('nearest-exact', pixel-centre aligned like the image resize) resize of a target and its mask:
    a resized pixel copies one source pixel, so classes stay classes and invalid depth stays 0."""
    if tuple(value.shape[-2:]) == tuple(size):
        return value, valid
    dtype = value.dtype
    v = F.interpolate(value[None].float(), size=size, mode="nearest-exact")[0].to(dtype)
    m = F.interpolate(valid[None].float(), size=size, mode="nearest-exact")[0] > 0.5
    return v, m


def flip_target(value: torch.Tensor, valid: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-right flip; normals change the sign of x (camera frame, x to the right)."""
    value, valid = value.flip(-1), valid.flip(-1)
    if kind == "normals":
        value = value.clone()
        value[0] = -value[0]
    return value, valid


def pad_target(value: torch.Tensor, valid: torch.Tensor, size: tuple[int, int], kind: str):
    """Pad bottom/right to at least ``size``; padded pixels are ignore (255) / invalid."""
    ph, pw = max(0, size[0] - value.shape[-2]), max(0, size[1] - value.shape[-1])
    if not (ph or pw):
        return value, valid
    fill = IGNORE if kind == "segmentation" else 0
    return F.pad(value, (0, pw, 0, ph), value=fill), F.pad(valid, (0, pw, 0, ph), value=False)


# -------------------------------------------------------------- augmentation
def short_side_size(w: int, h: int, short: int) -> tuple[int, int]:
    """(height, width) after resizing so the short side is ``short`` (aspect kept)."""
    s = short / min(w, h)
    return max(1, round(h * s)), max(1, round(w * s))


def augment(img: Image.Image, value: torch.Tensor, valid: torch.Tensor, kind: str, size: int,
            scale: tuple[float, float], flip: bool, jitter) -> tuple[Image.Image, torch.Tensor, torch.Tensor]:
    """Random scale (short side = size * U(scale)), random ``size`` x ``size`` crop (padded with
    ignore / invalid where the image is smaller), optional flip (p = 0.5) and colour jitter.
    Randomness comes from torch's RNG (seeded per worker by the DataLoader)."""
    r = float(torch.empty(()).uniform_(*scale)) if scale[1] > scale[0] else float(scale[0])
    h, w = short_side_size(img.width, img.height, max(1, round(size * r)))
    img = img.resize((w, h), Image.BILINEAR)
    value, valid = resize_target(value, valid, (h, w), kind)
    if h < size or w < size:
        canvas = Image.new("RGB", (max(w, size), max(h, size)))
        canvas.paste(img, (0, 0))
        img = canvas
        value, valid = pad_target(value, valid, (size, size), kind)
    top = int(torch.randint(0, img.height - size + 1, ()))
    left = int(torch.randint(0, img.width - size + 1, ()))
    img = img.crop((left, top, left + size, top + size))
    value, valid = value[:, top:top + size, left:left + size], valid[:, top:top + size, left:left + size]
    if flip and bool(torch.rand(()) < 0.5):
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        value, valid = flip_target(value, valid, kind)
    if jitter is not None:
        img = jitter(img)
    return img, value.contiguous(), valid.contiguous()


# -------------------------------------------------------------------- views
def object_box(valid: np.ndarray) -> tuple[int, int, int, int]:
    """Probe3D's NAVI ``bbox_crop`` on a square image: the square around the valid pixels, centred when it
    fits, else shifted into the image. Returns (top, left, bottom, right)."""
    h, w = valid.shape
    ys, xs = np.nonzero(valid)
    if ys.size == 0:
        return 0, 0, h, w
    tl, br = np.array([ys.min(), xs.min()]), np.array([ys.max(), xs.max()])
    side = int(min(max((br - tl).max(), 1), h, w))
    pad = side - (br - tl)
    start = tl - pad // 2
    if (start < 0).any() or (start + side > np.array([h, w])).any():
        start = np.clip(tl - pad, 0, None)
        start = np.minimum(start, np.array([h, w]) - side)
    return int(start[0]), int(start[1]), int(start[0]) + side, int(start[1]) + side


class ObjectCropView(ImageDataset):
    """An object-centric view (Probe3D NAVI): centre square crop, then :func:`object_box` around the valid
    depth. Images and every (H, W) target are cropped alike; the crop is part of each item's key."""

    def __init__(self, base: ImageDataset):
        self.base, self.name, self.split = base, base.name, base.split
        self.class_names = getattr(base, "class_names", None)
        self.num_classes = getattr(base, "num_classes", None)
        self.ignore_index = getattr(base, "ignore_index", IGNORE)
        self._boxes: dict[int, tuple[int, int, int, int]] = {}

    def __len__(self) -> int:
        return len(self.base)

    def image_key(self, i: int) -> str:
        return f"{self.base.image_key(i)}#object-crop"

    def _box(self, i: int, t: dict | None = None) -> tuple[int, int, int, int]:
        if i not in self._boxes:
            t = t if t is not None else self.base.target(i)
            depth = np.asarray(t["depth"])
            valid = (depth > 0) & np.asarray(t.get("valid", depth > 0), dtype=bool)
            h, w = valid.shape
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            b = object_box(valid[top:top + side, left:left + side])
            self._boxes[i] = (b[0] + top, b[1] + left, b[2] + top, b[3] + left)
        return self._boxes[i]

    def load_image(self, i: int) -> Image.Image:
        t, l, b, r = self._box(i)
        return self.base.load_image(i).crop((l, t, r, b))

    def target(self, i: int) -> dict:
        t = self.base.target(i)
        top, left, bottom, right = self._box(i, t)
        out: dict[str, Any] = {}
        for k, v in t.items():
            if isinstance(v, np.ndarray) and v.ndim >= 2 and v.shape[:2] == np.asarray(t["depth"]).shape:
                out[k] = np.ascontiguousarray(v[top:bottom, left:right])
            elif k != "K":  # intrinsics no longer match the crop
                out[k] = v
        return out

    def fingerprint(self) -> str:
        return f"objcrop-{self.base.fingerprint()}"

    def describe(self) -> dict:
        return {**self.base.describe(), "view": "object crop (Probe3D NAVI bbox_crop)"}


def slide_windows(h: int, w: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of ``window`` x ``window`` crops covering an (h, w) image, mmseg 'slide' style:
    a regular grid of ``stride`` with the last window clamped to the border."""
    def starts(n: int) -> list[int]:
        if n <= window:
            return [0]
        k = math.ceil((n - window) / stride) + 1
        return sorted({min(j * stride, n - window) for j in range(k)})
    return [(y, x) for y in starts(h) for x in starts(w)]


class SlideView(ImageDataset):
    """Every sliding window of every image (short side resized to ``window`` first, aspect kept):
    the unit the feature cache stores for slide inference. ``windows[i]`` = (image index, top, left)."""

    def __init__(self, base: ImageDataset, window: int, stride: int, sizes: list[tuple[int, int]]):
        self.base, self.window, self.stride = base, int(window), int(stride)
        self.name, self.split = base.name, base.split
        self.resized = [short_side_size(w, h, self.window) for h, w in sizes]
        self.windows = [(i, y, x) for i, (h, w) in enumerate(self.resized)
                        for y, x in slide_windows(h, w, self.window, self.stride)]

    def __len__(self) -> int:
        return len(self.windows)

    def image_key(self, i: int) -> str:
        j, y, x = self.windows[i]
        return f"{self.base.image_key(j)}#short{self.window}@{y},{x}"

    def load_image(self, i: int) -> Image.Image:
        j, y, x = self.windows[i]
        h, w = self.resized[j]
        img = self.base.load_image(j).resize((w, h), Image.BILINEAR)
        if h < self.window or w < self.window:  # never for short-side resizing; kept for safety
            canvas = Image.new("RGB", (max(w, self.window), max(h, self.window)))
            canvas.paste(img, (0, 0))
            img = canvas
        return img.crop((x, y, x + self.window, y + self.window))

    def fingerprint(self) -> str:
        return f"slide{self.window}s{self.stride}-{self.base.fingerprint()}"
