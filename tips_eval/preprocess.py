"""Image preprocessing that travels with each encoder (open_clip/timm habit).

A :class:`Preprocess` is a small frozen dataclass, so it can be hashed into the
feature-cache key and written into result records, and it is callable on a
PIL image, returning a float tensor (3, H, W) ready for ``encode_image``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

ResizeMode = Literal["squash", "shortest", "longest"]

_INTERP = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class Preprocess:
    """Resize + normalise, the way the encoder's pretrained tag expects.

    - ``squash``: resize to exactly ``image_size`` (TIPS's official transform).
    - ``shortest``: resize the short side to ``image_size / crop_pct``, then
      centre-crop ``image_size`` (timm/open_clip eval transform).
    - ``longest``: resize the long side to ``image_size`` and pad to a square
      with ``fill`` (open_clip's ``resize_mode='longest'``).
    """

    image_size: tuple[int, int]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: ResizeMode = "squash"
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    fill: int = 0

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.resize not in ("squash", "shortest", "longest"):
            raise ValueError(f"Preprocess.resize={self.resize!r}; expected squash, shortest or longest")
        if self.interpolation not in _INTERP:
            raise ValueError(f"Preprocess.interpolation={self.interpolation!r}; expected one of {sorted(_INTERP)}")

    def replace(self, **changes) -> "Preprocess":
        """A copy with some fields changed, e.g. ``pre.replace(image_size=(224, 224))``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resize_pil(self, img: Image.Image) -> Image.Image:
        """Geometric part only (used for masks too, with nearest interpolation)."""
        h, w = self.image_size
        interp = _INTERP[self.interpolation]
        if self.resize == "squash":
            return TF.resize(img, [h, w], interpolation=interp, antialias=True)
        if self.resize == "shortest":
            scale_h, scale_w = h / self.crop_pct, w / self.crop_pct
            short = int(math.floor(max(scale_h, scale_w)))
            img = TF.resize(img, short, interpolation=interp, antialias=True)
            return TF.center_crop(img, [h, w])
        # longest: fit inside, then pad to (h, w)
        iw, ih = img.size
        scale = min(h / ih, w / iw)
        nh, nw = max(1, round(ih * scale)), max(1, round(iw * scale))
        img = TF.resize(img, [nh, nw], interpolation=interp, antialias=True)
        pad_l, pad_t = (w - nw) // 2, (h - nh) // 2
        return TF.pad(img, [pad_l, pad_t, w - nw - pad_l, h - nh - pad_t], fill=self.fill)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(…, 3, H, W) float in [0, 1] -> normalised."""
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
        return (pixels - mean) / std

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":  # grayscale, RGBA, palette: converted, never an error
            img = img.convert("RGB")
        return self.normalize(TF.to_tensor(self.resize_pil(img)))
