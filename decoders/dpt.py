"""DPT decoder, the same function and state-dict keys as the official TIPS one.

Reference: google-deepmind/tips ``pytorch/decoders.py`` (the released TIPSv2
segmentation / depth / normals heads). Written independently; parity with
the official outputs is proved by ``tests/test_dpt.py`` against
``shared/fixtures/tips_parity/dpt_*``.

Inputs are the 4 intermediate layers a DPT head reads, shallowest first, each
``(cls (B, D), patch (B, D, h, w))`` (channels-first, as the official code).
:func:`to_dpt_inputs` turns the encoder's ``Features.layers`` (channels-last)
into that form.

Data flow (official ``DPTHead``):
  readout "project": concat(patch, CLS) -> Linear(2D, D) -> GELU(tanh)
  -> 1x1 conv to ``post_process_channels[i]`` -> resize (x4 transposed conv,
  x2 transposed conv, identity, /2 conv) -> 3x3 conv to ``channels``
  -> fusion deepest first (each fusion block upsamples x2, align_corners=True)
  -> 3x3 ``project`` conv -> per-pixel Linear ``head``.
The native output is (16 * ceil(h / 2), 16 * ceil(w / 2)), i.e. 8x an even
patch grid: the deepest level is strided by 2, then upsampled x2 four times.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tips_eval.errors import UnknownNameError

TASKS = ("segmentation", "depth", "normals")
READOUTS = ("project", "ignore")
FeatureList = Sequence[tuple[torch.Tensor, torch.Tensor]]


class UnknownTaskError(UnknownNameError, ValueError):
    """A dense task name that is not one of :data:`TASKS` (also a ValueError: a bad argument)."""


def check_task(task: str) -> str:
    """``task`` if it is a DPT task, else one clear :class:`UnknownTaskError`."""
    if task not in TASKS:
        raise UnknownTaskError(f"unknown DPT task {task!r}; expected one of {', '.join(TASKS)}")
    return task


class PreActResidualConvUnit(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, plus the input (no biases)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """Adds a refined skip input (if any), refines, upsamples x2, 1x1 conv."""

    def __init__(self, channels: int, has_residual: bool) -> None:
        super().__init__()
        self.has_residual = has_residual
        if has_residual:
            self.residual_unit = PreActResidualConvUnit(channels)
        self.main_unit = PreActResidualConvUnit(channels)
        self.out_conv = nn.Conv2d(channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.has_residual and skip is not None:
            if skip.shape[-2:] != x.shape[-2:]:  # odd grids: the skip is resized to x
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.residual_unit(skip)
        x = self.main_unit(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class ReassembleBlocks(nn.Module):
    """Reads out CLS, projects each level to its width and rescales it (x4, x2, x1, /2)."""

    def __init__(self, embed_dim: int, out_channels: Sequence[int], readout: str = "project") -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout {readout!r}: expected one of {READOUTS}")
        if len(out_channels) != 4:
            raise ValueError(f"post_process_channels {tuple(out_channels)}: expected 4 widths")
        c = tuple(int(x) for x in out_channels)
        self.readout = readout
        self.out_projections = nn.ModuleList([nn.Conv2d(embed_dim, ch, 1) for ch in c])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(c[3], c[3], 3, stride=2, padding=1),
        ])
        if readout == "project":
            self.readout_projects = nn.ModuleList([nn.Linear(2 * embed_dim, embed_dim) for _ in c])

    def forward(self, features: FeatureList) -> list[torch.Tensor]:
        out = []
        for i, (cls, x) in enumerate(features):
            if self.readout == "project":
                b, d, h, w = x.shape
                tokens = x.flatten(2).transpose(1, 2)  # (B, hw, D)
                tokens = torch.cat([tokens, cls[:, None, :].expand(-1, tokens.shape[1], -1)], dim=-1)
                # tanh GELU: the Flax default the released heads were trained with
                tokens = F.gelu(self.readout_projects[i](tokens), approximate="tanh")
                x = tokens.transpose(1, 2).reshape(b, d, h, w)
            out.append(self.resize_layers[i](self.out_projections[i](x)))
        return out


class DPTHead(nn.Module):
    """Shared DPT trunk: (4 levels) -> dense features (B, channels, H', W')."""

    def __init__(self, embed_dim: int, channels: int = 256,
                 post_process_channels: Sequence[int] = (128, 256, 512, 1024),
                 readout: str = "project", output_activation: bool = False) -> None:
        super().__init__()
        self.output_activation = output_activation
        self.reassemble = ReassembleBlocks(embed_dim, post_process_channels, readout)
        self.convs = nn.ModuleList(
            [nn.Conv2d(ch, channels, 3, padding=1, bias=False) for ch in post_process_channels])
        self.fusion_blocks = nn.ModuleList(
            [FeatureFusionBlock(channels, has_residual=i > 0) for i in range(4)])
        self.project = nn.Conv2d(channels, channels, 3, padding=1, bias=True)

    def forward(self, features: FeatureList) -> torch.Tensor:
        levels = [conv(x) for conv, x in zip(self.convs, self.reassemble(features))]
        out = self.fusion_blocks[0](levels[3])
        for i in range(1, 4):  # bottom-up: deepest level first
            out = self.fusion_blocks[i](out, levels[3 - i])
        out = self.project(out)
        return F.relu(out) if self.output_activation else out


class DPTDecoder(nn.Module):
    """A DPT decoder for one dense task; keys match the official ``Decoder``.

    ``task``: "segmentation" (``num_classes`` logits), "depth" (``num_bins``
    classification bins over ``linspace(min_depth, max_depth)``, output in
    metres) or "normals" (3 raw channels, or ``num_classes`` if given, e.g. 4
    for xyz + kappa). Call ``m(features, image_size=None)``; ``features`` are
    4 ``(cls (B, D), patch (B, D, h, w))`` pairs, shallowest first.
    """

    def __init__(self, task: str, embed_dim: int, channels: int = 256,
                 post_process_channels: Sequence[int] = (128, 256, 512, 1024),
                 num_classes: int | None = None, num_bins: int = 256,
                 min_depth: float = 0.001, max_depth: float = 10.0,
                 readout: str = "project", output_activation: bool = False) -> None:
        super().__init__()
        check_task(task)
        if task == "segmentation":
            if not num_classes or num_classes < 1:
                raise ValueError(f"segmentation DPT needs num_classes >= 1, got {num_classes!r}")
            out = int(num_classes)
        elif task == "depth":
            if num_bins < 1 or not 0 <= min_depth < max_depth:
                raise ValueError(f"depth DPT needs num_bins >= 1 and 0 <= min_depth < max_depth, got "
                                 f"{num_bins}, [{min_depth}, {max_depth}]")
            out = int(num_bins)
        else:
            out = int(num_classes or 3)
        self.task = task
        self.embed_dim = int(embed_dim)
        self.channels = int(channels)
        self.post_process_channels = tuple(int(c) for c in post_process_channels)
        self.readout = readout
        self.out_channels = out
        self.dpt = DPTHead(embed_dim, channels, post_process_channels, readout, output_activation)
        self.head = nn.Linear(channels, out)  # per pixel, channels-last (the official Dense head)
        if task == "depth":
            self.min_depth, self.max_depth = float(min_depth), float(max_depth)
            self.register_buffer("bin_centers", torch.linspace(min_depth, max_depth, num_bins))

    def config(self) -> dict:
        """The constructor arguments (recorded with results; enough to rebuild the module)."""
        cfg = dict(task=self.task, embed_dim=self.embed_dim, channels=self.channels,
                   post_process_channels=list(self.post_process_channels), readout=self.readout,
                   output_activation=self.dpt.output_activation)
        if self.task == "depth":
            cfg.update(num_bins=self.out_channels, min_depth=self.min_depth, max_depth=self.max_depth)
        else:
            cfg["num_classes"] = self.out_channels
        return cfg

    def logits(self, features: FeatureList) -> torch.Tensor:
        """Per-pixel head outputs at the decoder's native size (B, out, H', W')."""
        if len(features) != 4:
            raise ValueError(f"DPT decoder reads 4 layers, got {len(features)}")
        x = self.dpt(features)
        return self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, features: FeatureList, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        x = self.logits(features)
        if self.task == "depth":
            x = bins_to_depth(F.relu(x) + self.min_depth, self.bin_centers)
        if image_size is not None:  # in x's own dtype: depth stays float32 under autocast
            with torch.autocast(device_type=x.device.type, enabled=False):
                x = F.interpolate(x, size=tuple(image_size), mode="bilinear", align_corners=False)
        return x


def bins_to_depth(scores: torch.Tensor, bin_centers: torch.Tensor) -> torch.Tensor:
    """Non-negative bin scores (B, n, H, W) -> expected depth (B, 1, H, W) ("linear" normalisation).

    Computed in float32 (a no-op in float32; keeps the normalisation exact under autocast).
    """
    with torch.autocast(device_type=scores.device.type, enabled=False):
        scores = scores.float()
        probs = scores / scores.sum(dim=1, keepdim=True)
        return torch.einsum("bchw,c->bhw", probs, bin_centers.float())[:, None]


def to_dpt_inputs(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Encoder ``Features.layers`` [(cls (B, D), patch (B, h, w, D))] -> DPT inputs (patch as (B, D, h, w))."""
    return [(cls, patch.permute(0, 3, 1, 2).contiguous()) for cls, patch in layers]
