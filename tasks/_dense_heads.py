"""Heads, losses and learning-rate schedules of the dense probes (PROTOCOLS.md sections 1-3).

Heads (all read ``[(cls (B, D), patch (B, h, w, D)), ...]`` from frozen layers):

- ``linear``: DINOv2 "lin." ``BNHead`` -- BatchNorm + 1x1 conv on the last
  layer's patch tokens (``use_cls`` / last-``n_layers`` options); logits
  upsampled bilinearly (align_corners=False).
- ``linear_bins``: DINOv2 depth "lin. 1" -- CLS concatenated, x4 upsample,
  1x1 conv to 256 bins over linspace(min_depth, max_depth), expected depth.
- ``dpt``: the TIPS-compatible DPT decoder on ``encoder.dpt_layers``.

Losses: cross-entropy with ignore 255 (segmentation); ``sig_weight`` x SigLoss
(sqrt(mean g^2 - 0.85 mean(g)^2), g = log(p + 1e-3) - log(t + 1e-3), pooled
over the batch's valid pixels; DINOv2 / Probe3D) + ``grad_weight`` x the
multi-scale log-gradient loss (DINOv2 ``GradientLoss``: |g(x) - g(x+2)| at
strides 1, 2, 4, 6) (depth); angular loss acos(cos(p, t)) over valid pixels,
or Probe3D's uncertainty-aware variant (Bae et al.: 4th channel kappa =
ELU(.) + 1.01, loss = log(1 + exp(-kappa pi)) - log(1 + kappa^2) + kappa acos)
(normals).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tips_eval.decoders import DepthBinsHead, DPTDecoder, LinearHead, to_dpt_inputs
from tips_eval.errors import DataError

HEADS = {"segmentation": ("linear", "dpt"), "depth": ("linear_bins", "dpt"), "normals": ("linear", "dpt")}
NORMALS_LOSSES = ("uncertainty", "angular")
_EPS = 1e-3  # SigLoss / gradient-loss log offset (DINOv2, Probe3D)


def check_head(kind: str, head: str) -> str:
    if head not in HEADS[kind]:
        raise DataError(f"{kind}: unknown head {head!r}; expected one of {', '.join(HEADS[kind])}")
    return head


class DenseHead(nn.Module):
    """One head plus its output convention: ``forward(layers, size)`` -> (B, C, *size) where C is
    the class logits (segmentation), 1 depth channel in metres, or 3 (+1 kappa) normal channels."""

    def __init__(self, kind: str, head: str, embed_dim: int, *, num_outputs: int, n_layers: int = 1,
                 use_cls: bool = False, batchnorm: bool = True, dropout: float = 0.0, n_bins: int = 256,
                 min_depth: float = 0.001, max_depth: float = 10.0, upsample: int = 4,
                 dpt_channels: int = 256, dpt_post_process_channels=(128, 256, 512, 1024)):
        super().__init__()
        self.kind, self.head_name = kind, check_head(kind, head)
        if head == "linear":
            self.net = LinearHead(embed_dim, num_outputs, use_cls=use_cls, n_layers=n_layers,
                                  batchnorm=batchnorm, dropout=dropout)
        elif head == "linear_bins":
            self.net = DepthBinsHead(embed_dim, n_bins=n_bins, min_depth=min_depth, max_depth=max_depth,
                                     use_cls=use_cls, upsample=upsample, n_layers=n_layers, batchnorm=batchnorm)
        else:
            task = "normals" if kind == "normals" else kind
            self.net = DPTDecoder(task, embed_dim, channels=dpt_channels,
                                  post_process_channels=tuple(dpt_post_process_channels),
                                  num_classes=num_outputs if kind != "depth" else None, num_bins=n_bins,
                                  min_depth=min_depth, max_depth=max_depth)

    def forward(self, layers, size: tuple[int, int]) -> torch.Tensor:
        if self.head_name == "dpt":
            return self.net(to_dpt_inputs(layers), image_size=size)
        return self.net(layers, image_size=size)


# -------------------------------------------------------------------- losses
def sig_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, sigma: float = 0.85) -> torch.Tensor:
    """Scale-invariant log loss over every valid pixel of the batch (DINOv2 ``SigLoss``, Probe3D ``sig_loss``)."""
    g = torch.log(pred[valid] + _EPS) - torch.log(target[valid] + _EPS)
    if g.numel() == 0:
        return pred.sum() * 0.0
    return (g.pow(2).mean() - sigma * g.mean().pow(2)).clamp(min=1e-12).sqrt()


def gradient_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """DINOv2 ``GradientLoss``: log-depth difference gradients at distance 2, at strides 1, 2, 4, 6."""
    total = pred.sum() * 0.0
    for step in (1, 2, 4, 6):
        p, t, m = pred[..., ::step, ::step], target[..., ::step, ::step], valid[..., ::step, ::step]
        n = m.sum()
        if n == 0:
            continue
        d = (torch.log(p + _EPS) - torch.log(t + _EPS)) * m
        mf = m.float()
        gv = (d[..., :-2, :] - d[..., 2:, :]).abs() * mf[..., :-2, :] * mf[..., 2:, :]
        gh = (d[..., :, :-2] - d[..., :, 2:]).abs() * mf[..., :, :-2] * mf[..., :, 2:]
        total = total + (gv.sum() + gh.sum()) / n
    return total


def angular_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, uncertainty: bool,
                 eps: float = 1e-4) -> torch.Tensor:
    """Mean over valid pixels of acos(cos(pred, target)) (radians), or Probe3D's uncertainty-aware loss."""
    m = valid[:, 0]
    if not bool(m.any()):
        return pred.sum() * 0.0
    cos = F.cosine_similarity(pred[:, :3], target, dim=1).clamp(-1 + eps, 1 - eps)
    ang = torch.acos(cos)
    if uncertainty:
        kappa = F.elu(pred[:, 3]) + 1.01
        ang = torch.log1p(torch.exp(-kappa * math.pi)) - torch.log1p(kappa.pow(2)) + kappa * ang
    return ang[m].mean()


