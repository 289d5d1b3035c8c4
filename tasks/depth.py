"""Monocular depth probe: DINOv2/DINOv3 NYU linear depth bins, or a Probe3D-style DPT probe.

Default head ``linear_bins`` (DINOv2 "lin. 1"): last block's patch tokens
with the CLS concatenated, x4 bilinear upsample, 1x1 conv to 256 bins over
linspace(min_depth, max_depth), the expected depth; SigLoss; DINOv3 NYU
schedule (38.4k iterations x 16, AdamW 3e-4). ``head="dpt"``: Probe3D's
10 x SigLoss + 0.5 x gradient loss, 10 epochs x 8, AdamW 5e-4, cosine.

Evaluation at the label resolution over pixels with min_depth <= gt <=
max_depth, predictions clamped to [min_depth, max_depth]; NYUv2 uses the
Eigen crop (rows 45:471, cols 41:601 of 480x640); ``align="scale_shift"``
fits a per-image scale and shift first (Probe3D's scale-invariant test).
Metrics per image, averaged: rmse (headline), abs_rel, log10, delta1/2/3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tips_eval.task_api import TaskResult, register_task

from ._dense import DenseConfig, run_dense, validate_config
from ._dense_data import check_dataset, read_target

#: max_depth per dataset when the config leaves it None: NYU 10 m (DINOv2/DINOv3, Probe3D), NAVI 1 m (Probe3D)
DEPTH_RANGES = {"nyuv2": 10.0, "navi": 1.0}


@dataclass
class DepthConfig(DenseConfig):
    head: str = "linear_bins"  # linear_bins | dpt
    use_cls: bool | None = None  # linear_bins: True (DINOv2 lin.); dpt always reads out the CLS
    n_bins: int = 256
    min_depth: float = 0.001
    max_depth: float | None = None  # None: DEPTH_RANGES by dataset, else the dataset's max_depth, else train max
    upsample: int = 4  # linear_bins: features upsampled x4 before the conv
    sig_weight: float | None = None  # linear_bins 1.0 (DINOv3), dpt 10.0 (Probe3D)
    grad_weight: float | None = None  # linear_bins 0.0 (DINOv3), dpt 0.5 (Probe3D)
    eigen_crop: bool | None = None  # None: on for NYUv2
    align: str | None = None  # None | "scale_shift" | "scale"


def resolve_max_depth(cfg: DepthConfig, train) -> tuple[float, str]:
    if cfg.max_depth is not None:
        return float(cfg.max_depth), "config"
    if train.name in DEPTH_RANGES:
        return DEPTH_RANGES[train.name], f"{train.name} reference range"
    attr = getattr(train, "max_depth", None)
    if isinstance(attr, (int, float)) and attr > 0:
        return float(attr), "dataset max_depth"
    top = max(float(v[m].max()) if m.any() else 0.0 for v, m in (read_target(train, i, "depth")
                                                                 for i in range(len(train))))
    return float(max(1.0, math.ceil(top))), "max valid train depth, rounded up"


@register_task("depth", DepthConfig, roles=("train", "test"), description="monocular depth probe (RMSE)")
def run(encoder, data, cfg: DepthConfig, ctx) -> TaskResult:
    from ._dense import REFERENCE, _pick

    validate_config(cfg, "depth")
    train, test = data["train"], data["test"]
    check_dataset(train, "depth", "train")
    max_depth, source = resolve_max_depth(cfg, train)
    ref = REFERENCE.get(("depth", cfg.head), {})
    sig, grad = float(_pick(cfg, ref, "sig_weight") or 0.0), float(_pick(cfg, ref, "grad_weight") or 0.0)
    eigen = cfg.eigen_crop if cfg.eigen_crop is not None else test.name == "nyuv2"
    mask_fn = None
    if eigen:
        from tips_eval.data.nyu import eigen_crop_mask

        centre = bool(getattr(test, "center_crop", False))
        mask_fn = lambda h, w: eigen_crop_mask(h, w, center_crop=centre)  # noqa: E731
    head_kw = {"n_bins": cfg.n_bins, "min_depth": cfg.min_depth, "max_depth": max_depth, "upsample": cfg.upsample}
    return run_dense(
        encoder, data, cfg, ctx, "depth", num_outputs=1, loss_kw={"sig_weight": sig, "grad_weight": grad},
        head_kw=head_kw, target_kw={"max_depth": max_depth},
        eval_kw={"headline": "rmse", "min_depth": cfg.min_depth, "max_depth": max_depth, "align": cfg.align,
                 "eval_mask": mask_fn},
        protocol_extra={"n_bins": cfg.n_bins, "bins": "linspace(min_depth, max_depth), expectation",
                        "min_depth": cfg.min_depth, "max_depth": max_depth, "max_depth_source": source,
                        "loss": f"{sig:g} x SigLoss(0.85)" + (f" + {grad:g} x gradient loss" if grad else ""),
                        "sigloss_warmup": "none", "eigen_crop": bool(eigen), "align": cfg.align,
                        "flip_tta": False, "metric_reduction": "per image over valid pixels, then mean"})
