"""The global tasks through the feature engine on tiny copies of each canonical layout
(ImageNet, UnED, COCO, Flickr30K, DOCCI, a Hugging Face dataset): right keys, recorded
protocol, and numbers a broken implementation would miss (class colours make every
layout separable by raw pixels)."""

from __future__ import annotations

import numpy as np
import pytest

import tips_eval
from layouts_global import (make_coco_karpathy, make_docci, make_flickr_karpathy, make_hf_imagefolder, make_imagenet,
                            make_uned)
from tips_eval.data import open_dataset
from tips_eval.model_zoo.tips import random_tips
from tips_eval.task_api import RunContext, get_task

TINY_TIPS = dict(embed_dim=32, depth=2, patch_size=14, grid=2, reg_tokens=1, mlp_hidden=64, swiglu=False,
                 layer_scale=True, qkv_bias=True, num_heads=2)
TINY_TEXT = dict(vocab_size=300, width=32, layers=1, heads=2, mlp_dim=64)


@pytest.fixture
def ctx(tmp_path):
    return RunContext(cache_dir=str(tmp_path / "cache"), progress=False, batch_size=8)


@pytest.fixture(scope="module")
def pixels():
    return tips_eval.load_encoder("raw-pixels", image_size=28)


@pytest.fixture(scope="module")
def tiny_tips():
    return random_tips(TINY_TIPS, TINY_TEXT, name="tiny-tips", image_size=28)


def run(task, encoder, data, ctx, **params):
    spec = get_task(task)
    return spec.run(encoder, data, spec.config_cls.from_dict(params), ctx)


def test_knn_on_imagenet_layout(tmp_path, pixels, ctx):
    root = make_imagenet(tmp_path / "imagenet", n_classes=3, per_class=4)
    data = {"train": open_dataset("imagenet", root, "train"), "test": open_dataset("imagenet", root, "val")}
    r = run("knn", pixels, data, ctx, ks=(1, 3, 20))
    assert r.headline == "top1" and r.metrics["top1"] == r.metrics["top1@k20"]
    assert r.metrics["top1@k1"] == 100.0  # every class has its own colour
    assert r.protocol["token"] == "mean" and r.protocol["weighting"].startswith("exp(sim/T)")
    assert r.info == {**r.info, "n_train": 12, "n_test": 12}


def test_linear_probe_on_imagenet_layout(tmp_path, pixels, ctx):
    root = make_imagenet(tmp_path / "imagenet", n_classes=3, per_class=6)
    data = {"train": open_dataset("imagenet", root, "train"), "test": open_dataset("imagenet", root, "val")}
    r = run("linear_probe", pixels, data, ctx, lrs=(0.01, 0.1, 1.0), wds=(0.0,), epochs=30, batch_size=8,
            normalize=True)
    assert r.metrics["top1"] == 100.0 and {"top5", "heldout_top1", "sweep_head_top1"} <= set(r.metrics)
    assert r.protocol["num_heads"] == 3 and r.protocol["best_lr"] in (0.01 * 8 / 256, 0.1 * 8 / 256, 1.0 * 8 / 256)


def test_linear_probe_class_count_mismatch_is_an_error(tmp_path, pixels, ctx):
    root = make_imagenet(tmp_path / "imagenet", n_classes=3, per_class=2)
    import shutil

    shutil.rmtree(sorted((root / "val").iterdir())[-1])
    data = {"train": open_dataset("imagenet", root, "train"), "test": open_dataset("imagenet", root, "val")}
    with pytest.raises(tips_eval.errors.DataError, match="3.*2|2.*3"):
        run("knn", pixels, data, ctx)


def test_uned_merged_index_with_self_matches_excluded(tmp_path, pixels, ctx):
    root = make_uned(tmp_path / "uned")
    data = {"query": open_dataset("uned", root, "test"), "index": open_dataset("uned", root, "test-index")}
    r = run("instance_retrieval", pixels, data, ctx)
    assert {f"{d}/R@1" for d in ("cars", "sop", "inshop", "inat", "met", "gldv2", "food2k", "rp2k")} <= set(r.metrics)
    per_domain = [v for k, v in r.metrics.items() if k.endswith("/R@1")]
    assert r.metrics["R@1"] == pytest.approx(np.mean(per_domain))
    assert r.info["queries_in_index"] > 0  # test->test domains: the query itself is in the index
    assert r.metrics["R@1"] == 100.0  # its same-colour sibling, not itself, is the first hit
    assert r.protocol["self_match"] == "excluded" and r.protocol["hit"] == "same label and same domain"


@pytest.mark.parametrize("layout", ["coco", "flickr30k", "docci"])
def test_image_text_retrieval_on_caption_layouts(tmp_path, tiny_tips, ctx, layout):
    make = {"coco": make_coco_karpathy, "flickr30k": make_flickr_karpathy, "docci": make_docci}[layout]
    root = make(tmp_path / layout, n_test=4)
    test = open_dataset(layout, root, "test")
    r = run("image_text_retrieval", tiny_tips, {"test": test}, ctx)
    for d in ("i2t", "t2i"):
        for k in (1, 5, 10):
            assert 0 <= r.metrics[f"{d}_R@{k}"] <= 100 and f"cls2/{d}_R@{k}" in r.metrics
    assert r.metrics["t2i_R@5"] == 100.0  # 4 images: a caption's image is always within the top 5
    assert r.protocol["token"] == "cls1" and r.info["n_captions"] == len(test.captions)


def test_zeroshot_reports_both_tips_tokens(tmp_path, tiny_tips, ctx):
    root = make_imagenet(tmp_path / "imagenet", n_classes=3, per_class=2)
    r = run("zeroshot_classification", tiny_tips, {"test": open_dataset("imagenet", root, "val")}, ctx,
            templates="simple")
    assert {"top1", "top5", "mean_per_class_recall", "cls2/top1"} <= set(r.metrics)
    assert r.metrics["top5"] == 100.0  # 3 classes
    assert r.protocol["templates"] == "simple (7)" and r.protocol["tokens_reported"] == ["cls1", "cls2"]


def test_text_features_are_cached(tmp_path, tiny_tips, ctx, monkeypatch):
    root = make_coco_karpathy(tmp_path / "coco", n_test=3)
    test = open_dataset("coco", root, "test")
    first = run("image_text_retrieval", tiny_tips, {"test": test}, ctx)
    calls = []
    monkeypatch.setattr(type(tiny_tips), "encode_text", lambda self, t: calls.append(t))
    again = run("image_text_retrieval", tiny_tips, {"test": test}, ctx)
    assert calls == [] and again.metrics == first.metrics


def test_hugging_face_source_through_knn(tmp_path, pixels, ctx):
    path = make_hf_imagefolder(tmp_path / "hf", n_classes=3, per_class=3)
    data = {"train": open_dataset("hf", path, "train"), "test": open_dataset("hf", path, "test")}
    r = run("knn", pixels, data, ctx, ks=(1,), headline_k=1)
    assert r.metrics["top1"] == 100.0
