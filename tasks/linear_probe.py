"""Linear classification probe on cached global features (DINOv2 ``eval/linear.py`` style).

A grid of linear heads (13 learning rates x weight decays) trained in one pass
over the cached features, the best picked on a held-out part of train, then
(re)fit on all of train and evaluated top-1 on the test split. Which token
feeds it is a parameter: ``first`` (TIPS cls1), ``cls2``, ``cls1+cls2``, and
``+mean_patch`` appends the mean of the final patch tokens (DINOv2 "avgpool").
DINOv2 also tries the concatenated CLS of the last 4 blocks; set
``n_last_blocks=4`` for that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tips_eval.decoders.linear_sweep import DEFAULT_WDS, DINOV2_LRS, LinearProbeSweep
from tips_eval.errors import DataError
from tips_eval.task_api import TaskConfig, TaskResult, global_vectors, register_task, resolve_token

from ._common import global_spec, labels_of, require_nonempty, vectors


@dataclass
class LinearProbeConfig(TaskConfig):
    lrs: tuple[float, ...] = DINOV2_LRS
    wds: tuple[float, ...] = DEFAULT_WDS
    epochs: int = 10
    batch_size: int = 256
    heldout_fraction: float = 0.1
    refit: bool = True
    normalize: bool = False
    n_last_blocks: int = 1  # 4: concatenate the (final-normed) CLS of the last 4 blocks, DINOv2 style


def _features(encoder, ds, cfg, ctx):
    layers = tuple(range(encoder.num_layers - cfg.n_last_blocks, encoder.num_layers)) if cfg.n_last_blocks > 1 else ()
    fs = ctx.features(encoder, ds, global_spec(encoder, cfg, layers=layers))
    x, good = vectors(fs, encoder, cfg.token)
    if layers:  # DINOv2: concat the normed CLS of the last n blocks (+ the mean patch when asked)
        parts = [np.asarray(c, dtype=np.float32) for c, _ in fs.layers]
        if "mean_patch" in cfg.token.split("+"):
            parts.append(global_vectors(fs, "mean_patch"))
        x = np.concatenate(parts, axis=1)
    return x, good, fs


@register_task("linear_probe", LinearProbeConfig, roles=("train", "test"),
               description="linear classification probe (one-pass lr x wd sweep)")
def run(encoder, data, cfg: LinearProbeConfig, ctx) -> TaskResult:
    train, test = data["train"], data["test"]
    require_nonempty(train, "train")
    require_nonempty(test, "test")
    if cfg.n_last_blocks < 1 or cfg.n_last_blocks > encoder.num_layers:
        raise DataError(f"n_last_blocks={cfg.n_last_blocks} must be in [1, {encoder.num_layers}]")
    xtr, gtr, fs_tr = _features(encoder, train, cfg, ctx)
    xte, gte, fs_te = _features(encoder, test, cfg, ctx)
    ytr, yte = labels_of(train)[gtr], labels_of(test)[gte]
    num_classes = int(max(ytr.max(), yte.max())) + 1
    epochs = 2 if ctx.quick else cfg.epochs
    sweep = LinearProbeSweep(xtr.shape[1], num_classes, lrs=cfg.lrs, wds=cfg.wds, epochs=epochs,
                             batch_size=cfg.batch_size, seed=ctx.seed, device=ctx.torch_device(), refit=cfg.refit,
                             normalize=cfg.normalize)
    res = sweep.fit(xtr[gtr], ytr, xte[gte], yte, heldout_fraction=cfg.heldout_fraction)
    metrics = {"top1": res["val_top1"], "top5": res["val_top5"], "heldout_top1": res["heldout_top1"],
               "sweep_head_top1": res["sweep_head_val_top1"]}
    protocol = {**res["protocol"], "token": resolve_token(encoder, cfg.token), "n_last_blocks": cfg.n_last_blocks,
                "best_lr": res["best_lr"], "best_wd": res["best_wd"],
                "preprocess": global_spec(encoder, cfg).preprocess.to_dict()}
    return TaskResult(metrics, "top1", protocol=protocol,
                      info={"n_train": int(gtr.sum()), "n_test": int(gte.sum()), "heads": res["heads"],
                            "sweep_wall_time_s": res["wall_time_s"]})
