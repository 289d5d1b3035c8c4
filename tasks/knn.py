"""ImageNet-style kNN classification on frozen global features (DINO protocol).

Cosine similarity on L2-normalised global tokens, the top max(k) neighbours of
each test image from one chunked matmul + top-k, votes weighted exp(sim / T)
with T = 0.07 and summed per class; every k in (10, 20, 100, 200) from the same
top-k; the headline is k = 20 (DINO: "20 usually works best"). DINOv2 weights
by softmax(sims / T), which ranks classes identically per image.
"""

from __future__ import annotations

from dataclasses import dataclass

from tips_eval.metrics import knn_evaluate
from tips_eval.task_api import TaskConfig, TaskResult, register_task, resolve_token

from ._common import global_spec, labels_of, require_nonempty, vectors


@dataclass
class KnnConfig(TaskConfig):
    ks: tuple[int, ...] = (10, 20, 100, 200)
    temperature: float = 0.07
    headline_k: int = 20


@register_task("knn", KnnConfig, roles=("train", "test"), description="kNN classification (DINO weighting)")
def run(encoder, data, cfg: KnnConfig, ctx) -> TaskResult:
    train, test = data["train"], data["test"]
    for role, ds in (("train", train), ("test", test)):
        require_nonempty(ds, role)
    if hasattr(train, "classes") and hasattr(test, "classes"):
        from tips_eval.data.imagenet import check_same_classes

        check_same_classes(train, test)
    spec = global_spec(encoder, cfg)
    fs_train, fs_test = ctx.features(encoder, train, spec), ctx.features(encoder, test, spec)
    (xtr, gtr), (xte, gte) = vectors(fs_train, encoder, cfg.token), vectors(fs_test, encoder, cfg.token)
    ytr, yte = labels_of(train)[gtr], labels_of(test)[gte]
    res = knn_evaluate(xtr[gtr], ytr, xte[gte], yte, ks=cfg.ks, temperature=cfg.temperature,
                       device=ctx.torch_device())
    metrics = {"top1": res[cfg.headline_k]["top1"], "top5": res[cfg.headline_k]["top5"]}
    for k, r in res.items():
        metrics[f"top1@k{k}"], metrics[f"top5@k{k}"] = r["top1"], r["top5"]
    return TaskResult(
        metrics, "top1",
        protocol={"token": resolve_token(encoder, cfg.token), "similarity": "cosine (L2-normalised)",
                  "weighting": "exp(sim/T) summed per class", "headline": f"k={cfg.headline_k}",
                  "tie_break": "lowest class id", "image_size": list(spec.preprocess.image_size),
                  "preprocess": spec.preprocess.to_dict()},
        info={"n_train": int(gtr.sum()), "n_test": int(gte.sum()),
              "bad_images": int((~gtr).sum() + (~gte).sum()), "train_features": fs_train.key,
              "test_features": fs_test.key})
