"""Linear probes on frozen patch tokens: DINOv2 "lin." / DINOv3 segmentation and depth heads.

Input convention (both heads): a list of ``(cls (B, D), patch (B, h, w, D))``
pairs, one per backbone layer, shallowest first -- channels-last, exactly the
encoder's ``Features.layers`` (and ``(Features.global_token(..), Features.patch_tokens)``
for one layer). A single pair may be passed without the list.

Protocol sources (``shared/PROTOCOLS.md``):

- :class:`LinearHead` -- section 1. DINOv2 ``BNHead`` (dinov2
  ``eval/segmentation/models/decode_heads/linear_head.py``) and DINOv3
  ``LinearHead`` (dinov3 ``eval/segmentation/models/heads/linear_head.py``):
  per layer concat(patch, broadcast CLS) when ``use_cls``; layers resized
  bilinearly (align_corners=False) to the first layer's grid and concatenated
  on channels; Dropout2d (DINOv2 lin.: 0, DINOv3: 0.1) -> BatchNorm -> 1x1
  conv with weight ~ N(0, 0.01), bias 0 (DINOv3's init; mmseg's ``conv_seg``
  default). BatchNorm2d stands in for SyncBatchNorm: under DDP pass
  ``sync_batchnorm=True`` to Lightning (or ``nn.SyncBatchNorm.convert_sync_batchnorm``).
- :class:`DepthBinsHead` -- section 2. DINOv2 depth ``BNHead`` "lin. 1/4"
  (dinov2 ``hub/depth/decode_heads.py``, ``hub/depthers.py``): CLS
  concatenated, features bilinearly upsampled x``upsample`` (=4), no
  BatchNorm (commented out upstream; DINOv3 turns it on: ``batchnorm=True``),
  1x1 conv to ``n_bins`` bins, "linear" norm (ReLU, +0.1, divide by the sum),
  expectation over linspace(min_depth, max_depth) ("UD" bins).
  Conv init N(0, 0.01), bias 0 (DINOv3 depth ``LinearHead``; DINOv2 leaves
  torch's default).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tips_eval.errors import DataError

Layer = tuple[torch.Tensor, torch.Tensor]
DEPTH_SCORE_EPS = 0.1  # DINOv2 "linear" norm strategy: relu(logits) + 0.1 (after AdaBins)


def _as_layers(layers: Layer | Sequence[Layer]) -> list[Layer]:
    if isinstance(layers, tuple) and len(layers) == 2 and isinstance(layers[0], torch.Tensor):
        return [layers]
    return list(layers)


def concat_layer_features(layers: Layer | Sequence[Layer], use_cls: bool, n_layers: int,
                          in_dim: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """[(cls (B, D), patch (B, h, w, D))] -> (B, n_layers * D * (2 if use_cls), h', w') channels-first.

    Per layer: patch, then the broadcast CLS (DINOv2/v3 order); layers in the
    given order, each resized bilinearly to ``size`` (default: the first
    layer's grid).
    """
    layers = _as_layers(layers)
    if len(layers) != n_layers:
        raise DataError(f"linear head built for {n_layers} layer(s), got {len(layers)}")
    maps = []
    for i, (cls, patch) in enumerate(layers):
        if patch.ndim != 4 or patch.shape[-1] != in_dim:
            raise DataError(f"layer {i}: patch tokens of shape {tuple(patch.shape)}; expected (B, h, w, {in_dim})",
                            hint="pass channels-last patch grids, as Features.layers holds them")
        x = patch.permute(0, 3, 1, 2)
        if use_cls:
            if cls is None or cls.shape != (patch.shape[0], in_dim):
                got = None if cls is None else tuple(cls.shape)
                raise DataError(f"layer {i}: CLS token of shape {got}; expected ({patch.shape[0]}, {in_dim})")
            x = torch.cat([x, cls[:, :, None, None].expand(-1, -1, *x.shape[-2:])], dim=1)
        target = tuple(size) if size is not None else tuple(maps[0].shape[-2:]) if maps else tuple(x.shape[-2:])
        if tuple(x.shape[-2:]) != target:
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        maps.append(x)
    return torch.cat(maps, dim=1)


def _init_classifier(conv: nn.Conv2d) -> None:
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    nn.init.zeros_(conv.bias)


class LinearHead(nn.Module):
    """BatchNorm + 1x1 conv over (CLS-concatenated, multi-layer) patch tokens -> per-patch logits.

    ``m(layers, image_size=None)`` -> (B, num_outputs, h, w), or bilinearly
    resized (align_corners=False) to ``image_size``.
    """

    def __init__(self, in_dim: int, num_outputs: int, use_cls: bool = False, n_layers: int = 1,
                 batchnorm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim, self.num_outputs = int(in_dim), int(num_outputs)
        self.use_cls, self.n_layers = bool(use_cls), int(n_layers)
        self.channels = self.in_dim * self.n_layers * (2 if use_cls else 1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.bn = nn.BatchNorm2d(self.channels) if batchnorm else nn.Identity()
        self.conv = nn.Conv2d(self.channels, self.num_outputs, kernel_size=1)
        _init_classifier(self.conv)

    def features(self, layers: Layer | Sequence[Layer]) -> torch.Tensor:
        """The concatenated input map (B, channels, h, w) the classifier sees (before dropout/BN)."""
        return concat_layer_features(layers, self.use_cls, self.n_layers, self.in_dim)

    def forward(self, layers: Layer | Sequence[Layer], image_size: tuple[int, int] | None = None) -> torch.Tensor:
        x = self.conv(self.bn(self.dropout(self.features(layers))))
        if image_size is not None:
            x = F.interpolate(x, size=tuple(image_size), mode="bilinear", align_corners=False)
        return x


class DepthBinsHead(nn.Module):
    """DINOv2 depth "lin." head: x``upsample`` features -> 1x1 conv to bins -> expected depth (B, 1, H, W).

    The output is a convex combination of the bin centres, so it lies in
    [min_depth, max_depth]. ``image_size`` resizes the depth map (bilinear,
    align_corners=False), after the expectation as in DINOv2's loss.
    """

    def __init__(self, in_dim: int, n_bins: int = 256, min_depth: float = 0.001, max_depth: float = 10.0,
                 use_cls: bool = True, upsample: int = 4, n_layers: int = 1, batchnorm: bool = False) -> None:
        super().__init__()
        if n_bins < 1 or not 0 <= min_depth < max_depth:
            raise ValueError(f"depth head needs n_bins >= 1 and 0 <= min_depth < max_depth, "
                             f"got {n_bins}, [{min_depth}, {max_depth}]")
        if upsample < 1:
            raise ValueError(f"upsample must be >= 1, got {upsample}")
        self.in_dim, self.n_bins, self.upsample = int(in_dim), int(n_bins), int(upsample)
        self.use_cls, self.n_layers = bool(use_cls), int(n_layers)
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.channels = self.in_dim * self.n_layers * (2 if use_cls else 1)
        self.bn = nn.BatchNorm2d(self.channels) if batchnorm else nn.Identity()
        self.conv = nn.Conv2d(self.channels, self.n_bins, kernel_size=1)
        _init_classifier(self.conv)
        self.register_buffer("bin_centers", torch.linspace(min_depth, max_depth, n_bins), persistent=False)

    def features(self, layers: Layer | Sequence[Layer]) -> torch.Tensor:
        """Concatenated input upsampled x``upsample`` (B, channels, h*u, w*u)."""
        layers = _as_layers(layers)
        size = None
        if layers and layers[0][1].ndim == 4:
            size = (layers[0][1].shape[1] * self.upsample, layers[0][1].shape[2] * self.upsample)
        return concat_layer_features(layers, self.use_cls, self.n_layers, self.in_dim, size=size)

    def forward(self, layers: Layer | Sequence[Layer], image_size: tuple[int, int] | None = None) -> torch.Tensor:
        if self.training and not isinstance(self.bn, nn.Identity):
            logits = self.conv(self.bn(self.features(layers)))  # batch statistics of the upsampled map
        else:
            # bilinear upsampling and a per-pixel affine map (1x1 conv, eval BN) commute exactly:
            # convolve at the token grid, then upsample the n_bins logits instead of all channels
            x = concat_layer_features(_as_layers(layers), self.use_cls, self.n_layers, self.in_dim)
            logits = self.conv(self.bn(x))
            if self.upsample > 1:
                h, w = logits.shape[-2:]
                logits = F.interpolate(logits, size=(h * self.upsample, w * self.upsample), mode="bilinear",
                                       align_corners=False)
        with torch.autocast(device_type=logits.device.type, enabled=False):  # depth in float32 under autocast
            scores = F.relu(logits.float()) + DEPTH_SCORE_EPS
            probs = scores / scores.sum(dim=1, keepdim=True)
            depth = torch.einsum("bkhw,k->bhw", probs, self.bin_centers.float())[:, None]
            if image_size is not None:
                depth = F.interpolate(depth, size=tuple(image_size), mode="bilinear", align_corners=False)
        # a convex combination of the bins; clamp only removes float rounding at the ends
        return depth.clamp(self.min_depth, self.max_depth)
