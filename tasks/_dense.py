"""The shared dense engine: semantic segmentation, depth and normals probes on a frozen encoder.

Two feature sources, recorded as ``protocol.feature_source``:

- ``cached`` (default, fast): images squashed to the training resolution
  (``cfg.resolution`` or the encoder's own size, a multiple of the patch),
  features extracted once through ``ctx.features`` (the last ``n_layers``
  blocks' (CLS, patch) for linear heads, ``encoder.dpt_layers`` for DPT),
  plus the left-right flipped view when ``flip`` is on; targets resized
  (nearest) to the training resolution, head outputs upsampled (bilinear) to it.
- ``backbone`` (the papers' protocol): augmented crops (random scale, crop,
  flip, colour jitter) through the frozen encoder on every step (see
  ``_dense_train``); test features still come from the engine.

Defaults are the reference protocols (:data:`REFERENCE`, PROTOCOLS.md
sections 1-3): DINOv2 "lin." segmentation, DINOv3 NYU linear depth bins,
Probe3D's DPT probes. A config field left at None takes the head's
reference value; every resolved value is in ``TaskResult.protocol``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from tips_eval.errors import BadImageError, DataError
from tips_eval.features import FeatureSpec
from tips_eval.features.spec import resolve_precision
from tips_eval.task_api import TaskConfig, TaskResult

from ._dense_data import ObjectCropView, SlideView, check_dataset, read_target
from ._dense_eval import Evaluator, iter_outputs, save_qualitative
from ._dense_heads import DenseHead, DenseLoss, check_head
from ._dense_train import AugmentedTrainSet, CachedTrainSet, DenseProbe, TrainPlan, fit

QUICK_STEPS = 30  # ctx.quick: at most this many iterations (recorded)
_PROBE3D = dict(epochs=10.0, batch_size=8, lr=5e-4, weight_decay=0.01, betas=(0.9, 0.999), schedule="cosine",
                warmup_epochs=1.5, warmup_start=0.01, final_lr=0.01, grad_clip=None, flip=False,
                aug_scale=(1.0, 1.414), color_jitter=0.2, use_cls=True, batchnorm=True,
                source="Probe3D configs/optimizer/ten_epoch.yaml + NYU/NAVI augmentation (PROTOCOLS.md s.3)")
#: reference protocol per (task kind, head); None fields of a config resolve from here
REFERENCE = {
    ("segmentation", "linear"): dict(
        steps=40000, batch_size=16, lr=1e-3, weight_decay=1e-4, betas=(0.9, 0.999), schedule="poly",
        warmup_steps=1500, warmup_start=1e-6, final_lr=0.0, grad_clip=None, flip=True, aug_scale=(0.5, 2.0),
        color_jitter=0.2, use_cls=False, batchnorm=True,
        source="DINOv2 lin. ADE20K/VOC config: 40k iters x 16, AdamW 1e-3 wd 1e-4, poly, warm-up 1500 (s.1)"),
    ("segmentation", "dpt"): {**_PROBE3D, "flip": True, "aug_scale": (0.5, 2.0)},
    ("depth", "linear_bins"): dict(
        steps=38400, batch_size=16, lr=3e-4, weight_decay=1e-4, betas=(0.9, 0.99), schedule="cosine",
        warmup_steps=12800, warmup_start=1e-3, final_lr=1e-3, grad_clip=35.0, flip=True, aug_scale=(1.0, 1.0),
        color_jitter=0.25, use_cls=True, batchnorm=False, sig_weight=1.0, grad_weight=0.0,
        source="DINOv3 config-nyu.yaml: 38.4k iters x 16, AdamW 3e-4 betas (0.9, 0.99) wd 1e-4, warm-up "
               "12.8k, clip 35, SigLoss only; head DINOv2 lin. 1 (CLS, no BN) (s.2)"),
    ("depth", "dpt"): {**_PROBE3D, "sig_weight": 10.0, "grad_weight": 0.5},
    ("normals", "dpt"): dict(_PROBE3D),
    ("normals", "linear"): {**_PROBE3D, "use_cls": False},
}
_PLAN_FIELDS = ("batch_size", "lr", "weight_decay", "schedule", "grad_clip")


@dataclass
class DenseConfig(TaskConfig):
    """Protocol parameters shared by the dense tasks (None = the head's :data:`REFERENCE` value)."""

    head: str = "linear"
    feature_source: str = "cached"  # cached | backbone
    n_layers: int = 1  # linear heads: blocks read (1 = "lin. 1"; 4 = last 4 for seg, dpt_layers for depth)
    layers: tuple[int, ...] | None = None  # explicit 0-based blocks (overrides n_layers)
    use_cls: bool | None = None  # concat the broadcast CLS to patch tokens (linear heads)
    batchnorm: bool | None = None
    dropout: float = 0.0
    flip: bool | None = None  # training-time left-right flip (cached: the flipped view's features)
    steps: int | None = None  # total iterations (overrides epochs)
    epochs: float | None = None  # passes over the training images (Probe3D: 10)
    batch_size: int | None = None  # global: split over devices x nodes (DINOv2 16 = 2 x 8 GPUs)
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None  # poly | cosine | constant, stepped per iteration
    warmup_steps: int | None = None
    grad_clip: float | None = None
    inference: str | None = None  # whole | slide (default: whole for cached, slide for backbone)
    slide_stride: float = 2 / 3  # of the window (DINOv2: 341 / 512)
    aug_scale: tuple[float, float] | None = None  # backbone: short side = resolution x U(lo, hi)
    color_jitter: float | None = None  # backbone: ColorJitter(c, c, c, min(c, .5)) with p 0.8
    crop: str | None = None  # none | object (Probe3D NAVI bbox crop; default for navi)
    dpt_channels: int = 256
    dpt_post_process_channels: tuple[int, ...] = (128, 256, 512, 1024)
    n_visualize: int = 4


def _pick(cfg, ref: dict, name: str):
    v = getattr(cfg, name, None)
    return ref.get(name) if v is None else v


def plan_schedule(cfg: DenseConfig, ref: dict, n_train: int, quick: bool) -> tuple[TrainPlan, dict]:
    """Iterations, batch, optimiser and schedule from the config, the reference and the train size."""
    batch = int(_pick(cfg, ref, "batch_size"))
    per_epoch = max(1, math.ceil(n_train / batch))
    if cfg.steps is not None:
        steps, basis = int(cfg.steps), "steps (config)"
    elif cfg.epochs is not None or "epochs" in ref:
        epochs = float(_pick(cfg, ref, "epochs"))
        steps, basis = max(1, math.ceil(epochs * per_epoch)), f"{epochs:g} epochs x {per_epoch} iters"
    else:
        steps, basis = int(ref["steps"]), "steps (reference)"
    if cfg.warmup_steps is not None:
        warmup = int(cfg.warmup_steps)
    elif "warmup_epochs" in ref:
        warmup = math.ceil(ref["warmup_epochs"] * per_epoch)
    else:
        warmup = int(ref["warmup_steps"])
    reference_steps = steps
    if quick and steps > QUICK_STEPS:
        warmup = max(0, round(warmup * QUICK_STEPS / steps))
        steps = QUICK_STEPS
    warmup = min(warmup, max(0, steps - 1))
    if steps < 1 or batch < 1:
        raise DataError(f"steps={steps}, batch_size={batch}: both must be >= 1")
    p = {k: _pick(cfg, ref, k) for k in _PLAN_FIELDS}
    plan = TrainPlan(steps=steps, batch_size=batch, lr=float(p["lr"]), weight_decay=float(p["weight_decay"]),
                     betas=tuple(ref["betas"]), schedule=str(p["schedule"]), warmup_steps=warmup,
                     warmup_start=float(ref["warmup_start"]), final_lr=float(ref["final_lr"]),
                     grad_clip=None if p["grad_clip"] is None else float(p["grad_clip"]))
    return plan, {"steps_basis": basis, "reference_steps": reference_steps, "quick": bool(quick)}


def resolve_layers(encoder, cfg: DenseConfig, kind: str) -> list[int]:
    """The 0-based blocks the head reads, shallowest first."""
    if cfg.layers:
        return encoder.normalize_layers(cfg.layers)
    if cfg.head == "dpt":
        return list(encoder.dpt_layers)
    n = int(cfg.n_layers)
    if not 1 <= n <= encoder.num_layers:
        raise DataError(f"n_layers={n}; the encoder has {encoder.num_layers} blocks")
    if kind == "depth" and n == 4:  # DINOv2 "lin. 4": four evenly spaced blocks (ViT-B 2, 5, 8, 11)
        return list(encoder.dpt_layers)
    return list(range(encoder.num_layers - n, encoder.num_layers))


def validate_config(cfg: DenseConfig, kind: str) -> None:
    """Refuse unknown choices before any data is read."""
    check_head(kind, cfg.head)
    for name, allowed in (("feature_source", ("cached", "backbone")), ("inference", (None, "whole", "slide")),
                          ("crop", (None, "none", "object")), ("schedule", (None, "poly", "cosine", "constant"))):
        value = getattr(cfg, name)
        if value not in allowed:
            raise DataError(f"{name}={value!r}; expected one of {', '.join(str(a) for a in allowed if a)}")
    if not 0 < cfg.slide_stride <= 1:
        raise DataError(f"slide_stride={cfg.slide_stride}; expected a fraction of the window in (0, 1]")


def run_dense(encoder, data, cfg: DenseConfig, ctx, kind: str, *, num_outputs: int, loss_kw: dict,
              head_kw: dict, target_kw: dict, eval_kw: dict, protocol_extra: dict) -> TaskResult:
    """Train the configured head on ``data['train']`` and score it on ``data['test']``."""
    t0 = time.perf_counter()
    validate_config(cfg, kind)
    ref = REFERENCE[(kind, cfg.head)]
    train, test = data["train"], data["test"]
    crop = cfg.crop or ("object" if getattr(test, "name", "") == "navi" else "none")
    if crop == "object":
        check_dataset(train, "depth", "train")
        train, test = ObjectCropView(train), ObjectCropView(test)
    for role, ds in (("train", train), ("test", test)):
        check_dataset(ds, kind, role)

    side = int(cfg.resolution or encoder.image_size[0]) // encoder.patch_size * encoder.patch_size
    if side < encoder.patch_size:
        raise DataError(f"resolution={cfg.resolution} is smaller than the patch size {encoder.patch_size}")
    size = (side, side)
    pre = encoder.preprocess.replace(image_size=size, resize="squash")
    layers = resolve_layers(encoder, cfg, kind)
    uniq = sorted(set(layers))
    slots = [uniq.index(j) for j in layers]
    spec = FeatureSpec(layers=tuple(uniq), patch=False, preprocess=pre)
    flip = bool(_pick(cfg, ref, "flip"))
    inference = cfg.inference or ("whole" if cfg.feature_source == "cached" else "slide")
    dev = ctx.torch_device()
    precision = resolve_precision(ctx.precision, dev.type)

    torch.manual_seed(ctx.seed)  # the head's initialisation is part of the seeded protocol
    head = DenseHead(kind, cfg.head, encoder.embed_dim, num_outputs=num_outputs, n_layers=len(layers),
                     use_cls=bool(_pick(cfg, ref, "use_cls")), batchnorm=bool(_pick(cfg, ref, "batchnorm")),
                     dropout=cfg.dropout, dpt_channels=cfg.dpt_channels,
                     dpt_post_process_channels=cfg.dpt_post_process_channels, **head_kw)
    loss = DenseLoss(kind, **loss_kw)
    info: dict = {}
    if cfg.feature_source == "cached":
        fs_views = [ctx.features(encoder, train, spec)]
        if flip:
            fs_views.append(ctx.features(encoder, train, dataclasses.replace(spec, flip=True)))
        good = np.logical_and.reduce([np.asarray(f.good_mask, bool) for f in fs_views])
        rows = np.flatnonzero(good)
        if rows.size == 0:
            raise DataError(f"{train.name}/{train.split}: no readable training image")
        train_set = CachedTrainSet(train, kind, size, fs_views, slots, rows, target_kw)
        n_train, info["train_features"] = int(rows.size), [f.key for f in fs_views]
        info["bad_train_images"] = int((~good).sum())
        module_kw = {}
    else:
        jitter = _pick(cfg, ref, "color_jitter")
        train_set = AugmentedTrainSet(train, kind, side, pre, _pick(cfg, ref, "aug_scale"), flip, jitter,
                                      target_kw, ctx.skip_bad_images)
        n_train = len(train)
        module_kw = {"encoder": encoder, "layer_ids": uniq, "slot_ids": slots}
    plan, plan_info = plan_schedule(cfg, ref, n_train, ctx.quick)
    t_feat = time.perf_counter()
    module = DenseProbe(head, loss, plan, size, **module_kw)
    summary = fit(module, train_set, ctx, plan, precision)
    t_train = time.perf_counter()
    if not summary["saw_valid_pixels"]:
        what = {"segmentation": "labelled (non-ignored)", "depth": "valid depth", "normals": "valid normal"}[kind]
        raise DataError(f"{train.name}/{train.split}: training saw no {what} pixel in {summary['steps_run']} steps"
                        + (f" (depth must lie in (0, {eval_kw['max_depth']:g}] m)" if kind == "depth" else ""),
                        hint="is the depth in metres? the readers warn when it looks like millimetres"
                        if kind == "depth" else None)

    head = module.head.to(dev).eval()
    metrics, eval_info, samples = _evaluate(head, encoder, test, spec, slots, size, inference, cfg, ctx, kind,
                                            eval_kw)
    t_eval = time.perf_counter()
    artifacts = {}
    if summary["is_global_zero"]:
        artifacts = save_qualitative(ctx, kind, samples, eval_kw.get("num_classes"),
                                     f"{encoder.name}: {kind} ({cfg.head}, {cfg.feature_source})")
    protocol = {
        "feature_source": cfg.feature_source, "head": cfg.head, "image_size": list(size), "layers": layers,
        "n_layers": len(layers), "use_cls": head_use_cls(head), "batchnorm": bool(_pick(cfg, ref, "batchnorm")),
        "dropout": cfg.dropout, "steps": plan.steps, "batch_size": plan.batch_size, "lr": plan.lr,
        "weight_decay": plan.weight_decay, "betas": list(plan.betas), "optimizer": "AdamW",
        "schedule": plan.schedule, "warmup_steps": plan.warmup_steps, "warmup_start_factor": plan.warmup_start,
        "final_lr_factor": plan.final_lr, "grad_clip": plan.grad_clip, **plan_info, "flip": flip,
        "inference": inference, "crop": crop, "precision": precision, "reference": ref["source"],
        "preprocess": pre.to_dict(), "features": "blocks after the final norm (encoder interface)",
        "target_resize": "training targets resized nearest-exact to image_size; head output upsampled "
                         "bilinearly (align_corners=False) to it",
        "evaluation": "original label resolution; prediction upsampled bilinearly (align_corners=False)",
        **({"slide_window": side, "slide_stride": round(side * cfg.slide_stride)} if inference == "slide" else {}),
        **({"aug_scale": list(_pick(cfg, ref, "aug_scale")), "color_jitter": _pick(cfg, ref, "color_jitter"),
            "augmentation": "short side = image_size x U(aug_scale), random square crop (pad: ignore), "
                            "flip p=0.5 if flip, ColorJitter p=0.8"} if cfg.feature_source == "backbone" else {}),
        **({"dpt": head.net.config()} if cfg.head == "dpt" else {}),
        **protocol_extra,
    }
    info.update(eval_info)
    info.update({"n_train": n_train, "steps_run": summary["steps_run"], "world_size": summary["world_size"],
                 "batch_per_device": summary["batch_per_device"],
                 "loss_first": summary["loss_first"], "loss_last": summary["loss_last"],
                 "seconds": {"features": round(t_feat - t0, 3), "train": round(t_train - t_feat, 3),
                             "eval": round(t_eval - t_train, 3)}})
    return TaskResult(metrics, eval_kw["headline"], protocol=protocol, info=info, artifacts=artifacts)


def head_use_cls(head: DenseHead) -> bool:
    return bool(getattr(head.net, "use_cls", True))  # DPT always reads out the CLS token


def _evaluate(head, encoder, test, spec, slots, size, inference, cfg, ctx, kind, eval_kw):
    dev = ctx.torch_device()
    if inference == "whole":
        fs = ctx.features(encoder, test, spec)
        good, slide, keys = np.asarray(fs.good_mask, bool), None, [fs.key]
    else:
        sizes, unreadable = [], set()
        for i in range(len(test)):
            try:
                sizes.append(read_target(test, i, kind)[1].shape)
            except BadImageError:  # the label check reads the image header
                if not ctx.skip_bad_images:
                    raise
                sizes.append(size)
                unreadable.add(i)
        view = SlideView(test, size[0], max(1, round(size[0] * cfg.slide_stride)), sizes)
        fs = ctx.features(encoder, view, spec)
        win_good = np.asarray(fs.good_mask, bool)
        win_good &= np.array([i not in unreadable for i, _, _ in view.windows], bool)
        good = np.zeros(len(test), bool)
        for k, (i, _, _) in enumerate(view.windows):
            good[i] |= win_good[k]
        slide, keys = (view, fs), [fs.key]
    evaluator = Evaluator(test, kind, num_classes=eval_kw.get("num_classes"), min_depth=eval_kw.get("min_depth", 0),
                          max_depth=eval_kw.get("max_depth", math.inf), align=eval_kw.get("align"),
                          eval_mask=eval_kw.get("eval_mask"))
    samples = []
    batch = max(1, min(ctx.batch_size, 64))
    for i, out in iter_outputs(head, fs, slots, size, dev, batch, good, slide):
        target, pred = evaluator.add(i, out)
        if len(samples) < cfg.n_visualize:
            samples.append((test.load_image(i), target, pred))
    metrics, info = evaluator.result()
    info.update({"n_test": evaluator.n_images, "bad_test_images": int((~good).sum()), "test_features": keys})
    return metrics, info, samples
