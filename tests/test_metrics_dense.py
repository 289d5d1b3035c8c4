"""Depth and surface-normal metrics vs brute-force per-pixel loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tips_eval.errors import DataError
from tips_eval.metrics import depth_metrics, normal_metrics

KEYS = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")


def depth_terms(p, t):
    ratio = np.maximum(p / t, t / p)
    return {
        "sq": (p - t) ** 2,
        "abs_rel": np.abs(p - t) / t,
        "log10": np.abs(np.log10(p) - np.log10(t)),
        "delta1": 100.0 * (ratio < 1.25),
        "delta2": 100.0 * (ratio < 1.25**2),
        "delta3": 100.0 * (ratio < 1.25**3),
    }


def brute_depth(pred, target, valid, reduction):
    """mmseg DepthMetric per image (then mean), or every valid pixel pooled."""
    per_image, pooled = [], []
    for p, t, v in zip(pred, target, valid):
        m = v & (t > 0)
        if not m.any():
            continue
        terms = depth_terms(p[m], t[m])
        pooled.append(terms)
        per_image.append({"rmse": np.sqrt(terms["sq"].mean()), **{k: terms[k].mean() for k in KEYS[1:]}})
    if reduction == "images":
        return {k: np.mean([r[k] for r in per_image]) for k in KEYS}
    cat = {k: np.concatenate([r[k] for r in pooled]) for k in pooled[0]}
    return {"rmse": np.sqrt(cat["sq"].mean()), **{k: cat[k].mean() for k in KEYS[1:]}}


def make_depth(seed, b=3, h=12, w=9):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.5, 8.0, (b, h, w))
    p = t * rng.uniform(0.7, 1.4, (b, h, w))
    t[rng.random((b, h, w)) < 0.2] = 0.0  # missing depth
    return p, t


@pytest.mark.parametrize("reduction", ["images", "pixels"])
def test_depth_matches_brute_force(reduction):
    p, t = make_depth(0)
    valid = np.ones_like(t, dtype=bool)
    valid[1, :4] = False  # e.g. a crop mask, combined with target > 0
    got = depth_metrics(p, t, valid=valid, reduction=reduction)
    assert set(got) == set(KEYS)
    assert got == pytest.approx(brute_depth(p, t, valid, reduction))
    assert 0 < got["delta1"] < got["delta2"] <= 100


def test_depth_reductions_differ_and_default_is_per_image():
    p, t = make_depth(1)
    t[0, :, :6] = 0  # images with very different valid counts make the reductions differ
    assert depth_metrics(p, t) == depth_metrics(p, t, reduction="images")
    assert depth_metrics(p, t)["rmse"] != pytest.approx(depth_metrics(p, t, reduction="pixels")["rmse"])


def test_depth_shapes_single_batch_and_channel():
    p, t = make_depth(2, b=1)
    ref = depth_metrics(p, t)
    assert depth_metrics(p[0], t[0]) == ref
    assert depth_metrics(torch.from_numpy(p[:, None]), torch.from_numpy(t[:, None])) == pytest.approx(ref)


def test_images_without_valid_pixels_are_skipped():
    p, t = make_depth(3)
    t2 = t.copy()
    t2[1] = 0
    assert depth_metrics(p, t2) == pytest.approx(depth_metrics(p[[0, 2]], t[[0, 2]]))
    with pytest.raises(DataError, match="no valid pixel"):
        depth_metrics(p, np.zeros_like(t))
    with pytest.raises(DataError, match="no valid pixel"):
        depth_metrics(p, t, valid=np.zeros_like(t, dtype=bool))


def test_scale_shift_alignment_is_per_image_least_squares():
    p, t = make_depth(4)
    aligned = np.empty_like(p)
    for i in range(len(p)):
        m = t[i] > 0
        a = np.stack([p[i][m], np.ones(m.sum())], 1)
        s, b = np.linalg.lstsq(a, t[i][m], rcond=None)[0]
        aligned[i] = s * p[i] + b
    got = depth_metrics(p, t, align="scale_shift")
    assert got == pytest.approx(depth_metrics(aligned, t), rel=1e-9)
    assert got["rmse"] < depth_metrics(p, t)["rmse"]
    # an affine copy of the target is recovered exactly
    exact = depth_metrics(0.5 * t + 2.0, t, align="scale_shift")
    assert exact["rmse"] == pytest.approx(0.0, abs=1e-9) and exact["delta1"] == 100.0


def test_median_scale_alignment():
    p, t = make_depth(5)
    scaled = np.empty_like(p)
    for i in range(len(p)):
        m = t[i] > 0
        scaled[i] = p[i] * np.median(t[i][m]) / np.median(p[i][m])
    assert depth_metrics(p, t, align="scale") == pytest.approx(depth_metrics(scaled, t))
    assert depth_metrics(3.0 * t, t, align="scale")["abs_rel"] == pytest.approx(0.0, abs=1e-12)


def test_depth_bad_inputs():
    p, t = make_depth(6)
    bad = p.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="pred"):
        depth_metrics(bad, t)
    with pytest.raises(DataError, match="shape"):
        depth_metrics(p[:, :5], t)
    with pytest.raises(DataError, match="valid"):
        depth_metrics(p, t, valid=np.ones((2, 2), dtype=bool))
    with pytest.raises(DataError, match="align"):
        depth_metrics(p, t, align="affine")
    with pytest.raises(DataError, match="reduction"):
        depth_metrics(p, t, reduction="mean")


def brute_normals(pred, target, valid, reduction):
    """Per pixel: normalise both, angle = arccos(clip(dot)) in degrees."""
    per_image, pooled = [], []
    for p, t, v in zip(pred, target, valid):  # (H, W, 3)
        errs = []
        for y in range(p.shape[0]):
            for x in range(p.shape[1]):
                if v[y, x] and np.linalg.norm(t[y, x]) > 0:
                    a, b = p[y, x] / np.linalg.norm(p[y, x]), t[y, x] / np.linalg.norm(t[y, x])
                    errs.append(np.degrees(np.arccos(np.clip(np.dot(a, b), -1, 1))))
        if errs:
            per_image.append(np.array(errs))
            pooled.extend(errs)

    def stats(e):
        return {
            "angular_rmse": np.sqrt(np.mean(e**2)),
            "mean": e.mean(),
            "median": np.median(e),
            "within_11.25": 100 * np.mean(e < 11.25),
            "within_22.5": 100 * np.mean(e < 22.5),
            "within_30": 100 * np.mean(e < 30),
        }

    if reduction == "pixels":
        return stats(np.array(pooled))
    rows = [stats(e) for e in per_image]
    return {k: np.mean([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("reduction", ["images", "pixels"])
def test_normals_match_brute_force_in_both_layouts(reduction):
    rng = np.random.default_rng(0)
    t = rng.normal(size=(2, 7, 6, 3))
    p = 2.5 * t + 0.6 * rng.normal(size=t.shape)  # not unit length: must be normalised
    t[0, 0, :3] = 0  # missing normals
    valid = rng.random((2, 7, 6)) > 0.15
    ref = brute_normals(p, t, valid, reduction)
    got_last = normal_metrics(p, t, valid=valid, reduction=reduction)
    got_first = normal_metrics(np.moveaxis(p, -1, 1), np.moveaxis(t, -1, 1), valid=valid, reduction=reduction)
    assert got_last == pytest.approx(ref)
    assert got_first == pytest.approx(ref)
    assert 0 < got_last["within_11.25"] < got_last["within_30"] < 100


def test_normals_single_image_opposite_vectors_and_empty():
    t = np.zeros((3, 2, 2))
    t[2] = 1.0
    p = t.copy()
    p[:, 0, 0] = [0, 0, -1]  # opposite: 180 degrees
    res = normal_metrics(p, t)
    assert res["mean"] == pytest.approx(45.0) and res["median"] == pytest.approx(0.0)
    assert res["angular_rmse"] == pytest.approx(90.0) and res["within_30"] == pytest.approx(75.0)
    with pytest.raises(DataError, match="no valid pixel"):
        normal_metrics(p, np.zeros_like(t))
    with pytest.raises(DataError, match="no valid pixel"):
        normal_metrics(p, t, valid=np.zeros((2, 2), dtype=bool))
    with pytest.raises(DataError, match="3"):
        normal_metrics(np.ones((2, 4, 4)), np.ones((2, 4, 4)))
    bad = p.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(DataError, match="pred"):
        normal_metrics(bad, t)
