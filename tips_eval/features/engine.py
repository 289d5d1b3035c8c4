"""``extract_features``: every task reads encoder features through here.

Batched over a ``torch.utils.data`` pipeline, in inference mode with autocast
on GPU, written to an on-disk cache keyed by everything that changes the
numbers; a cache hit does no forward pass and decodes no image. Interrupted
runs resume at the first unfinished shard, and ``devices > 1`` / ``num_nodes >
1`` / ``strategy`` shard the work across Lightning DDP processes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from tips_eval.errors import DataError

from . import store
from .featureset import FeatureSet
from .pipeline import default_num_workers
from .runner import Job, LocalComm, Runner
from .spec import FORMAT_VERSION, FeatureSpec, cache_key, resolve_precision

log = logging.getLogger("tips_eval.features")

DEFAULT_SHARD_SIZE = 1024


def default_cache_dir() -> Path:
    """``$TIPS_EVAL_HOME/features`` (default ``~/.cache/tips_eval/features``)."""
    from tips_eval.weights import cache_root

    return cache_root() / "features"


def _device_type(device, encoder, distributed: bool) -> str:
    if device is not None:
        return torch.device(device).type
    if not distributed and encoder.device.type != "cpu":
        return encoder.device.type
    return "cuda" if torch.cuda.is_available() else "cpu"


def extract_features(encoder, dataset, spec: FeatureSpec = FeatureSpec(), *, cache_dir=None,
                     batch_size: int = 64, num_workers: int | None = None, device=None,
                     precision: str = "auto", skip_bad_images: bool = False, progress: bool = True,
                     devices: int = 1, num_nodes: int = 1, strategy=None, shard_size: int = DEFAULT_SHARD_SIZE,
                     verify: str = "auto", channels_last: bool | None = None) -> FeatureSet:
    """Features of every item of ``dataset`` (rows in dataset order), from the cache or computed.

    Args:
        encoder: a :class:`tips_eval.Encoder` (moved to ``device`` and set to eval).
        dataset: an :class:`~tips_eval.data.base.ImageDataset`.
        spec: which tokens/layers/kinds, storage dtypes, transform, flip.
        cache_dir: cache root (default ``$TIPS_EVAL_HOME/features``); the entry is ``<cache_dir>/<key>/``.
        num_workers: DataLoader workers decoding + transforming (default min(4, cores) on GPU, 0-2 on CPU).
        device: where to run (default: the encoder's device if not CPU, else CUDA if available, else CPU).
        precision: ``"auto"`` (bf16 autocast on GPUs that support it, else fp16; fp32 on CPU),
            ``"32"``, ``"bf16"`` or ``"16"``. Part of the cache key, since it changes the numbers.
        skip_bad_images: record undecodable images (zero rows, ``bad_indices``) instead of failing.
        devices, num_nodes, strategy: > 1 / given -> Lightning DDP over whole shards (default strategy "ddp").
        shard_size: items per shard, the unit of checkpointing, checksums and DDP work.
        verify: ``"auto"`` re-hashes an existing entry only if its files changed since sealed; ``"full"`` always.
        channels_last: channels-last inputs and conv weights (default: on CUDA).
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size={batch_size}, shard_size={shard_size}; both must be >= 1")
    if len(dataset) == 0:
        raise DataError(f"dataset {getattr(dataset, 'name', '?')}/{getattr(dataset, 'split', '?')} is empty; "
                        "nothing to extract")
    distributed = devices > 1 or num_nodes > 1 or strategy is not None
    dev_type = _device_type(device, encoder, distributed)
    prec = resolve_precision(precision, dev_type)
    transform = spec.preprocess or encoder.preprocess
    layers = encoder.normalize_layers(spec.layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"FeatureSpec.layers={spec.layers} names a block twice ({layers} after normalising)")
    key, payload = cache_key(encoder, dataset, spec, transform, prec)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = root / key

    chk = store.check_entry(root, key, verify, FORMAT_VERSION)
    if chk.status == "valid":
        log.info("features of %s on %s/%s: cache hit, key %s at %s", encoder.name, dataset.name, dataset.split,
                 key, root)
        fs = FeatureSet(root, chk.manifest)
        if fs._stats_changed():
            store.restamp(root, chk.manifest)
        return fs
    if chk.status == "invalid":
        log.warning("feature cache %s is not usable (%s); it will be repaired or rebuilt", root, chk.reason)

    job = Job(encoder=encoder, dataset=dataset, spec=spec, transform=transform, layers=layers, key=key, root=root,
              key_payload=payload, precision=prec, batch_size=int(batch_size),
              num_workers=default_num_workers(dev_type) if num_workers is None else int(num_workers),
              shard_size=int(shard_size), skip_bad=skip_bad_images, progress=progress, verify=verify,
              channels_last=(dev_type == "cuda") if channels_last is None else bool(channels_last))
    if distributed:
        from .distributed import run_distributed

        run_distributed(job, devices=devices, num_nodes=num_nodes, strategy=strategy or "ddp",
                        accelerator="auto" if device is None else dev_type)
    else:
        dev = torch.device(device) if device is not None else (
            encoder.device if encoder.device.type == dev_type else torch.device(dev_type))
        Runner(job, LocalComm(), dev).run()
    return FeatureSet.open(root, verify="auto")
