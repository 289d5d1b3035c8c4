"""Zero-shot classification (CLIP_benchmark protocol).

Each class embedding: every prompt template filled with the class name,
encoded, L2-normalised, averaged, re-normalised (templates: OpenAI's 80 from
``open_clip.zero_shot_metadata`` by default). Image embeddings are
L2-normalised; the predicted class maximises cosine similarity. For encoders
with several global tokens (TIPS: cls1, cls2) every token is reported; the
headline uses ``token``.
"""

from __future__ import annotations

from dataclasses import dataclass


from tips_eval.errors import DataError
from tips_eval.metrics import zeroshot_accuracy
from tips_eval.task_api import TaskConfig, TaskResult, register_task

from ._common import (class_text_embeddings, global_spec, labels_of, prompt_templates, require_nonempty,
                      token_names, vectors)


@dataclass
class ZeroShotConfig(TaskConfig):
    templates: str = "openai"  # openai (80) | simple (7) | tcl (9) | photo (1)


@register_task("zeroshot_classification", ZeroShotConfig, roles=("test",), needs_text=True,
               description="zero-shot classification with class-name prompts")
def run(encoder, data, cfg: ZeroShotConfig, ctx) -> TaskResult:
    test = data["test"]
    require_nonempty(test, "test")
    names = getattr(test, "label_names", None) or getattr(test, "class_names", None)  # image-level classes
    if not names:
        raise DataError(f"{test.name} has no class names; zero-shot classification needs them")
    classes = class_text_embeddings(encoder, names, cfg.templates, ctx)
    spec = global_spec(encoder, cfg)
    fs = ctx.features(encoder, test, spec)
    y = labels_of(test)
    metrics, headline = {}, None
    for name in token_names(encoder, cfg.token):
        x, good = vectors(fs, encoder, name)
        res = zeroshot_accuracy(x[good], classes, y[good], topk=(1, 5))
        prefix = "" if headline is None else f"{name}/"
        headline = headline or name
        metrics.update({f"{prefix}{k}": v for k, v in res.items()})
    return TaskResult(
        metrics, "top1",
        protocol={"token": headline, "tokens_reported": token_names(encoder, cfg.token),
                  "templates": f"{cfg.templates} ({len(prompt_templates(cfg.templates))})",
                  "class_embedding": "mean of L2-normalised template embeddings, re-normalised",
                  "similarity": "cosine", "preprocess": spec.preprocess.to_dict()},
        info={"n_test": int(fs.good_mask.sum()), "num_classes": len(names)})
