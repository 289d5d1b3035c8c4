"""Bad input to the dense tasks fails with one clear line naming the file, item or value."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

import tips_eval
from layouts_dense import make_navi, make_nyu_mat, make_nyu_sync, make_voc
from tips_eval.data import open_dataset
from tips_eval.data.base import ListDataset
from tips_eval.errors import DataError, TipsEvalError
from tips_eval.task_api import RunContext, get_task


def pixels():
    return tips_eval.load_encoder("raw-pixels", image_size=56)


def run(task, data, tmp_path, workers=0, **params):
    spec = get_task(task)
    ctx = RunContext(cache_dir=tmp_path / "cache", progress=False, batch_size=8, num_workers=workers)
    return spec.run(pixels(), data, spec.config_cls.from_dict({"steps": 1, **params}), ctx)


def voc_data(tmp_path):
    voc = make_voc(tmp_path)
    return voc, {"train": open_dataset("voc2012", voc, "train"), "test": open_dataset("voc2012", voc, "val")}


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in e.value.message and isinstance(e.value, TipsEvalError)
    return msg


class _Seg(ListDataset):
    num_classes, ignore_index, class_names = 3, 255, ("a", "b", "c")


def _seg_list(masks, name="toy"):
    imgs = [Image.fromarray(np.full(m.shape + (3,), 80, np.uint8)) for m in masks]
    return _Seg(imgs, [{"mask": m} for m in masks], name=name, split="train")


def test_mask_image_size_mismatch_surfaces_the_readers_error(tmp_path):
    voc, data = voc_data(tmp_path)
    ids = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    mask = voc / "SegmentationClass" / f"{ids[1]}.png"
    with Image.open(mask) as m:
        m.resize((30, 20)).save(mask)  # palette kept, size wrong
    for source, workers in (("cached", 0), ("backbone", 0), ("backbone", 1)):  # 1: raised in a loader worker
        with pytest.raises(DataError) as e:
            run("semantic_segmentation", data, tmp_path, workers, feature_source=source)
        msg = one_line(e)
        assert str(mask) in msg and "30x20 (WxH)" in msg and "64x48" in msg


def test_label_values_outside_the_class_range(tmp_path):
    good = np.zeros((28, 28), np.int64)
    bad = good.copy()
    bad[5, 5] = 7
    data = {"train": _seg_list([good, bad]), "test": _seg_list([good])}
    with pytest.raises(DataError) as e:
        run("semantic_segmentation", data, tmp_path)
    msg = one_line(e)
    assert "toy/train item toy/train/1" in msg and "label value 7 outside 0..2" in msg and "255" in msg
    voc, vdata = voc_data(tmp_path / "voc")  # the VOC reader's own check names the file
    ids = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    png = voc / "SegmentationClass" / f"{ids[0]}.png"
    with Image.open(png) as m:
        arr = np.asarray(m).copy()
        pal = m.getpalette()
    arr[0, 0] = 40
    out = Image.fromarray(arr, "P")
    out.putpalette(pal)
    out.save(png)
    with pytest.raises(DataError, match=r"values 40 outside 0\.\.20") as e:
        run("semantic_segmentation", vdata, tmp_path / "voc")
    assert str(png) in one_line(e)


def test_depth_in_millimetres_warns_then_fails_clearly(tmp_path):
    root = make_nyu_mat(tmp_path, n=4)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "r+") as f:
        f["rawDepths"][...] = f["rawDepths"][...] * 1000.0  # metres written as millimetres
    data = {s: open_dataset("nyuv2", root, s) for s in ("train", "test")}
    with pytest.warns(UserWarning, match="millimetres"), pytest.raises(DataError) as e:
        run("depth", data, tmp_path, n_bins=8)
    msg = one_line(e)
    assert "nyuv2/train" in msg and "no valid depth pixel" in msg and "(0, 10] m" in msg
    assert "metres" in e.value.hint


def test_normals_task_on_a_dataset_without_normals(tmp_path):
    root = make_nyu_sync(tmp_path, n=2)
    data = {s: open_dataset("nyuv2", root, s) for s in ("train", "test")}  # opened without normals=
    with pytest.raises(DataError) as e:
        run("normals", data, tmp_path)
    msg = one_line(e)
    assert "normals task needs a 'normals' target" in msg and "nyuv2/train" in msg and "depth" in msg
    assert "normals='file'" in e.value.hint
    navi = make_navi(tmp_path)
    with pytest.raises(DataError, match="navi/train .*gives none"):
        run("normals", {s: open_dataset("navi", navi, s) for s in ("train", "test")}, tmp_path)


def test_depth_task_needs_depth_and_segmentation_needs_classes(tmp_path):
    _, data = voc_data(tmp_path)
    with pytest.raises(DataError, match="depth task needs a 'depth' target.*voc2012/train"):
        run("depth", data, tmp_path)
    plain = ListDataset([Image.new("RGB", (28, 28))], [{"mask": np.zeros((28, 28), np.int64)}], name="plain")
    with pytest.raises(DataError, match="plain/test has no num_classes"):
        run("semantic_segmentation", {"train": plain, "test": plain}, tmp_path)
    other = _seg_list([np.zeros((28, 28), np.int64)])
    other.num_classes = 5
    with pytest.raises(DataError, match="has 3 classes but test split toy/train has 5"):
        run("semantic_segmentation", {"train": _seg_list([np.zeros((28, 28), np.int64)]), "test": other}, tmp_path)


@pytest.mark.parametrize("task,params,match", [
    ("semantic_segmentation", {"head": "linear_bins"}, "unknown head 'linear_bins'; expected one of linear, dpt"),
    ("depth", {"head": "linear"}, "unknown head 'linear'; expected one of linear_bins, dpt"),
    ("semantic_segmentation", {"feature_source": "disk"}, "feature_source='disk'"),
    ("semantic_segmentation", {"inference": "tiles"}, "inference='tiles'"),
    ("semantic_segmentation", {"crop": "centre"}, "crop='centre'"),
    ("semantic_segmentation", {"schedule": "step"}, "schedule='step'"),
    ("normals", {"normals_loss": "l2"}, "normals_loss='l2'"),
    ("semantic_segmentation", {"n_layers": 2}, "n_layers=2; the encoder has 1 blocks"),
])
def test_bad_protocol_parameters(tmp_path, task, params, match):
    _, data = voc_data(tmp_path)
    with pytest.raises(DataError, match=match):
        run(task, data, tmp_path, **params)


def test_unknown_parameter_is_refused():
    with pytest.raises(DataError, match="unknown protocol parameter.*n_bin"):
        get_task("depth").config_cls.from_dict({"n_bin": 3})


def test_unreadable_images_are_dropped_when_asked(tmp_path):
    voc, data = voc_data(tmp_path)
    train_ids = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    val_ids = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    for i in (train_ids[0], val_ids[2]):
        (voc / "JPEGImages" / f"{i}.jpg").write_bytes(b"not a jpeg")
    spec = get_task("semantic_segmentation")
    for source in ("cached", "backbone"):
        ctx = RunContext(cache_dir=tmp_path / "cache", progress=False, batch_size=8, num_workers=0,
                         skip_bad_images=True)
        r = spec.run(pixels(), data, spec.config_cls.from_dict({"steps": 2, "feature_source": source}), ctx)
        assert (r.info["n_test"], r.info["bad_test_images"]) == (3, 1)
        if source == "cached":
            assert (r.info["n_train"], r.info["bad_train_images"]) == (3, 1)
        strict = RunContext(cache_dir=tmp_path / "strict", progress=False, num_workers=0)
        with pytest.raises(TipsEvalError, match="cannot decode image .*JPEGImages"):
            spec.run(pixels(), data, spec.config_cls.from_dict({"steps": 2, "feature_source": source}), strict)
