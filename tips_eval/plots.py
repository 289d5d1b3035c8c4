"""Plots (matplotlib, PNG): PCA of patch features as RGB (the paper's qualitative
figure), dense predictions next to ground truth, and a run vs baselines as bars
and a radar chart. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def pca_rgb(patches: np.ndarray, n_components: int = 3) -> np.ndarray:
    """(B, h, w, D) patch features -> (B, h, w, 3) in [0, 1]: the first 3 principal
    components fitted jointly over all images' patches, each min-max scaled."""
    b, h, w, d = patches.shape
    x = patches.reshape(-1, d).astype(np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    # economy SVD on the covariance: D x D, cheap for D <= 2k
    cov = x.T @ x / max(1, len(x) - 1)
    vals, vecs = np.linalg.eigh(cov)
    comps = vecs[:, ::-1][:, :n_components]
    proj = x @ comps
    signs = np.sign(proj[np.abs(proj).argmax(axis=0), range(n_components)])  # deterministic sign
    proj = proj * np.where(signs == 0, 1, signs)
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    proj = np.clip((proj - lo) / np.maximum(hi - lo, 1e-8), 0, 1)
    if n_components < 3:
        proj = np.concatenate([proj, np.zeros((len(proj), 3 - n_components))], axis=1)
    return proj.reshape(b, h, w, 3).astype(np.float32)


def pca_figure(images: Sequence, features: dict[str, np.ndarray], path: str | Path) -> Path:
    """One row per image: the image, then the PCA-RGB of each model's patch features."""
    plt = _plt()
    n, m = len(images), len(features)
    fig, axes = plt.subplots(n, m + 1, figsize=(2.2 * (m + 1), 2.2 * n), squeeze=False)
    rgbs = {name: pca_rgb(f) for name, f in features.items()}
    for i, img in enumerate(images):
        axes[i, 0].imshow(np.asarray(img))
        axes[i, 0].set_title("image" if i == 0 else "", fontsize=9)
        for j, (name, rgb) in enumerate(rgbs.items()):
            axes[i, j + 1].imshow(rgb[i], interpolation="nearest")
            if i == 0:
                axes[i, j + 1].set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _colorize(kind: str, arr: np.ndarray, num_classes: int | None = None, vmax: float | None = None) -> np.ndarray:
    plt = _plt()
    if kind == "segmentation":
        n = max(num_classes or int(arr[arr != 255].max(initial=0)) + 1, 2)
        cmap = plt.get_cmap("tab20", n)
        rgb = cmap(np.clip(arr, 0, n - 1) % n)[..., :3]
        rgb[arr == 255] = 0.0
        return rgb
    if kind == "depth":
        v = np.nan_to_num(arr.astype(np.float64), nan=0.0)
        top = vmax if vmax else (np.percentile(v[v > 0], 99) if (v > 0).any() else 1.0)
        return plt.get_cmap("magma_r")(np.clip(v / max(top, 1e-6), 0, 1))[..., :3]
    if kind == "normals":
        n = arr / np.maximum(np.linalg.norm(arr, axis=-1, keepdims=True), 1e-8)
        return (n + 1) / 2
    raise ValueError(f"unknown dense kind {kind!r}")


def dense_figure(images: Sequence, targets: Sequence[np.ndarray], preds: Sequence[np.ndarray], kind: str,
                 path: str | Path, num_classes: int | None = None, title: str = "") -> Path:
    """Rows of (image, ground truth, prediction) for segmentation / depth / normals."""
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.0, 2.3 * n), squeeze=False)
    for i in range(n):
        t, p = np.asarray(targets[i]), np.asarray(preds[i])
        vmax = float(np.percentile(t[t > 0], 99)) if kind == "depth" and (t > 0).any() else None
        for j, (panel, label) in enumerate(((np.asarray(images[i]), "image"),
                                            (_colorize(kind, t, num_classes, vmax), "ground truth"),
                                            (_colorize(kind, p, num_classes, vmax), "prediction"))):
            axes[i, j].imshow(panel, interpolation="nearest")
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _normalised_scores(records: list[dict]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Models, column labels, raw values and per-column scores in [0, 1] (1 = best, direction aware)."""
    cols: dict[str, dict] = {}
    vals: dict[tuple[str, str], float] = {}
    for r in records:
        if r.get("status") != "done":
            continue
        for c in r.get("columns", []):
            v = r["metrics"].get(c["metric"])
            if v is not None:
                cols.setdefault(c["label"], c)
                vals[(r["model"], c["label"])] = float(v) * c.get("scale", 1.0)
    models = list(dict.fromkeys(m for m, _ in vals))
    labels = list(cols)
    raw = np.full((len(models), len(labels)), np.nan)
    for (m, lab), v in vals.items():
        raw[models.index(m), labels.index(lab)] = v
    score = np.full_like(raw, np.nan)
    for j, lab in enumerate(labels):
        col = raw[:, j]
        ok = ~np.isnan(col)
        if not ok.any():
            continue
        lo, hi = col[ok].min(), col[ok].max()
        s = (col - lo) / (hi - lo) if hi > lo else np.full_like(col, 0.5)  # one value (or a tie): no ranking
        score[:, j] = s if cols[lab]["higher_is_better"] else 1 - s
    return models, labels, raw, score


def comparison_figure(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Bars of each table column (raw values, direction in the title) and a radar of
    the per-column normalised scores (1 = best model on that column)."""
    plt = _plt()
    models, labels, raw, score = _normalised_scores(records)
    if not labels:
        raise ValueError("no finished records with table columns to plot")
    ncols = min(4, len(labels))
    nrows = int(np.ceil(len(labels) / ncols)) + 1
    fig = plt.figure(figsize=(3.2 * ncols, 2.6 * nrows))
    colors = plt.get_cmap("tab10")(np.arange(len(models)) % 10)
    cols = {}
    for r in records:
        for c in r.get("columns", []):
            cols.setdefault(c["label"], c)
    for j, lab in enumerate(labels):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        ax.bar(range(len(models)), np.nan_to_num(raw[:, j]), color=colors)
        ax.set_title(f"{lab} {'↑' if cols[lab]['higher_is_better'] else '↓'}", fontsize=8)
        ax.set_xticks([])
        ax.tick_params(labelsize=7)
    ax = fig.add_subplot(nrows, 1, nrows, projection="polar")
    angles = np.linspace(0, 2 * np.pi, len(labels), endpoint=False)
    for i, m in enumerate(models):
        s = np.nan_to_num(score[i])
        ax.plot(np.r_[angles, angles[:1]], np.r_[s, s[:1]], color=colors[i], label=m)
        ax.fill(np.r_[angles, angles[:1]], np.r_[s, s[:1]], color=colors[i], alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels(labels, fontsize=6)
    ax.set_yticklabels([])
    ax.legend(loc="center left", bbox_to_anchor=(1.05, 0.5), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def dense_figure_from_npz(npz_path: str | Path, path: str | Path, title: str = "") -> Path:
    """Re-draw a dense task's saved predictions (``images``, ``targets``, ``preds``, ``kind``)."""
    with np.load(npz_path, allow_pickle=False) as z:
        kind = str(z["kind"])
        num_classes = int(z["num_classes"]) if "num_classes" in z.files else None
        return dense_figure(list(z["images"]), list(z["targets"]), list(z["preds"]), kind, path, num_classes, title)
