"""Small helpers shared by the task modules (feature specs, labels, bad rows)."""

from __future__ import annotations

import numpy as np

from tips_eval.errors import DataError
from tips_eval.features import FeatureSpec
from tips_eval.task_api import global_vectors, resolve_token
from tips_eval.text_features import encode_texts

#: TCL's templates (khanrc/tcl datasets/templates.py), as listed in the TIPS zero-shot notebook
TCL_TEMPLATES = ("itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
                 "a {} in a video game.", "art of the {}.", "a photo of the small {}.", "a photo of many {}.",
                 "a photo of {}s.")


def prompt_templates(name: str) -> list:
    """Callables ``class name -> prompt``: ``openai`` (open_clip's 80 ImageNet templates),
    ``simple`` (its 7), ``tcl`` (TCL's 9, zero-shot segmentation) or ``photo`` (1)."""
    from open_clip import zero_shot_metadata as z

    table = {"openai": z.OPENAI_IMAGENET_TEMPLATES, "simple": z.SIMPLE_IMAGENET_TEMPLATES,
             "tcl": tuple(t.format for t in TCL_TEMPLATES), "photo": ("a photo of a {}.".format,)}
    if name not in table:
        raise DataError(f"unknown template set {name!r}; expected one of {sorted(table)}")
    return list(table[name])


def class_text_embeddings(encoder, class_names, template_set: str, ctx) -> np.ndarray:
    """(C, D) per class: the mean of its L2-normalised template embeddings, re-normalised
    (CLIP_benchmark / the TIPS notebook); text embeddings are cached on disk."""
    temps = prompt_templates(template_set)
    prompts = [t(c) for c in class_names for t in temps]
    emb = encode_texts(encoder, prompts, cache_dir=ctx.cache_dir, progress=ctx.progress, what="class prompts")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    emb = emb.reshape(len(class_names), len(temps), -1).mean(axis=1)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def preprocess_for(encoder, resolution: int | None):
    """The encoder's own transform, at ``resolution`` (square) when the protocol fixes one,
    rounded down to a multiple of the patch size (the record shows the size used)."""
    if not resolution:
        return encoder.preprocess
    side = max(encoder.patch_size, int(resolution) // encoder.patch_size * encoder.patch_size)
    return encoder.preprocess.replace(image_size=(side, side))


def global_spec(encoder, cfg, **kw) -> FeatureSpec:
    """Global tokens only (no patch tokens stored), plus mean_patch when the token asks for it."""
    kinds = ("mean_patch",) if "mean_patch" in cfg.token.split("+") else ()
    return FeatureSpec(patch=False, kinds=kinds, preprocess=preprocess_for(encoder, cfg.resolution), **kw)


def labels_of(ds, key: str = "label") -> np.ndarray:
    """Integer labels of a dataset split (fast path via a ``labels`` array attribute)."""
    arr = getattr(ds, "labels", None)
    if arr is not None and key == "label" and len(arr) == len(ds) and not isinstance(arr[0], (list, tuple)):
        return np.asarray(arr, dtype=np.int64)
    return np.asarray([ds.target(i)[key] for i in range(len(ds))], dtype=np.int64)


def vectors(fs, encoder, token: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) global vectors for ``token`` and the mask of usable rows (bad images dropped)."""
    x = global_vectors(fs, token)
    good = np.asarray(fs.good_mask, dtype=bool)
    return x, good


def token_names(encoder, token: str) -> list[str]:
    """Every single global token worth reporting: the requested one first, then the others."""
    first = resolve_token(encoder, token)
    rest = [n for n in encoder.global_token_names if n != first]
    return [first] + (rest if "+" not in first else [])


def require_nonempty(ds, role: str) -> None:
    if len(ds) == 0:
        raise DataError(f"{ds.name} {ds.split} ({role}) is empty")
