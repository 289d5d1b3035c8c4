"""Raw-pixels baseline: patchified pixels, a real lower bound for every image task.

Each p x p patch becomes its flattened RGB values (3 p^2 dims); the global
token is the mean patch. Nothing is learned, so anything an encoder adds shows
up against it.
"""

from __future__ import annotations

import torch

from tips_eval.encoder import Encoder, Features
from tips_eval.preprocess import Preprocess

from .registry import ModelCard, register_model


class RawPixelsEncoder(Encoder):
    def __init__(self, patch_size: int = 14, image_size: int = 224, name: str = "raw-pixels"):
        super().__init__()
        self.name = name
        self.patch_size = patch_size
        self.embed_dim = self.global_dim = 3 * patch_size * patch_size
        self.num_layers = 1
        self.global_token_names = ("mean",)
        self.preprocess = Preprocess(image_size=(image_size, image_size), mean=(0.485, 0.456, 0.406),
                                     std=(0.229, 0.224, 0.225), resize="squash", interpolation="bilinear")
        self.weights_note = "no weights: flattened pixel patches"

    def weights_digest(self) -> str:
        return f"raw-pixels-v1-p{self.patch_size}"

    def _patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        b, c, h, w = pixels.shape
        p = self.patch_size
        x = pixels.float().reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(b, h // p, w // p, c * p * p)

    def _encode_image(self, pixels, layers, kinds) -> Features:
        patches = self._patchify(pixels)
        glob = patches.mean(dim=(1, 2))[:, None]
        out_layers = [(glob[:, 0], patches) for _ in layers] if layers else None
        value = patches if "value" in kinds else None
        return Features(glob, patches, self.global_token_names, out_layers, value)


@register_model(ModelCard(
    name="raw-pixels", family="pixels", image_size=224, patch_size=14, embed_dim=588, has_text=False,
    description="Raw pixels, patchified (a lower bound; no weights)", weights="none",
))
def raw_pixels(pretrained=True, device=None, image_size=224, patch_size=14, **kw):
    enc = RawPixelsEncoder(patch_size=patch_size, image_size=image_size)
    return enc.to(device) if device and device != "meta" else enc
