"""Training the dense heads with PyTorch Lightning, from cached features or through the frozen backbone.

``cached``: :class:`CachedTrainSet` serves rows of a feature cache (and of
its horizontally flipped twin) with targets resized (nearest) to the
training resolution; the head's output is upsampled (bilinear) to it.

``backbone``: :class:`AugmentedTrainSet` serves augmented images;
:meth:`DenseProbe.training_step` runs ``encoder.encode_image`` under
``torch.no_grad()`` on every batch. That is the only call of
``encode_image`` outside the feature engine, because the features change
with every random crop and cannot be cached.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tips_eval.errors import BadImageError, DataError, TipsEvalError
from tips_eval.features.pipeline import Failure

from ._dense_data import augment, flip_target, read_target, resize_target, target_tensor
from ._dense_heads import DenseHead, DenseLoss, lr_factor
from tips_eval.faults import fault_point


@dataclass
class TrainPlan:
    """The resolved optimisation protocol (all of it goes into the record)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    schedule: str
    warmup_steps: int
    warmup_start: float
    final_lr: float
    grad_clip: float | None


def layer_batch(fs, rows: np.ndarray, slots: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cls (n, L, D), patch (n, L, h, w, D)) float32 for cache ``rows``, layers in ``slots`` order."""
    cls = np.stack([np.asarray(fs.layers[s][0][rows], dtype=np.float32) for s in slots], axis=1)
    patch = np.stack([np.asarray(fs.layers[s][1][rows], dtype=np.float32) for s in slots], axis=1)
    return torch.from_numpy(cls), torch.from_numpy(patch)


def as_layers(cls: torch.Tensor, patch: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(cls[:, j], patch[:, j]) for j in range(cls.shape[1])]


TARGET_CACHE_BYTES = 1 << 29  # resized training targets kept in memory per process (then read per step)


class CachedTrainSet(Dataset):
    """Item k: cached layers of one (row, view) pair plus its target at ``size`` (flipped for the flip view).
    Resized targets are memoised up to :data:`TARGET_CACHE_BYTES`; the rest is re-read each epoch."""

    def __init__(self, ds, kind: str, size: tuple[int, int], views: list, slots: list[int], rows: np.ndarray,
                 target_kw: dict):
        self.ds, self.kind, self.size, self.views, self.slots = ds, kind, size, views, slots
        self.items = [(v, int(r)) for v in range(len(views)) for r in rows]
        self.target_kw = target_kw
        self._targets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._bytes = 0

    def _target(self, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        if r in self._targets:
            return self._targets[r]
        value, valid = target_tensor(*read_target(self.ds, r, self.kind, **self.target_kw), self.kind)
        value, valid = resize_target(value, valid, self.size, self.kind)
        if self.kind == "segmentation" and (self.target_kw.get("num_classes") or 256) <= 255:
            value = value.to(torch.uint8)  # classes 0..254 and the ignore value 255 fit a byte
        nbytes = value.numel() * value.element_size() + valid.numel()
        if self._bytes + nbytes <= TARGET_CACHE_BYTES:
            self._targets[r], self._bytes = (value, valid), self._bytes + nbytes
        return value, valid

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        try:
            return self._item(k)
        except TipsEvalError as e:  # shipped to the main process as data: one clean line, even from a worker
            return Failure.of(k, e)

    def _item(self, k: int) -> dict:
        v, r = self.items[k]
        cls, patch = layer_batch(self.views[v], np.array([r]), self.slots)
        value, valid = self._target(r)
        if self.kind == "segmentation":
            value = value.long()
        if v == 1:
            value, valid = flip_target(value, valid, self.kind)
        return {"cls": cls[0], "patch": patch[0], "value": value, "valid": valid}


class AugmentedTrainSet(Dataset):
    """Item i: an augmented ``size`` x ``size`` crop of image i (normalised) and its target, transformed alike."""

    def __init__(self, ds, kind: str, size: int, preprocess, scale, flip: bool, color_jitter: float,
                 target_kw: dict, skip_bad: bool):
        from torchvision.transforms import ColorJitter, RandomApply

        self.ds, self.kind, self.size, self.preprocess = ds, kind, int(size), preprocess
        self.scale, self.flip, self.target_kw, self.skip_bad = tuple(scale), bool(flip), target_kw, skip_bad
        c = float(color_jitter)
        self.jitter = RandomApply([ColorJitter(c, c, c, min(c, 0.5))], p=0.8) if c > 0 else None

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        try:
            return self._item(i)
        except TipsEvalError as e:  # shipped to the main process as data: one clean line, even from a worker
            return Failure.of(i, e)

    def _item(self, i: int):
        from torchvision.transforms.functional import to_tensor

        try:
            img = self.ds.load_image(i)
        except BadImageError:
            if self.skip_bad:
                return None
            raise
        value, valid = target_tensor(*read_target(self.ds, i, self.kind, **self.target_kw), self.kind)
        if (img.height, img.width) != tuple(value.shape[-2:]):
            raise DataError(f"{self.ds.name}/{self.ds.split} item {self.ds.image_key(i)}: image is "
                            f"{img.width}x{img.height} but its target is {value.shape[-1]}x{value.shape[-2]}")
        img, value, valid = augment(img, value, valid, self.kind, self.size, self.scale, self.flip, self.jitter)
        return {"pixels": self.preprocess.normalize(to_tensor(img)), "value": value, "valid": valid}


def collate(items):
    """Stack items; a reader failure anywhere in the batch becomes the batch (raised by the step)."""
    failed = [x for x in items if isinstance(x, Failure)]
    if failed:
        return failed[0]
    items = [x for x in items if x is not None]
    if not items:
        return None
    return torch.utils.data.default_collate(items)


def _lightning():
    import pytorch_lightning as pl

    return pl


class DenseProbe(_lightning().LightningModule):
    """A head + its loss, optimised per iteration; the frozen encoder (backbone mode) is held outside the
    module's parameters so it is never trained, saved or wrapped by DDP."""

    def __init__(self, head: DenseHead, loss: DenseLoss, plan: TrainPlan, size: tuple[int, int],
                 encoder=None, layer_ids: list[int] | None = None, slot_ids: list[int] | None = None):
        super().__init__()
        self.head, self.loss_fn, self.plan, self.size = head, loss, plan, tuple(size)
        self._encoder = [encoder]  # a list: not registered as a submodule
        self.layer_ids, self.slot_ids = layer_ids, slot_ids
        self.losses: list[torch.Tensor] = []
        self.valid_pixels = 0

    def on_fit_start(self) -> None:
        enc = self._encoder[0]
        if enc is not None:
            enc.to(self.device).eval()
            for p in enc.parameters():
                p.requires_grad_(False)

    def _features(self, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if "pixels" not in batch:
            return as_layers(batch["cls"], batch["patch"])
        with torch.no_grad():
            f = self._encoder[0].encode_image(batch["pixels"], layers=self.layer_ids)
            got = [(c.float().clone(), p.float().clone()) for c, p in f.layers]  # leave inference mode
        return [got[s] for s in self.slot_ids]

    def training_step(self, batch, batch_idx):
        if isinstance(batch, Failure):
            raise batch.exception()
        if batch is None:  # every image of the batch was unreadable (skip_bad_images)
            return None
        fault_point("train_step")  # reliability harness: a kill during probe training
        out = self.head(self._features(batch), self.size)
        loss = self.loss_fn(out, batch["value"], batch["valid"])
        self.losses.append(loss.detach())
        if not self.valid_pixels:  # one sync until the first labelled pixel is seen
            self.valid_pixels = int(batch["valid"].sum())
        return loss

    def configure_optimizers(self):
        p = self.plan
        opt = torch.optim.AdamW(self.head.parameters(), lr=p.lr, weight_decay=p.weight_decay, betas=p.betas)
        fn = lambda s: lr_factor(s, p.steps, p.warmup_steps, p.schedule, p.warmup_start, p.final_lr)  # noqa: E731
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@contextlib.contextmanager
def _quiet(progress: bool):
    """Lightning's banner lines and single-process hints are noise in an evaluation log."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
        for lg in loggers:  # banners ("GPU available", tips) are noise whether or not bars are shown
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


@contextlib.contextmanager
def _restore_torch_flags():
    """Lightning's ``deterministic`` flips process-wide torch flags; put them back after training."""
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    bench = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.backends.cudnn.benchmark = bench


def fit(module: DenseProbe, train_set: Dataset, ctx, plan: TrainPlan, precision: str) -> dict:
    """Train ``module`` for ``plan.steps`` iterations with a Lightning Trainer; returns a summary.

    ``plan.batch_size`` is the global batch (the reference protocols' total over their GPUs): each of
    the ``devices x num_nodes`` processes takes an equal share.
    """
    pl = _lightning()
    pl.seed_everything(ctx.seed, workers=True, verbose=False)
    dev_type = ctx.torch_device().type
    workers = ctx.num_workers if ctx.num_workers is not None else (4 if dev_type == "cuda" else 0)
    world = max(1, ctx.devices) * max(1, ctx.num_nodes)
    batch = max(1, min(plan.batch_size // world, len(train_set)))
    loader = DataLoader(train_set, batch_size=batch, shuffle=True, drop_last=len(train_set) >= batch,
                        num_workers=workers, collate_fn=collate, generator=torch.Generator().manual_seed(ctx.seed),
                        persistent_workers=workers > 0, pin_memory=dev_type == "cuda")
    with _quiet(ctx.progress), _restore_torch_flags():
        trainer = pl.Trainer(
            accelerator={"cuda": "gpu"}.get(dev_type, dev_type), devices=ctx.devices, num_nodes=ctx.num_nodes,
            strategy=ctx.strategy or "auto", max_steps=plan.steps, max_epochs=-1,
            deterministic=True if dev_type == "cpu" else "warn",  # CUDA upsample backward: no deterministic kernel
            precision={"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}[precision],
            gradient_clip_val=plan.grad_clip, logger=False, enable_checkpointing=False,
            enable_progress_bar=ctx.progress, enable_model_summary=False, num_sanity_val_steps=0,
            sync_batchnorm=world > 1, default_root_dir=None, log_every_n_steps=max(1, plan.steps))
        trainer.fit(module, loader)
    losses = torch.stack(module.losses).float().cpu().numpy() if module.losses else np.zeros(0)
    k = max(1, min(10, len(losses) // 5)) if len(losses) else 1
    return {"steps_run": int(trainer.global_step), "saw_valid_pixels": module.valid_pixels > 0,
            "batch_per_device": batch, "world_size": world,
            "loss_first": float(losses[:k].mean()) if len(losses) else None,
            "loss_last": float(losses[-k:].mean()) if len(losses) else None,
            "is_global_zero": bool(trainer.is_global_zero), "losses": losses}
