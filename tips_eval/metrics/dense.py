"""Monocular depth and surface-normal metrics over valid pixels.

Depth (mmseg ``DepthMetric._calc_all_metrics``, Monocular-Depth-Estimation-
Toolbox, Probe3D ``evaluate_depth``): per image, over its valid pixels,

- rmse = sqrt(mean((p - t)^2)); abs_rel = mean(|p - t| / t);
  log10 = mean(|log10 p - log10 t|);
- deltaJ = % of pixels with max(p / t, t / p) < 1.25^J.

``reduction="images"`` (default: mmseg, DINOv2's toolbox and Probe3D all
compute each metric per image, then average over images) or ``"pixels"``
(every valid pixel of the batch pooled; rmse = sqrt of the pooled mean).
Images without a valid pixel are left out of the image average (Probe3D
would count them as 0 error); no valid pixel at all raises DataError.
``valid`` defaults to ``target > 0`` and is always combined with it (pass an
Eigen-crop mask as ``valid``). Predictions are clamped to >= 1e-9 in the
log10 and delta terms (Probe3D clamps the delta ratio the same way), so a
non-positive prediction is a miss, not a NaN.

``align="scale_shift"``: per image least-squares scale s and shift b
minimising sum over valid pixels of (s p + b - t)^2 (Probe3D
``match_scale_and_shift``; a degenerate system keeps s=1, b=0 as there).
``align="scale"``: per image median scaling p * median(t) / median(p).

Normals (Probe3D ``evaluate_surface_norm``; mean/median as in iDISC/Fouhey):
both fields are L2-normalised, the angle is acos(clamp(dot, -1, 1)) in
degrees; angular_rmse, mean, median and % of pixels with angle < 11.25, 22.5,
30 degrees, per image then averaged (``reduction="images"``, Probe3D) or
pooled (``"pixels"``). ``valid`` defaults to pixels whose target vector is
non-zero and is combined with it. Percentages are in [0, 100].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tips_eval.errors import DataError

from ._common import to_numpy

PRED_FLOOR = 1e-9
NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)


def _float_map(x: Any, name: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(to_numpy(x, name)))
    if not (t.dtype.is_floating_point or t.dtype in (torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16)):
        raise DataError(f"{name} must be numeric, got dtype {t.dtype}")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{name} has {int((~torch.isfinite(t)).sum())} NaN/Inf values", hint="mark missing pixels with 0 or a valid mask")
    return t


def _mask(valid: Any, shape: torch.Size, name: str = "valid") -> torch.Tensor:
    m = valid.detach().cpu() if isinstance(valid, torch.Tensor) else torch.from_numpy(np.array(to_numpy(valid, name)))
    if m.ndim == len(shape) + 1 and m.ndim >= 3 and m.shape[1] == 1:  # (B, 1, H, W)
        m = m[:, 0]
    if tuple(m.shape) != tuple(shape):
        raise DataError(f"{name} has shape {tuple(m.shape)} but the maps have shape {tuple(shape)}")
    if m.dtype != torch.bool:
        if m.dtype.is_floating_point and bool(((m != 0) & (m != 1)).any()):
            raise DataError(f"{name} must be a boolean mask, got non-0/1 values")
        m = m != 0
    return m


def _as_batch(x: torch.Tensor, name: str, channel_last: int = 0) -> torch.Tensor:
    """(B, P) (or (B, P, 3) with a trailing channel) from (H, W) / (B, H, W) / (B, 1, H, W)."""
    spatial = x.ndim - channel_last
    if spatial == 2:
        x = x.unsqueeze(0)
    elif spatial == 4 and x.shape[1] == 1 and not channel_last:
        x = x[:, 0]
    elif spatial != 3:
        raise DataError(f"{name} must be (H, W) or (B, H, W) maps, got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1, *x.shape[x.ndim - channel_last :])


def _reduce(per_image: dict[str, torch.Tensor], has: torch.Tensor) -> dict[str, float]:
    return {k: float(v[has].mean()) for k, v in per_image.items()}


def _align(p: torch.Tensor, t: torch.Tensor, m: torch.Tensor, align: str) -> torch.Tensor:
    mf = m.double()
    if align == "scale_shift":
        a00, a01, a11 = (mf * p * p).sum(1), (mf * p).sum(1), mf.sum(1)
        b0, b1 = (mf * p * t).sum(1), (mf * t).sum(1)
        det = a00 * a11 - a01 * a01
        ok = det != 0
        safe = torch.where(ok, det, torch.ones_like(det))
        scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.ones_like(det))
        shift = torch.where(ok, (-a01 * b0 + a00 * b1) / safe, torch.zeros_like(det))
        return p * scale[:, None] + shift[:, None]
    if align == "scale":
        out = p.clone()
        for i in range(p.shape[0]):
            if m[i].any():
                med_p = float(np.median(p[i][m[i]].numpy()))
                if med_p != 0:
                    out[i] = p[i] * (float(np.median(t[i][m[i]].numpy())) / med_p)
        return out
    raise DataError(f"align must be None, 'scale_shift' or 'scale', got {align!r}")


def depth_metrics(
    pred: Any, target: Any, valid: Any = None, align: str | None = None, reduction: str = "images"
) -> dict[str, float]:
    """``{"rmse", "abs_rel", "log10", "delta1", "delta2", "delta3"}``; see the module docstring."""
    if reduction not in ("images", "pixels"):
        raise DataError(f"reduction must be 'images' or 'pixels', got {reduction!r}")
    p0, t0 = _float_map(pred, "pred"), _float_map(target, "target")
    if p0.shape != t0.shape:
        raise DataError(f"pred has shape {tuple(p0.shape)} but target has shape {tuple(t0.shape)}; they must match")
    m0 = t0 > 0 if valid is None else _mask(valid, t0.shape) & (t0 > 0)
    p, t, m = _as_batch(p0, "pred"), _as_batch(t0, "target"), _as_batch(m0, "valid")
    n = m.sum(1)
    if int(n.sum()) == 0:
        raise DataError("depth_metrics: no valid pixel (target > 0 and valid) in the whole input")
    if align is not None:
        p = _align(p, t, m, align)
    tt = torch.where(m, t, torch.ones_like(t))  # keeps divisions finite off the mask
    pc = p.clamp(min=PRED_FLOOR)
    ratio = torch.maximum(tt / pc, pc / tt)
    terms = {
        "rmse": (p - t) ** 2,
        "abs_rel": (p - t).abs() / tt,
        "log10": (torch.log10(pc) - torch.log10(tt)).abs(),
        "delta1": 100.0 * (ratio < 1.25).double(),
        "delta2": 100.0 * (ratio < 1.25**2).double(),
        "delta3": 100.0 * (ratio < 1.25**3).double(),
    }
    sums = {k: (v * m).sum(1) for k, v in terms.items()}
    if reduction == "pixels":
        out = {k: float(v.sum() / n.sum()) for k, v in sums.items()}
        out["rmse"] = float(np.sqrt(out["rmse"]))
        return out
    has = n > 0
    per_image = {k: v / n.clamp(min=1) for k, v in sums.items()}
    per_image["rmse"] = per_image["rmse"].sqrt()
    return _reduce(per_image, has)


def normal_metrics(pred: Any, target: Any, valid: Any = None, reduction: str = "images", dim: int | None = None) -> dict[str, float]:
    """``{"angular_rmse", "mean", "median", "within_11.25", "within_22.5", "within_30"}`` in degrees / percent.

    Vectors lie along ``dim``; by default the axis of size 3 at position -3
    ((3, H, W) / (B, 3, H, W)), else the last axis ((H, W, 3) / (B, H, W, 3)).
    """
    if reduction not in ("images", "pixels"):
        raise DataError(f"reduction must be 'images' or 'pixels', got {reduction!r}")
    p0, t0 = _float_map(pred, "pred"), _float_map(target, "target")
    if p0.shape != t0.shape:
        raise DataError(f"pred has shape {tuple(p0.shape)} but target has shape {tuple(t0.shape)}; they must match")
    if dim is None:
        if p0.ndim >= 3 and p0.shape[-3] == 3:
            dim = -3
        elif p0.ndim >= 3 and p0.shape[-1] == 3:
            dim = -1
        else:
            raise DataError(f"pred must be (B, 3, H, W), (3, H, W), (B, H, W, 3) or (H, W, 3), got shape {tuple(p0.shape)}")
    if p0.shape[dim] != 3:
        raise DataError(f"pred has {p0.shape[dim]} channels along dim {dim}; normals need 3")
    p0, t0 = p0.movedim(dim, -1), t0.movedim(dim, -1)
    nonzero = t0.norm(dim=-1) > 0
    m0 = nonzero if valid is None else _mask(valid, nonzero.shape) & nonzero
    p, t, m = _as_batch(p0, "pred", 1), _as_batch(t0, "target", 1), _as_batch(m0, "valid")
    n = m.sum(1)
    if int(n.sum()) == 0:
        raise DataError("normal_metrics: no valid pixel (non-zero target and valid) in the whole input")
    p = torch.nn.functional.normalize(p, dim=-1, eps=1e-12)
    t = torch.nn.functional.normalize(t, dim=-1, eps=1e-12)
    err = torch.rad2deg(torch.acos((p * t).sum(-1).clamp(-1.0, 1.0)))  # (B, P)
    if reduction == "pixels":
        e = err[m].numpy()
        out = {"angular_rmse": float(np.sqrt(np.mean(e**2))), "mean": float(e.mean()), "median": float(np.median(e))}
        out.update({f"within_{th:g}": float(100.0 * np.mean(e < th)) for th in NORMAL_THRESHOLDS})
        return out
    has = n > 0
    nn = n.clamp(min=1)
    per_image = {
        "angular_rmse": ((err**2 * m).sum(1) / nn).sqrt(),
        "mean": (err * m).sum(1) / nn,
        "median": torch.tensor([float(np.median(err[i][m[i]].numpy())) if has[i] else 0.0 for i in range(len(n))], dtype=torch.float64),
    }
    per_image.update({f"within_{th:g}": 100.0 * ((err < th) & m).sum(1) / nn for th in NORMAL_THRESHOLDS})
    return _reduce(per_image, has)
