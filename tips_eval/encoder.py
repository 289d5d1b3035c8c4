"""The frozen-feature interface every model adapter implements.

One API for all models (timm's ``forward_intermediates`` habit):

>>> f = enc.encode_image(pixels, layers=[2, 5])
>>> f.global_tokens   # (B, G, Dg)   named by enc.global_token_names
>>> f.patch_tokens    # (B, H/p, W/p, D), after the final norm
>>> f.layers          # [(cls (B, D), patch (B, h, w, D)), ...], each after the final norm
>>> enc.encode_text(["a photo of a cat"])  # (B, Dg), not normalised

Tasks only ever see this interface; they never name a model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .errors import ImageSizeError, NoTextTowerError
from .preprocess import Preprocess

#: Feature kinds an encoder may compute besides global and patch tokens.
#: ``value``: MaskCLIP-style patch features from the last block's value
#: projection, through the final norm (zero-shot segmentation).
#: ``mean_patch``: the mean of the final patch tokens, appended as an extra
#: global token named "mean_patch" (DINOv2's linear-probe "avgpool" input).
FEATURE_KINDS = ("value", "mean_patch")


@dataclass
class Features:
    """What ``encode_image`` returns. All tensors share the batch dimension."""

    global_tokens: torch.Tensor
    patch_tokens: torch.Tensor
    global_names: tuple[str, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    value_tokens: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def global_token(self, name: str) -> torch.Tensor:
        """One named global token, e.g. ``f.global_token('cls2')`` -> (B, Dg)."""
        try:
            return self.global_tokens[:, self.global_names.index(name)]
        except ValueError:
            raise KeyError(f"global token {name!r} not in {self.global_names}") from None


class Encoder(nn.Module):
    """Base class of all adapters. Subclasses implement ``_encode_image``.

    Attributes every adapter sets: ``name``, ``patch_size``, ``embed_dim``
    (patch-token width), ``global_dim`` (global-token width, equal to the text
    width for image-text models), ``image_size`` (native (H, W)),
    ``preprocess``, ``global_token_names``, ``num_layers`` (blocks), and
    ``dpt_layers`` (the 4 block indices DPT decoders read).
    """

    name: str = "encoder"
    patch_size: int = 14
    embed_dim: int = 0
    global_dim: int = 0
    num_layers: int = 0
    global_token_names: tuple[str, ...] = ("cls",)
    preprocess: Preprocess
    has_text: bool = False
    #: extra description written into records (e.g. "random weights")
    weights_note: str = ""

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocess.image_size

    @property
    def dpt_layers(self) -> tuple[int, ...]:
        """Four blocks, ceil(qL/4) - 1 for q = 1..4 (TIPS DPT heads: B 2,5,8,11; So 6,13,20,26)."""
        n = self.num_layers
        return tuple(max(0, math.ceil(n * q / 4) - 1) for q in (1, 2, 3, 4))

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ image
    def check_pixels(self, pixels: torch.Tensor) -> None:
        """Refuse inputs the ViT cannot patchify; never silently crop."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ImageSizeError(
                f"{self.name}: pixels of shape {tuple(pixels.shape)}; expected (B, 3, H, W)",
                hint="pass a batch of preprocessed images (enc.preprocess(pil_image))",
            )
        h, w = pixels.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ImageSizeError(
                f"{self.name}: image {h}x{w} is not a multiple of the patch size {p}",
                hint=f"resize to e.g. {max(p, h // p * p)}x{max(p, w // p * p)} or use enc.preprocess",
            )

    def normalize_layers(self, layers: Sequence[int] | None) -> list[int]:
        if not layers:
            return []
        out = []
        for i in layers:
            j = int(i) + self.num_layers if int(i) < 0 else int(i)
            if not 0 <= j < self.num_layers:
                raise ValueError(f"{self.name}: layer index {i} out of range for {self.num_layers} blocks")
            out.append(j)
        return out

    @torch.inference_mode()
    def encode_image(
        self, pixels: torch.Tensor, layers: Sequence[int] | None = None, kinds: Sequence[str] = ()
    ) -> Features:
        """Global + patch tokens (and intermediate ``layers``, 0-based; extra ``kinds``)."""
        self.check_pixels(pixels)
        for k in kinds:
            if k not in FEATURE_KINDS:
                raise ValueError(f"unknown feature kind {k!r}; expected one of {FEATURE_KINDS}")
        feats = self._encode_image(pixels, self.normalize_layers(layers), tuple(k for k in kinds if k != "mean_patch"))
        if "mean_patch" in kinds:
            mean = feats.patch_tokens.mean(dim=(1, 2))
            if mean.shape[-1] != feats.global_tokens.shape[-1]:
                raise ValueError(f"{self.name}: mean_patch ({mean.shape[-1]} dims) cannot join global tokens of "
                                 f"{feats.global_tokens.shape[-1]} dims")
            feats.global_tokens = torch.cat([feats.global_tokens, mean[:, None].to(feats.global_tokens.dtype)], 1)
            feats.global_names = tuple(feats.global_names) + ("mean_patch",)
        return feats

    def _encode_image(self, pixels: torch.Tensor, layers: list[int], kinds: tuple[str, ...]) -> Features:
        raise NotImplementedError

    # ------------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]):
        raise NoTextTowerError(f"{self.name} is an image-only encoder: it has no tokenizer")

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        raise NoTextTowerError(
            f"{self.name} is an image-only encoder: it has no text tower",
            hint="text tasks skip image-only models; check enc.has_text first",
        )

    # ----------------------------------------------------------- fingerprint
    def weights_digest(self) -> str:
        """sha256 over parameter and buffer bytes (adapters may use file hashes instead)."""
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            if t.device.type == "meta":
                h.update(str((tuple(t.shape), str(t.dtype))).encode())
                continue
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def fingerprint(self) -> str:
        """Cache key part: weights hash + preprocessing (+ adapter config)."""
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            h = hashlib.sha256()
            h.update(type(self).__name__.encode())
            h.update(self.weights_digest().encode())
            h.update(repr(sorted(self.preprocess.to_dict().items())).encode())
            h.update(repr(self.config_for_fingerprint()).encode())
            cached = h.hexdigest()[:20]
            self._fingerprint = cached
        return cached

    def config_for_fingerprint(self) -> dict:
        return {}

    def describe(self) -> dict:
        """Small dict for result records and ``tips-eval models``."""
        return {
            "name": self.name,
            "class": type(self).__name__,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "global_dim": self.global_dim,
            "num_layers": self.num_layers,
            "global_tokens": list(self.global_token_names),
            "has_text": self.has_text,
            "image_size": list(self.image_size),
            "preprocess": self.preprocess.to_dict(),
            "weights": self.weights_note,
        }
