"""The runner: models x suite entries -> one result record each.

Data flows one way: reader -> encoder -> feature cache -> task -> record.
Finished records are skipped (``force=True`` redoes them); a missing dataset
is reported and skipped without stopping the suite; image-only models get a
"skipped" record with the reason on text tasks (the paper's "-").
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .encoder import Encoder
from .errors import DatasetLayoutError, TipsEvalError
from .records import ResultStore, environment, now_iso, protocol_digest
from .suites import SuiteEntry, get_suite
from .task_api import RunContext, get_task

log = logging.getLogger("tips_eval.runner")


@dataclass
class ModelRef:
    """A model to evaluate: a zoo name, a TIPS checkpoint path, or a built encoder.

    ``name`` labels the records; ``source`` is what :func:`load_encoder` gets.
    Random-weight zoo models are labelled ``<name>:random`` so they can never be
    mistaken for (or compared with the paper numbers of) the pretrained model.
    """

    name: str
    kwargs: dict = field(default_factory=dict)
    encoder: Encoder | None = None
    source: str | None = None

    def __post_init__(self):
        self.source = self.source or self.name

    @classmethod
    def parse(cls, model, **kwargs) -> "ModelRef":
        if isinstance(model, ModelRef):
            return model
        if isinstance(model, Encoder):
            return cls(model.name, {}, model)
        model = str(model)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if is_checkpoint_path(model):
            return cls(model, {**tips_companions(model), **kwargs})
        random = kwargs.get("pretrained") is False and _has_weights(model)
        return cls(f"{model}:random" if random else model, kwargs, source=model)

    def has_text(self) -> bool:
        if self.encoder is not None:
            return self.encoder.has_text
        if is_checkpoint_path(self.source):
            return bool(self.kwargs.get("text_checkpoint"))
        from .model_zoo import get_card

        return get_card(self.source).has_text

    def load(self) -> Encoder:
        if self.encoder is None:
            from .loading import load_encoder

            log.info("loading model %s", self.name)
            self.encoder = load_encoder(self.source, **self.kwargs).eval()
        return self.encoder


def _has_weights(zoo_name: str) -> bool:
    from .model_zoo import get_card

    return get_card(zoo_name).family != "pixels"


def is_checkpoint_path(name: str) -> bool:
    return name.endswith(".npz") or os.path.sep in name


def tips_companions(vision_path: str) -> dict:
    """For ``X_vision.npz`` find ``X_text.npz`` and ``tokenizer.model`` beside it."""
    p = Path(vision_path)
    out = {}
    if p.name.endswith("_vision.npz"):
        text = p.with_name(p.name[: -len("_vision.npz")] + "_text.npz")
        if text.is_file():
            out["text_checkpoint"] = str(text)
    tok = p.with_name("tokenizer.model")
    if "text_checkpoint" in out and tok.is_file():
        out["tokenizer"] = str(tok)
    return out


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def entry_digest(entry: SuiteEntry, params: dict) -> tuple[dict, str]:
    data = {"reader": entry.reader, "root": entry.root, "splits": entry.splits, "options": entry.reader_options}
    return data, protocol_digest(entry.task, params, data)


def open_entry_data(entry: SuiteEntry, data_root: str | os.PathLike | None, overrides: dict | None = None):
    """role -> ImageDataset for a suite entry (DatasetLayoutError when not on disk)."""
    from .data import open_dataset

    root = (overrides or {}).get(entry.id) or (overrides or {}).get(entry.reader) or entry.root
    if not os.path.isabs(root):
        if data_root is None:
            raise DatasetLayoutError(f"{entry.dataset}: no --data-root given for relative root {root!r}")
        root = os.path.join(data_root, root)
    out = {}
    for role, split in entry.splits.items():
        options = dict(entry.reader_options)
        if isinstance(split, dict):  # {"split": "test", <per-role reader options>}
            options.update({k: v for k, v in split.items() if k != "split"})
            split = split["split"]
        out[role] = open_dataset(entry.reader, root, split, **options)
    return out


def run_suite(models: Iterable, suite: str | Sequence[SuiteEntry] = "paper", data_root=None, *,
              results_dir: str | os.PathLike = "results/runs", tasks: Sequence[str] | None = None,
              entries: Sequence[str] | None = None, force: bool = False, data_overrides: dict | None = None,
              ctx: RunContext | None = None, params: dict | None = None,
              on_event: Callable[[str, dict], None] | None = None) -> list[dict]:
    """Evaluate every model on every (selected) suite entry; returns the records (new and reused).

    ``params`` overrides protocol parameters for all entries whose task accepts them
    (e.g. ``{"token": "cls2"}``); every value used is in the record.
    """
    ctx = ctx or RunContext()
    store = ResultStore(Path(results_dir))
    suite_entries = get_suite(suite) if isinstance(suite, str) else tuple(suite)
    selected = [e for e in suite_entries if (not tasks or e.task in tasks) and (not entries or e.id in entries)]
    if not selected:
        raise TipsEvalError(f"no suite entries left after filtering (tasks={tasks}, entries={entries})",
                            hint="`tips-eval run --help` lists the filters; the suite's ids are in the docs")
    refs = [ModelRef.parse(m) for m in models]
    for ref in refs:  # fail fast on a typo, before any work
        if ref.encoder is None and not is_checkpoint_path(ref.source):
            from .model_zoo import get_card

            get_card(ref.source)
        elif ref.encoder is None and not os.path.isfile(ref.source):
            from .errors import CheckpointNotFoundError

            raise CheckpointNotFoundError(f"checkpoint not found: {ref.source}")
    emit = on_event or (lambda kind, info: None)
    records = []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(refs) * len(selected), desc="evaluations", unit="eval", disable=not ctx.progress)
    for ref in refs:
        for entry in selected:
            bar.set_postfix_str(f"{ref.name} / {entry.id}")
            rec = _run_one(ref, entry, data_root, store, ctx, force, data_overrides, params, emit)
            if rec is not None:
                records.append(rec)
            bar.update(1)
    bar.close()
    return records


def _run_one(ref, entry, data_root, store, ctx, force, overrides, params, emit):
    spec = get_task(entry.task)
    merged = {**entry.params, **{k: v for k, v in (params or {}).items()
                                 if k in {f.name for f in dataclasses.fields(spec.config_cls)}}}
    cfg = spec.config_cls.from_dict(merged)
    data_desc, digest = entry_digest(entry, cfg.to_dict())
    base = {"model": ref.name, "suite_entry": entry.id, "task": entry.task, "dataset": entry.dataset,
            "table": entry.table, "columns": [dataclasses.asdict(c) for c in entry.columns],
            "protocol": {"task": entry.task, "params": cfg.to_dict(), "data": data_desc, "digest": digest}}
    if not force:
        done = store.get(ref.name, entry.id, digest)
        if done is not None:
            emit("cached", {"model": ref.name, "entry": entry.id})
            return done
    if spec.needs_text and not ref.has_text():
        rec = {**base, "status": "skipped", "reason": "image-only model: the task needs a text tower",
               "metrics": {}, "created": now_iso(), "env": environment()}
        store.put(rec)
        emit("skipped", {"model": ref.name, "entry": entry.id, "reason": rec["reason"]})
        return rec
    try:
        data = open_entry_data(entry, data_root, overrides)
    except (DatasetLayoutError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0]
        log.warning("%s: dataset not available, skipped: %s", entry.id, msg)
        emit("missing", {"model": ref.name, "entry": entry.id, "reason": msg})
        return None
    encoder = ref.load()
    out_dir = store.path_for(ref.name, entry.id, digest).with_suffix("")
    run_ctx = dataclasses.replace(ctx, out_dir=str(out_dir) + "_artifacts")
    seed_everything(ctx.seed)
    emit("start", {"model": ref.name, "entry": entry.id})
    t0 = time.time()
    result = spec.run(encoder, data, cfg, run_ctx)
    wall = time.time() - t0
    rec = {**base, "status": "done", "metrics": result.metrics, "headline": result.headline,
           "protocol": {**base["protocol"], "resolved": result.protocol},
           "model_fingerprint": encoder.fingerprint(), "model_info": encoder.describe(),
           "data": {role: ds.describe() for role, ds in data.items()}, "info": result.info,
           "artifacts": result.artifacts, "seed": ctx.seed, "device": str(run_ctx.torch_device()),
           "devices": ctx.devices, "num_nodes": ctx.num_nodes, "quick": ctx.quick, "wall_time_s": round(wall, 3),
           "created": now_iso(), "env": environment()}
    store.put(rec)
    emit("done", {"model": ref.name, "entry": entry.id, "headline": result.headline,
                  "value": result.metrics[result.headline]})
    return rec


def evaluate(model, suite: str | Sequence[SuiteEntry] = "paper", data_root=None, **kwargs):
    """Notebook API: run (or reuse) a suite for one model or a list; returns a tidy DataFrame
    with one row per (model, entry, metric)."""
    import pandas as pd

    models = model if isinstance(model, (list, tuple)) else [model]
    ctx_fields = {f.name for f in dataclasses.fields(RunContext)}
    ctx = kwargs.pop("ctx", None) or RunContext(**{k: kwargs.pop(k) for k in list(kwargs) if k in ctx_fields})
    records = run_suite(models, suite, data_root, ctx=ctx, **kwargs)
    rows = []
    for r in records:
        for metric, value in (r.get("metrics") or {}).items():
            rows.append({"model": r["model"], "entry": r["suite_entry"], "task": r["task"], "dataset": r["dataset"],
                         "metric": metric, "value": value, "headline": metric == r.get("headline"),
                         "status": r["status"]})
        if r["status"] == "skipped":
            rows.append({"model": r["model"], "entry": r["suite_entry"], "task": r["task"], "dataset": r["dataset"],
                         "metric": None, "value": None, "headline": False, "status": "skipped"})
    return pd.DataFrame(rows, columns=["model", "entry", "task", "dataset", "metric", "value", "headline", "status"])
