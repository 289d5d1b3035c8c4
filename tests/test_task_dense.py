"""Dense tasks end to end: every task through the engine and a random-weight model on tiny copies
of the real layouts (VOC, ADE20K, NYUv2 .mat / sync, NAVI) and on synthetic scenes -- the result
keys, the protocol record, metrics recomputed from the saved predictions, learning beyond a
constant predictor, cached vs backbone features, and zero forward passes on a rerun."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tips_eval
from layouts_dense import make_ade20k, make_navi, make_nyu_mat, make_nyu_sync, make_voc
from tips_eval.data import open_dataset
from tips_eval.data.class_names import ADE150, VOC21
from tips_eval.data.nyu import eigen_crop_mask
from tips_eval.metrics import depth_metrics, mean_iou, normal_metrics, segmentation_confusion
from tips_eval.model_zoo.tips import random_tips
from tips_eval.task_api import RunContext, TaskResult, get_task

TINY_ARCH = dict(embed_dim=32, depth=4, patch_size=14, grid=4, reg_tokens=1, mlp_hidden=64, swiglu=False,
                 layer_scale=True, qkv_bias=True, num_heads=2)
SMALL_DPT = {"dpt_channels": 16, "dpt_post_process_channels": (8, 16, 16, 16)}
DEPTH_KEYS = {"rmse", "abs_rel", "log10", "delta1", "delta2", "delta3"}
NORMAL_KEYS = {"angular_rmse", "mean", "median", "within_11.25", "within_22.5", "within_30"}


def tiny_tips():
    return random_tips(TINY_ARCH, None, name="tiny-tips", image_size=56)


def pixels():
    return tips_eval.load_encoder("raw-pixels", image_size=56)


def make_ctx(tmp_path, **kw) -> RunContext:
    return RunContext(cache_dir=tmp_path / "cache", out_dir=tmp_path / "out", progress=False, batch_size=8,
                      num_workers=0, **kw)


def run(task: str, enc, data, ctx, **params) -> TaskResult:
    spec = get_task(task)
    return spec.run(enc, data, spec.config_cls.from_dict(params), ctx)


def count_forwards(enc) -> list:
    calls = []
    inner = enc.encode_image

    def counted(pixels, *a, **kw):
        calls.append(int(pixels.shape[0]))
        return inner(pixels, *a, **kw)

    enc.encode_image = counted
    return calls


def saved(result: TaskResult) -> dict:
    with np.load(result.artifacts["predictions"], allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from tips_eval.synthetic import generate_dataset

    path = generate_dataset(tmp_path_factory.mktemp("synthetic"), 40, image_size=64, seed=0)  # 24 train, 8 test
    return {"train": open_dataset("synthetic", path, "train"), "test": open_dataset("synthetic", path, "test")}


# ------------------------------------------------------------------ real layouts
def test_segmentation_voc_layout_end_to_end(tmp_path):
    voc = make_voc(tmp_path)
    data = {"train": open_dataset("voc2012", voc, "train"), "test": open_dataset("voc2012", voc, "val")}
    r = run("semantic_segmentation", pixels(), data, make_ctx(tmp_path), steps=4, batch_size=4)
    assert r.headline == "mIoU" and set(r.metrics) == {"mIoU", "aAcc", "mAcc"}
    assert all(0.0 <= v <= 100.0 for v in r.metrics.values())
    assert list(r.info["per_class_iou"]) == list(VOC21)
    p = r.protocol
    assert (p["feature_source"], p["head"], p["inference"], p["image_size"], p["layers"]) == (
        "cached", "linear", "whole", [56, 56], [0])
    assert (p["steps"], p["batch_size"], p["lr"], p["schedule"], p["num_classes"]) == (4, 4, 1e-3, "poly", 21)
    assert p["flip"] is True and "DINOv2" in p["reference"] and not p["use_cls"]
    assert (r.info["n_train"], r.info["n_test"], r.info["steps_run"]) == (4, 4, 4)
    z = saved(r)
    assert z["images"].shape == (4, 48, 64, 3) and z["images"].dtype == np.uint8 and str(z["kind"]) == "segmentation"
    assert int(z["num_classes"]) == 21 and r.artifacts["figure"] == str(tmp_path / "out" / "predictions.png")
    assert (tmp_path / "out" / "predictions.png").is_file()
    test = data["test"]
    for i in range(4):  # the saved targets are the reader's masks, the predictions valid class maps
        assert np.array_equal(z["targets"][i], test.target(i)["mask"])
    assert z["preds"].min() >= 0 and z["preds"].max() < 21
    conf = sum(segmentation_confusion(z["preds"][i], z["targets"][i], 21) for i in range(4))
    assert mean_iou(conf)["mIoU"] == pytest.approx(r.metrics["mIoU"])  # the metric is the saved maps' metric


def test_segmentation_ade20k_tiny_tips_last4_with_cls(tmp_path):
    ade = make_ade20k(tmp_path)
    data = {"train": open_dataset("ade20k", ade, "train"), "test": open_dataset("ade20k", ade, "val")}
    r = run("semantic_segmentation", tiny_tips(), data, make_ctx(tmp_path), steps=3, n_layers=4, use_cls=True)
    assert r.protocol["layers"] == [0, 1, 2, 3] and r.protocol["use_cls"] is True
    assert len(r.info["per_class_iou"]) == 150 and list(r.info["per_class_iou"])[7] == ADE150[7]
    assert np.isfinite(list(r.metrics.values())).all()
    z = saved(r)
    assert (z["targets"] == 255).any() and z["targets"][z["targets"] != 255].max() < 150  # reduce_zero_label kept


def test_depth_nyu_mat_linear_bins_eigen_crop(tmp_path):
    root = make_nyu_mat(tmp_path, n=6)
    data = {"train": open_dataset("nyuv2", root, "train"), "test": open_dataset("nyuv2", root, "test")}
    r = run("depth", pixels(), data, make_ctx(tmp_path), steps=3, n_bins=16)
    assert r.headline == "rmse" and set(r.metrics) == DEPTH_KEYS
    p = r.protocol
    assert (p["eigen_crop"], p["max_depth"], p["min_depth"], p["n_bins"], p["head"]) == (True, 10.0, 0.001, 16,
                                                                                        "linear_bins")
    assert p["max_depth_source"] == "nyuv2 reference range" and p["use_cls"] is True and "SigLoss" in p["loss"]
    z = saved(r)
    assert str(z["kind"]) == "depth" and z["preds"].shape == z["targets"].shape == (3, 48, 64)
    assert z["preds"].min() >= 0.001 and z["preds"].max() <= 10.0
    expected = [depth_metrics(pr, t, valid=(t >= 0.001) & (t <= 10) & eigen_crop_mask(48, 64))
                for pr, t in zip(z["preds"], z["targets"])]  # the 12 m block and the hole are invalid
    for k in DEPTH_KEYS:
        assert r.metrics[k] == pytest.approx(np.mean([e[k] for e in expected]), rel=1e-5)
    aligned = run("depth", pixels(), data, make_ctx(tmp_path), steps=3, n_bins=16, align="scale_shift")
    assert aligned.protocol["align"] == "scale_shift" and aligned.metrics["rmse"] <= r.metrics["rmse"] + 1e-9
    fitted = [depth_metrics(pr, t, valid=(t >= 0.001) & (t <= 10) & eigen_crop_mask(48, 64), align="scale_shift")
              for pr, t in zip(z["preds"], z["targets"])]  # same seed, same head: only the alignment differs
    assert aligned.metrics["rmse"] == pytest.approx(np.mean([e["rmse"] for e in fitted]), rel=1e-5)


def test_normals_nyu_sync_dpt_uncertainty(tmp_path):
    root = make_nyu_sync(tmp_path, n=4)
    data = {s: open_dataset("nyuv2", root, s, normals="file") for s in ("train", "test")}
    r = run("normals", tiny_tips(), data, make_ctx(tmp_path), steps=3, **SMALL_DPT)
    assert r.headline == "angular_rmse" and set(r.metrics) == NORMAL_KEYS
    p = r.protocol
    assert (p["head"], p["normals_loss"], p["outputs"], p["layers"]) == ("dpt", "uncertainty", 4, [0, 1, 2, 3])
    assert p["dpt"]["channels"] == 16 and p["flip"] is False and "Probe3D" in p["reference"]
    z = saved(r)
    assert z["preds"].shape == z["targets"].shape == (4, 48, 64, 3)
    assert np.allclose(np.linalg.norm(z["preds"], axis=-1), 1.0, atol=1e-4)
    expected = [normal_metrics(pr, t) for pr, t in zip(z["preds"], z["targets"])]
    for k in NORMAL_KEYS:
        assert r.metrics[k] == pytest.approx(np.mean([e[k] for e in expected]), rel=1e-5)


def test_navi_depth_and_normals_object_crop(tmp_path):
    root = make_navi(tmp_path)
    data = {s: open_dataset("navi", root, s, stride=1) for s in ("train", "test")}
    enc, ctx = tiny_tips(), make_ctx(tmp_path)
    r = run("depth", enc, data, ctx, head="dpt", steps=2, n_bins=16, **SMALL_DPT)
    p = r.protocol
    assert (p["crop"], p["max_depth"], p["head"], p["eigen_crop"]) == ("object", 1.0, "dpt", False)
    assert p["loss"] == "10 x SigLoss(0.85) + 0.5 x gradient loss" and set(r.metrics) == DEPTH_KEYS
    z = saved(r)
    n, h, w = z["targets"].shape
    assert h == w < 40 and n == 4  # square object crops, smaller than the 40 x 56 frame
    full = data["test"].target(0)["valid"].mean()
    assert (z["targets"] > 0).mean() > full  # the crop is centred on the object
    normals = {s: open_dataset("navi", root, s, stride=1, normals="from_depth") for s in ("train", "test")}
    rn = run("normals", enc, normals, ctx, head="linear", steps=2, normals_loss="angular")
    assert set(rn.metrics) == NORMAL_KEYS and rn.protocol["crop"] == "object" and rn.protocol["outputs"] == 3


def test_segmentation_dpt_head(tmp_path):
    voc = make_voc(tmp_path)
    data = {"train": open_dataset("voc2012", voc, "train"), "test": open_dataset("voc2012", voc, "val")}
    r = run("semantic_segmentation", tiny_tips(), data, make_ctx(tmp_path), head="dpt", steps=2, **SMALL_DPT)
    p = r.protocol
    assert p["dpt"]["task"] == "segmentation" and p["dpt"]["num_classes"] == 21 and p["layers"] == [0, 1, 2, 3]
    assert (p["schedule"], p["lr"], p["batch_size"]) == ("cosine", 5e-4, 8) and set(r.metrics) == {"mIoU", "aAcc",
                                                                                                  "mAcc"}


def test_depth_backbone_mode_slides_and_keeps_the_eigen_crop(tmp_path):
    root = make_nyu_sync(tmp_path, n=4)
    data = {s: open_dataset("nyuv2", root, s) for s in ("train", "test")}
    r = run("depth", tiny_tips(), data, make_ctx(tmp_path), feature_source="backbone", steps=2, batch_size=2,
            n_bins=16)
    p = r.protocol
    assert (p["feature_source"], p["inference"], p["eigen_crop"], p["aug_scale"]) == ("backbone", "slide", True,
                                                                                      [1.0, 1.0])
    z = saved(r)
    expected = [depth_metrics(pr, t, valid=(t >= 0.001) & (t <= 10) & eigen_crop_mask(48, 64))
                for pr, t in zip(z["preds"], z["targets"])]
    assert r.metrics["rmse"] == pytest.approx(np.mean([e["rmse"] for e in expected]), rel=1e-5)


# ------------------------------------------------------------------ learning on synthetic scenes
def _majority_miou(train, test) -> float:
    counts = np.bincount(np.concatenate([train.target(i)["mask"].ravel() for i in range(len(train))]))
    conf = sum(segmentation_confusion(np.full_like(test.target(i)["mask"], counts.argmax()), test.target(i)["mask"],
                                      train.num_classes) for i in range(len(test)))
    return mean_iou(conf)["mIoU"]


def test_segmentation_learns_beyond_the_majority_class(tmp_path, synthetic):
    r = run("semantic_segmentation", pixels(), synthetic, make_ctx(tmp_path), steps=40, lr=1e-2)
    assert r.info["loss_last"] < 0.7 * r.info["loss_first"]
    assert r.metrics["mIoU"] > _majority_miou(synthetic["train"], synthetic["test"]) + 5.0


def test_depth_learns_beyond_the_mean_depth(tmp_path, synthetic):
    train, test = synthetic["train"], synthetic["test"]
    mean = np.concatenate([train.target(i)["depth"][train.target(i)["valid"]] for i in range(len(train))]).mean()
    const = np.mean([depth_metrics(np.full((64, 64), mean), test.target(i)["depth"], test.target(i)["valid"])["rmse"]
                     for i in range(len(test))])
    r = run("depth", pixels(), synthetic, make_ctx(tmp_path), steps=40, lr=1e-2, n_bins=32, upsample=1)
    assert r.protocol["max_depth_source"] == "max valid train depth, rounded up" and r.protocol["max_depth"] >= 10
    assert r.info["loss_last"] < 0.8 * r.info["loss_first"]
    assert r.metrics["rmse"] < 0.8 * const


def test_normals_learn_beyond_the_mean_normal(tmp_path, synthetic):
    train, test = synthetic["train"], synthetic["test"]
    n = np.concatenate([train.target(i)["normals"][train.target(i)["valid"]] for i in range(len(train))]).mean(0)
    n /= np.linalg.norm(n)
    const = [normal_metrics(np.broadcast_to(n, (64, 64, 3)).copy(), test.target(i)["normals"])
             for i in range(len(test))]
    enc = tips_eval.load_encoder("raw-pixels", image_size=64, patch_size=8)
    r = run("normals", enc, synthetic, make_ctx(tmp_path), steps=60, lr=3e-3, **SMALL_DPT)  # Probe3D DPT + loss
    assert r.protocol["normals_loss"] == "uncertainty" and r.info["loss_last"] < r.info["loss_first"] - 1.0
    for k in ("angular_rmse", "mean", "median"):
        assert r.metrics[k] < np.mean([c[k] for c in const]), k


# ------------------------------------------------------------------ feature sources and the cache
def test_cached_rerun_does_no_forward_pass_and_repeats_exactly(tmp_path):
    voc = make_voc(tmp_path)
    data = {"train": open_dataset("voc2012", voc, "train"), "test": open_dataset("voc2012", voc, "val")}
    enc = tiny_tips()
    calls = count_forwards(enc)
    first = run("semantic_segmentation", enc, data, make_ctx(tmp_path), steps=3)
    assert sum(calls) >= 4 + 4 + 4  # train, flipped train, test (plus the engine's 1-image shape probes)
    calls.clear()
    again = run("semantic_segmentation", enc, data, make_ctx(tmp_path), steps=3)
    assert not torch.are_deterministic_algorithms_enabled()  # Lightning's global flag is put back
    assert calls == [] and again.metrics == first.metrics and again.info["loss_last"] == first.info["loss_last"]


def test_backbone_mode_encodes_every_step_and_slides_at_test(tmp_path):
    voc = make_voc(tmp_path)
    data = {"train": open_dataset("voc2012", voc, "train"), "test": open_dataset("voc2012", voc, "val")}
    enc = tiny_tips()
    calls = count_forwards(enc)
    r = run("semantic_segmentation", enc, data, make_ctx(tmp_path), feature_source="backbone", steps=3, batch_size=2)
    p = r.protocol
    assert (p["feature_source"], p["inference"], p["slide_window"], p["slide_stride"]) == ("backbone", "slide", 56, 37)
    assert p["aug_scale"] == [0.5, 2.0] and p["color_jitter"] == 0.2
    # 3 training steps of 2 crops, then 4 test images of 48 x 64 -> 56 x 75: two windows each, through the cache
    assert calls[:3] == [2, 2, 2] and sum(calls[3:]) >= 8 and max(calls[3:]) == 8
    assert set(r.metrics) == {"mIoU", "aAcc", "mAcc"} and r.info["n_test"] == 4
    calls.clear()
    run("semantic_segmentation", enc, data, make_ctx(tmp_path), feature_source="backbone", steps=3, batch_size=2)
    assert calls == [2, 2, 2]  # training always encodes; the test windows come from the cache
    whole = run("semantic_segmentation", enc, data, make_ctx(tmp_path), feature_source="backbone", steps=1,
                inference="whole")
    assert whole.protocol["inference"] == "whole" and "slide_window" not in whole.protocol


def test_runner_writes_a_dense_record(tmp_path):
    from tips_eval.runner import ModelRef, run_suite
    from tips_eval.suites import Column, SuiteEntry

    voc = make_voc(tmp_path)
    entry = SuiteEntry("voc_tiny", "semantic_segmentation", "VOC tiny", "voc2012", str(voc),
                       {"train": "train", "test": "val"}, {"head": "linear", "steps": 2},
                       columns=(Column("VOC mIoU", "mIoU"),))
    ctx = RunContext(cache_dir=tmp_path / "cache", progress=False, quick=True)
    [rec] = run_suite([ModelRef("tiny-tips", {}, tiny_tips())], [entry], results_dir=tmp_path / "runs", ctx=ctx)
    assert rec["status"] == "done" and rec["headline"] == "mIoU" and rec["quick"] is True
    assert rec["protocol"]["resolved"]["feature_source"] == "cached" and rec["protocol"]["resolved"]["steps"] == 2
    assert {"predictions", "figure"} <= set(rec["artifacts"]) and rec["info"]["n_test"] == 4


def test_paper_suite_dense_entries_run_on_tiny_layouts(tmp_path):
    """The six dense entries of the built-in paper suite, as written (splits, reader options, heads), on
    tiny copies of their datasets under one data root; only the schedule is shortened."""
    from tips_eval.runner import ModelRef, run_suite

    make_voc(tmp_path)
    make_ade20k(tmp_path)
    make_nyu_mat(tmp_path / "nyuv2", n=4)
    make_navi(tmp_path)
    ids = ["voc_seg", "ade20k_seg", "nyu_depth", "navi_depth", "nyu_normals", "navi_normals"]
    ctx = RunContext(cache_dir=tmp_path / "cache", progress=False, batch_size=8, num_workers=0)
    recs = run_suite([ModelRef("tiny-tips", {}, tiny_tips())], "paper", tmp_path, entries=ids, ctx=ctx,
                     results_dir=tmp_path / "runs", params={"steps": 1, "n_bins": 8, **SMALL_DPT})
    by_id = {r["suite_entry"]: r for r in recs}
    assert sorted(by_id) == sorted(ids) and all(r["status"] == "done" for r in recs)
    assert by_id["nyu_depth"]["protocol"]["resolved"]["eigen_crop"] is True
    assert by_id["navi_depth"]["protocol"]["resolved"]["max_depth"] == 1.0
    assert by_id["navi_normals"]["protocol"]["resolved"]["crop"] == "object"
    for r in recs:
        col = r["columns"][0]["metric"]
        assert col == r["headline"] and np.isfinite(r["metrics"][col])
