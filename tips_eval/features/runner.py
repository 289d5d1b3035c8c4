"""One process's share of an extraction: plan (rank 0), compute shards, seal (rank 0).

Single-process runs use it with world size 1; Lightning DDP runs give every
rank a disjoint, round-robin set of whole pending shards over the same
preallocated memmaps, and rank 0 seals the manifest after a barrier.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tips_eval.errors import CacheError, DataError, TipsEvalError

from . import store
from .pipeline import TransformedImages, load_one, make_loader, shard_batches
from .spec import FORMAT_VERSION, FeatureSpec, autocast_dtype
from tips_eval.faults import fault_point

log = logging.getLogger("tips_eval.features")

_fsync = os.fsync  # indirection so tests can simulate a full disk


@dataclass
class Job:
    """Everything a rank needs (picklable, for spawn-based strategies)."""

    encoder: torch.nn.Module
    dataset: object
    spec: FeatureSpec
    transform: object
    layers: list[int]
    key: str
    root: Path
    key_payload: dict
    precision: str
    batch_size: int
    num_workers: int
    shard_size: int
    skip_bad: bool
    progress: bool
    verify: str
    channels_last: bool
    extra: dict = field(default_factory=dict)


class LocalComm:
    rank, world = 0, 1

    def broadcast(self, obj):
        return obj

    def barrier(self):
        pass

    def any(self, flag: bool) -> bool:
        return flag


@contextlib.contextmanager
def dir_lock(root: Path):
    """Exclusive lock on ``<cache_dir>/.locks/<key>.lock`` so two jobs never write one entry."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    lock_dir = root.parent / ".locks"
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"{root.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise store.cache_write_error(root, e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process extracting into %s", root)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Runner:
    def __init__(self, job: Job, comm, device: torch.device):
        self.job, self.comm, self.device = job, comm, torch.device(device)
        self.encoder = job.encoder.to(self.device).eval()
        if job.channels_last:
            self.encoder.to(memory_format=torch.channels_last)
        self.images = TransformedImages(job.dataset, job.transform, job.spec.flip)
        self.ds_name = f"{getattr(job.dataset, 'name', 'dataset')}/{getattr(job.dataset, 'split', '')}"

    # ------------------------------------------------------------------ flow
    def run(self) -> None:
        job, comm = self.job, self.comm
        with dir_lock(job.root) if comm.rank == 0 else contextlib.nullcontext():
            state, err = None, None
            if comm.rank == 0:
                try:
                    state = self.prepare()
                except BaseException as e:  # noqa: BLE001  (re-raised below, after telling the others)
                    err, state = e, {"error": str(e)}
            state = comm.broadcast(state)
            if "error" in state:
                raise err or CacheError(f"rank 0 failed to prepare {job.root}: {state['error']}")
            if state.get("done"):
                return
            layout = store.Layout.from_dict(state["layout"])
            mine = state["pending"][comm.rank::comm.world]
            t0 = time.perf_counter()
            try:
                self.extract(layout, mine)
            except BaseException as e:  # noqa: BLE001
                err = e
            if comm.any(err is not None):
                raise err or CacheError(f"another process failed while extracting into {job.root}")
            comm.barrier()
            if comm.rank == 0:
                self.seal(layout, resumed=layout.n_shards - len(state["pending"]),
                          seconds=time.perf_counter() - t0)
            comm.barrier()

    def prepare(self) -> dict:
        """Rank 0: repair or reset a bad entry, create the arrays or verify finished shards."""
        job, root = self.job, self.job.root
        chk = store.check_entry(root, job.key, job.verify, FORMAT_VERSION)
        if chk.status == "valid":
            return {"done": True}
        if chk.status == "invalid" and chk.bad_shards:
            log.warning("feature cache %s: %s; recomputing those shards", root, chk.reason)
            store.demote(root, chk.manifest, chk.bad_shards)
        elif chk.status == "invalid":
            log.warning("feature cache %s is invalid (%s); rebuilding it", root, chk.reason)
            self.reset()
        layout, done = self.resumable_layout(), set()
        if layout is None:
            self.reset()
            layout = self.probe_layout()
            store.create_arrays(root, layout)
        else:
            arrays = store.open_arrays(root, layout, "r")
            for s, rec in sorted(store.read_shard_records(root).items()):
                a, b = layout.shard_range(s)
                sums = rec.get("checksums", {})
                if (s < layout.n_shards and set(sums) == set(arrays) and rec.get("hash") == store.HASH_NAME
                        and store.shard_checksums(arrays, a, b) == sums):
                    done.add(s)
                else:
                    log.warning("feature cache %s: shard %d does not match its checksum; recomputing it", root, s)
                    store.remove_shard_record(root, s)
            del arrays
        pending = [s for s in range(layout.n_shards) if s not in done]
        log.info("features of %s on %s: key %s at %s (%d of %d shards to compute%s)", self.encoder.name,
                 self.ds_name, job.key, root, len(pending), layout.n_shards, ", resuming" if done else "")
        return {"layout": layout.to_dict(), "pending": pending}

    def resumable_layout(self) -> store.Layout | None:
        prog = store.read_json(self.job.root / store.PROGRESS)
        if prog is None:
            return None
        try:
            layout = store.Layout.from_dict(prog)
            ok = layout.key == self.job.key and layout.n == len(self.images) and layout.format == FORMAT_VERSION
            if ok:
                store.open_arrays(self.job.root, layout, "r")
                return layout
        except (CacheError, KeyError, TypeError, ValueError):
            pass
        log.warning("feature cache %s: progress.json does not match; starting over", self.job.root)
        return None

    def reset(self) -> None:
        try:
            if self.job.root.exists():
                shutil.rmtree(self.job.root)
            self.job.root.mkdir(parents=True)
        except OSError as e:
            raise store.cache_write_error(self.job.root, e) from None

    def probe_layout(self) -> store.Layout:
        """Array shapes from one forward pass on the first readable item."""
        job = self.job
        _, x = load_one(self.images, 0, job.skip_bad)
        outs = self.forward(x[None])
        arrays = {name: {"shape": [len(self.images), *t.shape[1:]], "dtype": str(t.dtype).replace("torch.", "")}
                  for name, t in outs.items()}
        return store.Layout(key=job.key, n=len(self.images), shard_size=job.shard_size, arrays=arrays,
                            global_names=list(self._global_names), layers=list(job.layers), format=FORMAT_VERSION)

    # --------------------------------------------------------------- compute
    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pixels -> {array name: tensor in its storage dtype, on device}."""
        job = self.job
        x = pixels.to(self.device, non_blocking=True)
        if job.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = autocast_dtype(job.precision)
        ctx = torch.autocast(self.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            f = self.encoder.encode_image(x, layers=job.layers, kinds=job.spec.kinds)
        self._global_names = f.global_names
        g, p = getattr(np, job.spec.global_dtype), getattr(np, job.spec.patch_dtype)
        out = {"global_tokens": (f.global_tokens, g)}
        if job.spec.patch:
            out["patch_tokens"] = (f.patch_tokens, p)
        got = len(f.layers or [])
        if got != len(job.layers):
            raise TipsEvalError(f"{self.encoder.name} returned {got} layers for layers={job.layers}")
        for j, (cls_tok, patch_tok) in zip(job.layers, f.layers or []):
            out[f"layer{j:02d}_cls"] = (cls_tok, g)
            out[f"layer{j:02d}_patch"] = (patch_tok, p)
        if "value" in job.spec.kinds:
            if f.value_tokens is None:
                raise TipsEvalError(f"{self.encoder.name} returned no value tokens for kinds=('value',)")
            out["value_tokens"] = (f.value_tokens, p)
        return {k: t.to(getattr(torch, np.dtype(d).name)) for k, (t, d) in out.items()}

    def extract(self, layout: store.Layout, shards: list[int]) -> None:
        job = self.job
        arrays = store.open_arrays(job.root, layout, "r+")
        ranges = [layout.shard_range(s) for s in shards]
        loader = make_loader(self.images, shard_batches(ranges, job.batch_size), job.num_workers,
                             pin_memory=self.device.type == "cuda")
        self.left = {s: b - a for s, (a, b) in zip(shards, ranges)}
        self.bad = {s: [] for s in shards}
        self.layout, self.arrays = layout, arrays
        desc = f"{self.encoder.name} {self.ds_name}"
        if self.comm.world > 1:
            desc += f" (rank 0 of {self.comm.world})"
        bar = tqdm(total=sum(self.left.values()), unit="img", smoothing=0.1, dynamic_ncols=True, desc=desc,
                   disable=not job.progress or self.comm.rank != 0)
        with bar, Finalizer(job.root, arrays, layout) as self.finalizer:
            pending = None
            for batch in loader:
                step = self.launch(batch)
                if pending is not None:
                    self.write(*pending, bar)
                pending = step
            if pending is not None:
                self.write(*pending, bar)

    def launch(self, batch: dict):
        """Start the forward pass of a batch; its results are copied to host asynchronously."""
        bad_rows = []
        for fail in batch["failures"]:
            if not (self.job.skip_bad and fail.error == "BadImageError"):
                raise fail.exception() from None
            bad_rows.append(fail.index)
        host, flags, event = None, None, None
        if batch["pixels"] is not None:
            outs = self.forward(batch["pixels"])
            flags = torch.stack([torch.isfinite(t).all() for t in outs.values()]).to("cpu", non_blocking=True)
            host = {k: t.to("cpu", non_blocking=True) for k, t in outs.items()}
            if self.device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
        return batch["indices"], bad_rows, host, flags, event

    def write(self, indices, bad_rows, host, flags, event, bar) -> None:
        """Copy one batch into the memmaps (zeros for skipped rows); seal shards that are complete."""
        if event is not None:
            event.synchronize()
        start, stop = indices[0], indices[-1] + 1
        good = np.isin(np.arange(start, stop), bad_rows, invert=True)
        if host is not None:
            for ok, (name, t) in zip(flags.tolist(), host.items(), strict=True):
                if not ok:
                    self.raise_nonfinite(name, t.numpy(), np.arange(start, stop)[good])
        for name, mm in self.arrays.items():
            if good.all():
                mm[start:stop] = host[name].numpy()
            else:
                block = np.zeros((stop - start, *mm.shape[1:]), dtype=mm.dtype)
                if host is not None:
                    block[good] = host[name].numpy()
                mm[start:stop] = block
        fault_point("extract_batch")  # reliability harness: a kill with a shard half written
        s = start // self.layout.shard_size
        self.bad[s] += bad_rows
        self.left[s] -= stop - start
        if self.left[s] == 0:
            self.finalizer.submit(s, sorted(self.bad[s]))
        bar.update(stop - start)

    def raise_nonfinite(self, name: str, rows: np.ndarray, items: np.ndarray):
        first = int(items[np.flatnonzero(~np.isfinite(rows.reshape(len(rows), -1)).all(1))[0]])
        key = self.images._key(first)
        hint = ("a float16 store overflows beyond 65504; use FeatureSpec(patch_dtype='float32')"
                if rows.dtype == np.float16 else "check the encoder weights and the input normalisation")
        raise DataError(f"non-finite features (NaN/Inf) in {name} of {self.encoder.name} on {self.ds_name}, "
                        f"first at item {first} ({key})", hint=hint)

    # ------------------------------------------------------------------ seal
    def seal(self, layout: store.Layout, resumed: int, seconds: float) -> None:
        """Rank 0, after every rank finished: write the final manifest, then drop the progress files."""
        job, root = self.job, self.job.root
        records = store.read_shard_records(root)
        missing = [s for s in range(layout.n_shards) if s not in records]
        if missing:
            raise CacheError(f"feature cache {root}: shard(s) {missing[:8]} were not recorded; rerun to resume")
        bad = sorted(i for rec in records.values() for i in rec.get("bad", []))
        import tips_eval

        manifest = {
            **layout.to_dict(), "hash": store.HASH_NAME, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checksums": {name: [records[s]["checksums"][name] for s in range(layout.n_shards)]
                          for name in layout.arrays},
            "bad_indices": bad, "bad_keys": [self.images._key(i) for i in bad[:1000]],
            "model": self.encoder.name, "dataset_name": getattr(job.dataset, "name", "dataset"),
            "split": getattr(job.dataset, "split", ""),
            "encoder": self.encoder.describe() if hasattr(self.encoder, "describe") else {},
            "dataset": job.dataset.describe() if hasattr(job.dataset, "describe") else {},
            "transform": job.transform.to_dict(), "spec": job.key_payload["spec"], "key_payload": job.key_payload,
            "extraction": {"precision": job.precision, "device": self.device.type, "world_size": self.comm.world,
                           "batch_size": job.batch_size, "num_workers": job.num_workers,
                           "shards_reused": resumed, "seconds_last_run": round(seconds, 3), **job.extra},
            "versions": {"tips_eval": tips_eval.__version__, "torch": torch.__version__, "numpy": np.__version__},
        }
        store.write_manifest(root, manifest)
        shutil.rmtree(root / store.SHARDS, ignore_errors=True)
        (root / store.PROGRESS).unlink(missing_ok=True)
        if bad:
            log.warning("%d unreadable image(s) in %s skipped (zeros, listed in bad_indices), e.g. %s",
                        len(bad), self.ds_name, manifest["bad_keys"][0])


class Finalizer:
    """Background thread sealing finished shards: fsync the arrays, hash the shard, write its record."""

    def __init__(self, root: Path, arrays: dict[str, np.memmap], layout: store.Layout):
        self.root, self.arrays, self.layout = root, arrays, layout
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-seal")
        self.futures: list[Future] = []
        self.paths = [root / f"{name}.npy" for name in arrays]
        self.error: BaseException | None = None

    def submit(self, s: int, bad: list[int]) -> None:
        if self.error is not None:  # stop computing once a shard could not be written
            raise self.error
        self.futures.append(self.pool.submit(self._seal, s, bad))
        while len(self.futures) > 2:  # bounded backlog; surfaces errors early
            self.futures.pop(0).result()

    def _seal(self, s: int, bad: list[int]) -> None:
        if self.error is not None:  # after a failed shard, record nothing more
            return
        try:
            self._seal_unchecked(s, bad)
        except BaseException as e:
            self.error = e
            raise

    def _seal_unchecked(self, s: int, bad: list[int]) -> None:
        try:
            for p in self.paths:
                fd = os.open(p, os.O_RDWR)
                try:
                    _fsync(fd)
                finally:
                    os.close(fd)
        except OSError as e:
            raise store.cache_write_error(self.root, e) from None
        a, b = self.layout.shard_range(s)
        store.write_shard_record(self.root, s, {
            "shard": s, "start": a, "stop": b, "hash": store.HASH_NAME, "bad": bad,
            "checksums": store.shard_checksums(self.arrays, a, b)})

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            errors = []
            for fut in self.futures:
                try:
                    fut.result()
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
            if errors and exc is None:
                raise errors[0]
        finally:
            self.pool.shutdown(wait=True)
        return False
