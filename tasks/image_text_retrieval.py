"""Image-to-text and text-to-image retrieval (CLIP_benchmark conventions).

Every caption of every image is embedded; image and text embeddings are
L2-normalised; I->T: an image is a hit if ANY of its captions is in the top k;
T->I: a caption is a hit if its image is in the top k. Recall@1/5/10, both
directions in one record. Texts are cut by each model's tokenizer (TIPS: 64
tokens, which matters for DOCCI's long captions). Every global token is
reported; the headline uses ``token``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tips_eval.errors import DataError
from tips_eval.metrics import retrieval_recall
from tips_eval.task_api import TaskConfig, TaskResult, register_task
from tips_eval.text_features import encode_texts

from ._common import global_spec, require_nonempty, token_names, vectors


@dataclass
class RetrievalConfig(TaskConfig):
    ks: tuple[int, ...] = (1, 5, 10)


def captions_of(ds) -> tuple[list[str], np.ndarray]:
    caps, t2i = getattr(ds, "captions", None), getattr(ds, "text_to_image", None)
    if caps is not None and t2i is not None:
        return list(caps), np.asarray(t2i, dtype=np.int64)
    caps, t2i = [], []
    for i in range(len(ds)):
        for c in ds.target(i).get("captions", []):
            caps.append(c)
            t2i.append(i)
    if not caps:
        raise DataError(f"{ds.name} {ds.split} has no captions")
    return caps, np.asarray(t2i, dtype=np.int64)


@register_task("image_text_retrieval", RetrievalConfig, roles=("test",), needs_text=True,
               description="image-to-text and text-to-image retrieval")
def run(encoder, data, cfg: RetrievalConfig, ctx) -> TaskResult:
    test = data["test"]
    require_nonempty(test, "test")
    caps, t2i = captions_of(test)
    spec = global_spec(encoder, cfg)
    fs = ctx.features(encoder, test, spec)
    text = encode_texts(encoder, caps, cache_dir=ctx.cache_dir, progress=ctx.progress, what="captions")
    good = fs.good_mask
    if not good.all():  # drop undecodable images and their captions; renumber the rest
        keep_caps = good[t2i]
        new_index = np.cumsum(good) - 1
        text, t2i = text[keep_caps], new_index[t2i[keep_caps]]
    metrics, headline = {}, None
    for name in token_names(encoder, cfg.token):
        x, _ = vectors(fs, encoder, name)
        res = retrieval_recall(x[good], text, t2i, ks=cfg.ks)
        prefix = "" if headline is None else f"{name}/"
        headline = headline or name
        metrics.update({f"{prefix}{k}": v for k, v in res.items()})
    return TaskResult(
        metrics, "i2t_R@1",
        protocol={"token": headline, "tokens_reported": token_names(encoder, cfg.token), "ks": list(cfg.ks),
                  "similarity": "cosine", "i2t_hit": "any caption of the image in top k",
                  "t2i_hit": "the caption's image in top k", "preprocess": spec.preprocess.to_dict()},
        info={"n_images": int(good.sum()), "n_captions": len(t2i), "bad_images": int((~good).sum())})
