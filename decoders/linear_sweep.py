"""DINOv2-style linear classification: a grid of linear heads trained in one pass.

Protocol (dinov2 ``eval/linear.py``, PROTOCOLS.md section 4) on cached features:

- every (lr, wd) pair of the grid is one linear head; all heads are one
  (D, H, C) weight tensor, so each mini-batch is read once and costs one
  matmul forward and one matmul for the gradient of all heads together;
- SGD, momentum 0.9 (torch semantics: buf = m * buf + grad + wd * w), each head
  with its own lr and weight decay (decay on the weights, not the bias);
  cosine schedule from lr to 0 over all iterations, no warmup (DINOv2's
  ``CosineScheduler``); cross-entropy averaged over the batch;
- lr grid: DINOv2's {1e-5, 2e-5, 5e-5, ..., 0.1} (13 values) scaled by
  batch_size / 256; weight-decay grid {0, 1e-4, 1e-3} (DINOv2 itself uses 0);
  default batch 256 (DINOv2: 8 GPUs x 128 = 1024 for 10 ImageNet epochs; pass
  ``batch_size=1024`` to match it, the lrs scale with it);
- init N(0, 0.01) weights, zero bias (DINOv2 ``LinearClassifier``);
- features are used as given (DINOv2 feeds the concatenated normed tokens
  unnormalised); ``normalize=True`` L2-normalises each row first;
- shuffled mini-batches each epoch from a seeded generator; numpy memmaps
  are read one batch at a time (rows fetched in sorted order);
- the best head is the one with the best top-1 on a held-out part of train
  (``heldout_fraction``, stratified per class, seeded; ties go to the earlier
  head in lr-major grid order). DINOv2 selects on the evaluation set itself;
  we do not. With ``refit=True`` (default) the chosen (lr, wd) is retrained on
  all of train and that head is evaluated on val; the result also reports
  the sweep head's own val accuracy.

Cost: data is read once per epoch for all heads, but the two matmuls grow
with the number of heads, so on a CPU (compute-bound) the sweep costs about
H times one head; it approaches one head's cost only where reading the
features dominates (GPU, features streamed from disk).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tips_eval.errors import DataError
from tips_eval.metrics._common import check_finite, resolve_device, to_numpy
from tips_eval.faults import fault_point

#: dinov2/eval/linear.py learning rates (before the batch_size / 256 scaling)
DINOV2_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
DEFAULT_WDS = (0.0, 1e-4, 1e-3)


class FeatureRows:
    """Row access to (N, D) features held as a tensor, an array or a memmap."""

    def __init__(self, x: Any, name: str):
        if isinstance(x, np.memmap):
            self.data = x  # stays on disk; rows are read per batch
        elif isinstance(x, torch.Tensor):
            self.data = x.detach().to(dtype=torch.float32).contiguous()  # stays on its device
        else:
            self.data = torch.from_numpy(np.ascontiguousarray(to_numpy(x, name), dtype=np.float32))
        if self.data.ndim != 2 or self.data.shape[0] == 0:
            raise DataError(f"{name} must be a non-empty 2-D (num_items, dim) array, got shape {tuple(self.data.shape)}")
        self.name = name
        for s in range(0, len(self), 65536):  # one chunked pass: NaN/Inf -> DataError naming the rows
            chunk = self.rows(np.arange(s, min(s + 65536, len(self))))
            try:
                check_finite(chunk, name)
            except DataError:
                raise DataError(f"{name} has NaN/Inf values (in rows {s}..{s + len(chunk) - 1})") from None

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def dim(self) -> int:
        return self.data.shape[1]

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` (already sorted for memmaps) as a float32 tensor."""
        if isinstance(self.data, torch.Tensor):
            return self.data[torch.from_numpy(idx).to(self.data.device)]
        return torch.from_numpy(np.ascontiguousarray(self.data[idx], dtype=np.float32))


def _labels(y: Any, name: str, n: int, num_classes: int) -> np.ndarray:
    a = to_numpy(y, name)
    if a.ndim != 1 or len(a) != n:
        raise DataError(f"{name} must be 1-D with one label per feature row ({n}), got shape {a.shape}")
    if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.all(a == np.round(a))):
        raise DataError(f"{name} must hold integer class ids, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.min() < 0 or a.max() >= num_classes:
        bad = a[(a < 0) | (a >= num_classes)][0]
        raise DataError(f"{name} has class id {bad} outside [0, {num_classes})")
    return a


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, heldout_idx): round(fraction * n_c) items of each class held out -- at least one
    when the class has two or more (so tiny datasets still select), and at least one always kept."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.nonzero(y == c)[0]
        rng.shuffle(idx)
        held.append(idx[: min(max(1, round(fraction * len(idx))), len(idx) - 1)])
    held_idx = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(y)), held_idx), held_idx


