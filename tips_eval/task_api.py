"""The contract between the runner and the task modules (dinov3 ``eval/`` habit).

A task module under ``tasks/`` defines a small config dataclass (its protocol
parameters, all recorded) and a ``run`` function with one signature for all
tasks, and registers both:

>>> @register_task("knn", KnnConfig, roles=("train", "test"))
... def run(encoder, data, cfg, ctx) -> TaskResult: ...

``data`` maps the roles a task declares (e.g. ``train``/``test``,
``query``/``index``) to :class:`~tips_eval.data.ImageDataset` splits; features
come only from ``ctx.features(...)`` (the cached engine). A task never names a
model: it sees the frozen-feature interface only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import DataError, UnknownNameError

log = logging.getLogger("tips_eval.task")

#: task modules under tasks/ (imported on first use; each registers its task names)
TASK_MODULES = ("knn", "linear_probe", "instance_retrieval", "image_text_retrieval", "zeroshot_classification",
                "semantic_segmentation", "depth", "normals", "zeroshot_segmentation")


@dataclass
class TaskConfig:
    """Base of every task config: fields are protocol parameters, all recorded."""

    #: which global token feeds a global task ("first" = index 0, or a name like "cls2")
    token: str = "first"
    #: input resolution (square side); None = the encoder's own preprocessing
    resolution: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> "TaskConfig":
        params = dict(params or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise DataError(f"{cls.__name__}: unknown protocol parameter(s) {', '.join(unknown)}",
                            hint=f"known: {', '.join(sorted(names))}")
        out = cls(**params)
        for f in dataclasses.fields(cls):  # YAML gives lists where we keep tuples
            v = getattr(out, f.name)
            if isinstance(v, list):
                setattr(out, f.name, tuple(v))
        return out

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class TaskResult:
    """What a task returns; the runner turns it into a result record."""

    metrics: dict[str, float]
    headline: str  # key of the metric a table shows
    protocol: dict[str, Any] = field(default_factory=dict)  # derived / resolved protocol choices
    info: dict[str, Any] = field(default_factory=dict)  # sizes, timings, notes
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> file path (plots, predictions)

    def __post_init__(self):
        if self.headline not in self.metrics:
            raise ValueError(f"headline metric {self.headline!r} not in {sorted(self.metrics)}")


@dataclass
class TaskSpec:
    name: str
    config_cls: type
    run: Callable
    roles: tuple[str, ...]
    needs_text: bool = False
    description: str = ""


TASKS: dict[str, TaskSpec] = {}


def register_task(name: str, config_cls: type, *, roles: tuple[str, ...], needs_text: bool = False,
                  description: str = ""):
    """Decorator registering a task's ``run(encoder, data, cfg, ctx) -> TaskResult``."""

    def wrap(fn: Callable) -> Callable:
        if name in TASKS:
            raise ValueError(f"task {name!r} registered twice")
        TASKS[name] = TaskSpec(name, config_cls, fn, tuple(roles), needs_text, description or (fn.__doc__ or "").strip())
        return fn

    return wrap


def load_tasks() -> dict[str, TaskSpec]:
    from ._lazy import import_plugins

    import_plugins("tips_eval.tasks", TASK_MODULES)
    return TASKS


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        load_tasks()
    if name not in TASKS:
        raise UnknownNameError(f"unknown task {name!r}", hint=f"known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


@dataclass
class RunContext:
    """Everything a task may use besides the encoder and data: where to cache, how to compute."""

    cache_dir: str | os.PathLike | None = None
    out_dir: str | os.PathLike | None = None  # artifacts (plots, predictions) of this evaluation
    device: str | None = None
    devices: int = 1
    num_nodes: int = 1
    strategy: str | None = None
    batch_size: int = 64
    num_workers: int | None = None
    precision: str = "auto"
    seed: int = 0
    skip_bad_images: bool = False
    progress: bool = True
    #: set by fast/test runs to shrink training schedules (recorded)
    quick: bool = False

    def features(self, encoder, dataset, spec=None):
        """Cached features of ``dataset`` through ``encoder`` (the only way tasks get features)."""
        from .features import FeatureSpec, extract_features

        return extract_features(
            encoder, dataset, spec or FeatureSpec(), cache_dir=self.cache_dir, batch_size=self.batch_size,
            num_workers=self.num_workers, device=self.device, precision=self.precision,
            skip_bad_images=self.skip_bad_images, progress=self.progress, devices=self.devices,
            num_nodes=self.num_nodes, strategy=self.strategy,
        )

    def artifact_path(self, name: str) -> Path | None:
        if self.out_dir is None:
            return None
        p = Path(self.out_dir) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def torch_device(self):
        import torch

        if self.device:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def global_vectors(fs, token: str):
    """(N, D) float32 global vectors of a cached :class:`FeatureSet` for a token spec.

    ``first`` = global token 0 (TIPS cls1, CLIP embed, DINOv2 cls); a name (``cls2``);
    ``a+b`` concatenates (e.g. ``cls1+cls2``); ``mean_patch`` = mean of the final patch
    tokens (read chunk by chunk, never the whole memmap at once).
    """
    import numpy as np

    parts = []
    for part in token.split("+"):
        if part == "first":
            parts.append(np.asarray(fs.global_tokens[:, 0], dtype=np.float32))
        elif part == "mean_patch" and "mean_patch" not in fs.global_names:
            if fs.patch_tokens is None:
                raise DataError("token 'mean_patch' needs patch tokens in the feature cache")
            out = np.empty((fs.n, fs.patch_tokens.shape[-1]), np.float32)
            step = max(1, (1 << 26) // max(1, int(np.prod(fs.patch_tokens.shape[1:]))))
            for s in range(0, fs.n, step):
                out[s:s + step] = np.asarray(fs.patch_tokens[s:s + step], dtype=np.float32).mean(axis=(1, 2))
            parts.append(out)
        else:
            if part not in fs.global_names:
                raise DataError(f"token {part!r} not among this encoder's global tokens {tuple(fs.global_names)}",
                                hint="use 'first', a token name, 'mean_patch' or 'a+b'")
            parts.append(np.asarray(fs.global_token(part), dtype=np.float32))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def resolve_token(encoder, token: str) -> str:
    """The concrete name(s) behind a token spec, for records ('first' -> 'cls1')."""
    return "+".join(encoder.global_token_names[0] if p == "first" else p for p in token.split("+"))