class DenseLoss(nn.Module):
    """The task loss on head outputs at the target size: ``loss(out, value, valid)``."""

    def __init__(self, kind: str, *, sig_weight: float = 1.0, grad_weight: float = 0.0,
                 normals_loss: str = "uncertainty", ignore_index: int = 255):
        super().__init__()
        if normals_loss not in NORMALS_LOSSES:
            raise DataError(f"normals_loss={normals_loss!r}; expected one of {', '.join(NORMALS_LOSSES)}")
        self.kind, self.sig_weight, self.grad_weight = kind, float(sig_weight), float(grad_weight)
        self.uncertainty, self.ignore_index = normals_loss == "uncertainty", ignore_index

    def forward(self, out: torch.Tensor, value: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        out = out.float()
        if self.kind == "segmentation":
            return F.cross_entropy(out, value[:, 0].long(), ignore_index=self.ignore_index)
        if self.kind == "depth":
            loss = self.sig_weight * sig_loss(out, value, valid)
            if self.grad_weight:
                loss = loss + self.grad_weight * gradient_loss(out, value, valid)
            return loss
        return angular_loss(out, value, valid, self.uncertainty)


def predict(out: torch.Tensor, kind: str) -> torch.Tensor:
    """Head output -> prediction: class logits as they are, depth (B, 1, H, W), unit normals (B, 3, H, W)."""
    if kind == "normals":
        return F.normalize(out[:, :3].float(), dim=1, eps=1e-12)
    return out.float()


# ----------------------------------------------------------------- schedule
def lr_factor(step: int, total: int, warmup: int, schedule: str, warmup_start: float, final: float,
              power: float = 1.0) -> float:
    """Multiplier of the base lr at ``step`` (stepped per iteration).

    ``poly`` (mmseg PolyLR, DINOv2 seg): (1 - p)^power decaying to ``final``, times a linear warm-up
    ramp from ``warmup_start``. ``cosine`` (Probe3D ``cosine_decay_linear_warmup``, DINOv3
    WarmupOneCycleLR): linear from ``warmup_start`` to 1 over ``warmup`` steps, then cosine to ``final``.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "poly":
        p = min(step, total) / max(1, total)
        f = (1.0 - final) * (1.0 - p) ** power + final
        if step < warmup:
            f *= warmup_start + (1.0 - warmup_start) * step / warmup
        return f
    if schedule == "cosine":
        if step < warmup:
            return warmup_start + (1.0 - warmup_start) * step / warmup
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise DataError(f"schedule={schedule!r}; expected 'poly', 'cosine' or 'constant'")