class LinearHeads:
    """H linear heads as one (D, H, C) weight tensor (+ bias), trained by SGD with per-head lr / wd.

    The bias is stored as an extra input row of the weight (the batch gets a
    constant-1 column), so one GEMM gives every head's weight *and* bias
    gradient; weight decay skips that row.
    """

    def __init__(self, dim: int, num_classes: int, lrs: Sequence[float], wds: Sequence[float], momentum: float,
                 generator: torch.Generator, device: torch.device):
        self.dim, self.h, self.c = dim, len(lrs), num_classes
        w = torch.zeros(dim + 1, self.h, num_classes)
        w[:dim] = torch.randn(dim, self.h, num_classes, generator=generator) * 0.01
        self.params = w.to(device)  # rows 0..D-1: weights, row D: bias
        self.buf = torch.zeros_like(self.params)
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=device).view(1, self.h, 1)
        self.wds = torch.tensor(wds, dtype=torch.float32, device=device).view(1, self.h, 1)
        self.any_wd = any(wd != 0 for wd in wds)
        self.momentum = momentum
        self._ones = torch.ones(0, 1, device=device)

    @property
    def weight(self) -> torch.Tensor:
        return self.params[: self.dim]

    @property
    def bias(self) -> torch.Tensor:
        return self.params[self.dim]

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self._ones.shape[0] != x.shape[0]:
            self._ones = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        return torch.cat([x, self._ones], 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, C) logits of every head."""
        return (self._augment(x) @ self.params.view(self.dim + 1, -1)).view(-1, self.h, self.c)

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor, lr_factor: float) -> None:
        """One SGD step of every head on the batch (mean cross-entropy; exact analytic gradient)."""
        b = x.shape[0]
        xa = self._augment(x)
        grad = torch.softmax((xa @ self.params.view(self.dim + 1, -1)).view(b, self.h, self.c), dim=-1).view(b, -1)
        target = y[:, None] + self.c * torch.arange(self.h, device=x.device)[None, :]
        grad.scatter_add_(1, target, torch.full(target.shape, -1.0, device=x.device))  # softmax - onehot
        self.buf.view(self.dim + 1, -1).addmm_(xa.T, grad, beta=self.momentum, alpha=1.0 / b)
        if self.any_wd:  # buf += wd * w, weights only (not the bias row)
            self.buf[: self.dim].addcmul_(self.params[: self.dim], self.wds)
        self.params.addcmul_(self.buf, self.lrs, value=-lr_factor)


class LinearProbeSweep:
    """Grid of linear heads on frozen features, trained together; see the module docstring."""

    def __init__(self, dim: int, num_classes: int, lrs: Sequence[float] = DINOV2_LRS, wds: Sequence[float] = DEFAULT_WDS,
                 epochs: int = 10, batch_size: int = 256, seed: int = 0, device: Any = None, momentum: float = 0.9,
                 scale_lr: bool = True, refit: bool = True, normalize: bool = False):
        if dim < 1 or num_classes < 2:
            raise DataError(f"need dim >= 1 and num_classes >= 2, got dim={dim}, num_classes={num_classes}")
        if epochs < 1 or batch_size < 1:
            raise DataError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
        if not lrs or any(lr <= 0 for lr in lrs) or not wds or any(w < 0 for w in wds):
            raise DataError(f"lrs must be positive and wds non-negative, got lrs={lrs}, wds={wds}")
        self.dim, self.num_classes = int(dim), int(num_classes)
        self.base_lrs, self.wds = tuple(float(v) for v in lrs), tuple(float(v) for v in wds)
        self.epochs, self.batch_size, self.seed = int(epochs), int(batch_size), int(seed)
        self.device = resolve_device(device)
        self.momentum, self.scale_lr, self.refit, self.normalize = float(momentum), scale_lr, refit, normalize
        scale = self.batch_size / 256.0 if scale_lr else 1.0
        self.grid = [(lr * scale, lr, wd) for lr in self.base_lrs for wd in self.wds]  # lr-major

    def _batch(self, feats: FeatureRows, y: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.sort(idx)
        x = feats.rows(idx).to(self.device, non_blocking=True)
        if self.normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        return x, torch.from_numpy(y[idx]).to(self.device)

    def train_heads(self, feats: FeatureRows, y: np.ndarray, idx: np.ndarray, grid: list, seed: int) -> LinearHeads:
        """Train one head per (lr, base_lr, wd) of ``grid`` on rows ``idx``, in one pass per epoch."""
        gen = torch.Generator().manual_seed(seed)
        heads = LinearHeads(self.dim, self.num_classes, [g[0] for g in grid], [g[2] for g in grid], self.momentum, gen, self.device)
        steps = math.ceil(len(idx) / self.batch_size)
        total, it = self.epochs * steps, 0
        for _ in range(self.epochs):
            order = idx[torch.randperm(len(idx), generator=gen).numpy()]
            for s in range(0, len(order), self.batch_size):
                x, yb = self._batch(feats, y, order[s : s + self.batch_size])
                fault_point("sweep_step")  # reliability harness: a kill during probe training
                heads.step(x, yb, 0.5 * (1.0 + math.cos(math.pi * it / total)))
                it += 1
        return heads

    @torch.no_grad()
    def evaluate(self, heads: LinearHeads, feats: FeatureRows, y: np.ndarray, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 and top-5 accuracy (percent) of every head on rows ``idx`` (default: all)."""
        idx = np.arange(len(feats)) if idx is None else idx
        top1, top5 = np.zeros(heads.h), np.zeros(heads.h)
        chunk = max(1, 2**25 // (heads.h * heads.c))
        for s in range(0, len(idx), chunk):
            x, yb = self._batch(feats, y, idx[s : s + chunk])
            logits = heads.logits(x)
            true = logits.gather(2, yb[:, None, None].expand(-1, heads.h, 1))
            # rank under (logit desc, class id asc): the lowest class id wins a tie, like argmax
            ids = torch.arange(heads.c, device=x.device)
            rank = (logits > true).sum(2) + ((logits == true) & (ids < yb[:, None, None])).sum(2)
            top1 += (rank < 1).sum(0).cpu().numpy()
            top5 += (rank < 5).sum(0).cpu().numpy()
        return 100.0 * top1 / len(idx), 100.0 * top5 / len(idx)

    def fit(self, train_x: Any, train_y: Any, val_x: Any, val_y: Any, heldout_fraction: float = 0.1) -> dict:
        """Train the grid, pick the best head on held-out train, report val top-1 / top-5."""
        t0 = time.perf_counter()
        if not 0.0 < heldout_fraction < 1.0:
            raise DataError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        tr, va = FeatureRows(train_x, "train_x"), FeatureRows(val_x, "val_x")
        for f in (tr, va):
            if f.dim != self.dim:
                raise DataError(f"{f.name} has dim {f.dim} but the sweep was built for dim {self.dim}")
        ytr = _labels(train_y, "train_y", len(tr), self.num_classes)
        yva = _labels(val_y, "val_y", len(va), self.num_classes)
        fit_idx, held_idx = stratified_split(ytr, heldout_fraction, self.seed)
        if len(held_idx) == 0:
            raise DataError(f"heldout_fraction={heldout_fraction} holds out no sample; every class needs >= 2 samples")
        heads = self.train_heads(tr, ytr, fit_idx, self.grid, self.seed)
        held_top1, _ = self.evaluate(heads, tr, ytr, held_idx)
        best = int(np.argmax(held_top1))  # first best in lr-major order
        lr, base_lr, wd = self.grid[best]
        val1, val5 = self.evaluate(heads, va, yva)
        result = {
            "best_lr": lr, "best_base_lr": base_lr, "best_wd": wd, "best_head": best,
            "heldout_top1": float(held_top1[best]),
            "sweep_head_val_top1": float(val1[best]), "sweep_head_val_top5": float(val5[best]),
            "heads": [{"lr": g[0], "base_lr": g[1], "wd": g[2], "heldout_top1": float(a)} for g, a in zip(self.grid, held_top1)],
        }
        if self.refit:
            head = self.train_heads(tr, ytr, np.arange(len(tr)), [self.grid[best]], self.seed + 1)
            val1, val5 = self.evaluate(head, va, yva)
            result["val_top1"], result["val_top5"] = float(val1[0]), float(val5[0])
        else:
            result["val_top1"], result["val_top5"] = result["sweep_head_val_top1"], result["sweep_head_val_top5"]
        result["protocol"] = self.protocol(len(fit_idx), len(held_idx), len(va), heldout_fraction)
        result["wall_time_s"] = time.perf_counter() - t0
        return result

    def protocol(self, n_fit: int, n_held: int, n_val: int, heldout_fraction: float) -> dict:
        """Every choice that shapes the numbers, for the result record."""
        return {
            "method": "linear probe sweep, all heads trained in one pass (DINOv2 eval/linear.py style)",
            "optimizer": "SGD", "momentum": self.momentum, "nesterov": False,
            "schedule": "cosine from lr to 0 per iteration, no warmup",
            "loss": "cross-entropy, mean over the batch", "init": "weights N(0, 0.01), bias 0",
            "base_lrs": list(self.base_lrs), "lr_scaling": "lr = base_lr * batch_size / 256" if self.scale_lr else "none",
            "wds": list(self.wds), "weight_decay_on_bias": False,
            "epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed,
            "feature_normalization": "l2" if self.normalize else "none",
            "selection": "best held-out top-1 (ties: first in lr-major grid order)",
            "heldout": "stratified per class, seeded", "heldout_fraction": heldout_fraction,
            "refit_on_full_train": self.refit,
            "num_heads": len(self.grid), "num_fit": n_fit, "num_heldout": n_held, "num_val": n_val,
            "num_classes": self.num_classes, "dim": self.dim, "device": str(self.device),
        }
