"""Stored synthetic datasets: written once and atomically, reused, and read back exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tips_eval.data import open_dataset
from tips_eval.errors import DataError, DatasetLayoutError, UnknownNameError
from tips_eval.synthetic import SEMANTIC_CLASSES, SHAPES, generate_dataset, read_manifest, render_scene
from tips_eval.synthetic import store

N, SIZE = 10, 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return out, generate_dataset(out, N, image_size=SIZE, seed=0)


def _no_render(*args, **kwargs):
    raise AssertionError("render_scene called: the stored dataset was not reused")


def test_layout_manifest_and_split_rule(dataset):
    out, path = dataset
    manifest = read_manifest(path)
    assert manifest["params"] == {"generator_version": "1", "n_scenes": N, "image_size": SIZE, "seed": 0}
    assert manifest["splits"] == {"train": 6, "val": 2, "test": 2}
    assert manifest["semantic_classes"] == list(SEMANTIC_CLASSES) and "depth" in manifest["conventions"]
    assert [p.name for p in out.iterdir()] == [path.name]  # no temp folders left behind
    from datasets import load_from_disk

    dd = load_from_disk(str(path))
    assert list(dd["train"]["scene_id"]) == [0, 1, 2, 5, 6, 7]
    assert list(dd["val"]["scene_id"]) == [3, 8] and list(dd["test"]["scene_id"]) == [4, 9]


def test_rows_equal_a_fresh_render(dataset):
    from datasets import load_from_disk

    _, path = dataset
    row = load_from_disk(str(path))["val"].with_format("numpy")[1]
    s = render_scene(store.scene_seed(0, 8), SIZE)
    for suffix, v in zip(("", "_view2"), s["views"]):
        assert np.array_equal(row[f"image{suffix}"], v["rgb"])  # PNG is lossless
        assert np.array_equal(row[f"depth{suffix}"], v["depth"])
        assert np.array_equal(row[f"semantic{suffix}"], v["semantic"])
        assert np.array_equal(row[f"instance{suffix}"], v["instance"])
        assert np.abs(row[f"normals{suffix}"] - v["normals"]).max() < 1e-3  # float16
        assert row[f"caption{suffix}"] == v["caption"] and row[f"label{suffix}"] == v["label"]
    assert np.allclose(row["pose_view2"], s["pose_view2"], atol=1e-5)
    assert json.loads(str(row["scene"]))["objects"] == s["objects"]


def test_second_call_reuses_without_rendering(dataset, monkeypatch):
    out, path = dataset
    stamp = (path / store.MANIFEST).stat().st_mtime_ns
    monkeypatch.setattr(store.views, "render_scene", _no_render)
    assert generate_dataset(out, N, image_size=SIZE, seed=0) == path
    assert (path / store.MANIFEST).stat().st_mtime_ns == stamp


def test_different_params_get_their_own_folder(tmp_path, dataset):
    _, path = dataset
    other = generate_dataset(tmp_path, 5, image_size=16, seed=1)
    assert other.name != path.name and read_manifest(other)["params"]["seed"] == 1
    a = open_dataset("synthetic", path, "train")
    b = open_dataset("synthetic", other, "train")
    assert a.image_key(0) != b.image_key(0) and a.fingerprint() != b.fingerprint()


def test_interrupted_generation_is_never_taken_as_done(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = store.views.render_scene

    def flaky(seed, image_size):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(seed, image_size)

    monkeypatch.setattr(store.views, "render_scene", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path, 5, image_size=16)
    assert list(tmp_path.iterdir()) == []  # neither a final folder nor a temp folder
    with pytest.raises(DatasetLayoutError, match="no synthetic dataset"):
        open_dataset("synthetic", tmp_path, "train")
    monkeypatch.setattr(store.views, "render_scene", real)
    path = generate_dataset(tmp_path, 5, image_size=16)
    assert read_manifest(path)["splits"]["train"] == 3 and calls["n"] == 4


def test_half_written_folder_and_stale_temp_are_replaced(tmp_path):
    params = store.dataset_params(5, 16, 0)
    final = store.dataset_dir(tmp_path, params)
    (final / "train").mkdir(parents=True)  # e.g. copied without its manifest
    (final / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(DatasetLayoutError, match="incomplete"):
        open_dataset("synthetic", final, "train")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".{final.name}.tmp-{int(dead.stdout)}-abcd1234"
    stale.mkdir()
    assert generate_dataset(tmp_path, 5, image_size=16) == final
    assert read_manifest(final)["params"] == params and not stale.exists()
    assert len(open_dataset("synthetic", final, "train")) == 3


def test_reader_targets_dtypes_and_shapes(dataset):
    _, path = dataset
    ds = open_dataset("synthetic", path, "train")
    assert len(ds) == 6 and ds.class_names == SEMANTIC_CLASSES and ds.num_classes == 7
    assert ds.label_names == SHAPES and ds.num_labels == 5
    item = ds[1]
    assert isinstance(item["image"], Image.Image) and item["image"].size == (SIZE, SIZE) and item["image"].mode == "RGB"
    assert item["mask"].dtype == np.int64 and item["mask"].shape == (SIZE, SIZE)
    assert 0 <= item["mask"].min() and item["mask"].max() < ds.num_classes
    assert item["depth"].dtype == np.float32 and item["valid"].dtype == bool
    assert np.array_equal(item["valid"], item["depth"] > 0) and np.array_equal(item["valid"], item["mask"] > 0)
    assert item["normals"].dtype == np.float32 and item["normals"].shape == (SIZE, SIZE, 3)
    assert np.allclose(np.linalg.norm(item["normals"][item["valid"]], axis=-1), 1, atol=1e-5)
    assert isinstance(item["label"], int) and 0 <= item["label"] < ds.num_labels
    assert item["instance"] == 1 and item["domain"] == 0
    assert isinstance(item["captions"], list) and SHAPES[item["label"]] in item["captions"][0]
    assert item["instance_mask"].dtype == np.int64 and item["K"].shape == (3, 3)
    s = render_scene(store.scene_seed(0, 1), SIZE)
    assert np.array_equal(np.asarray(item["image"]), s["views"][0]["rgb"])
    assert np.array_equal(item["depth"], s["views"][0]["depth"])


def test_reader_views_and_retrieval_instances(dataset):
    _, path = dataset
    v2 = open_dataset("synthetic", path, "test", view=2)
    both = open_dataset("synthetic", path, "test", view="both")
    s = render_scene(store.scene_seed(0, 4), SIZE)
    assert np.array_equal(np.asarray(v2.load_image(0)), s["views"][1]["rgb"])
    assert v2.target(0)["captions"] == [s["views"][1]["caption"]]
    assert len(both) == 4 and [both.target(i)["instance"] for i in range(4)] == [4, 4, 9, 9]
    assert np.array_equal(np.asarray(both.load_image(1)), s["views"][1]["rgb"])
    assert len({both.image_key(i) for i in range(4)}) == 4
    assert both.describe()["view"] == "both"
    with pytest.raises(IndexError):
        both.target(4)


def test_reader_errors_name_the_problem(dataset, tmp_path):
    out, path = dataset
    assert len(open_dataset("synthetic", out, "val")) == 2  # the parent of a single dataset works too
    with pytest.raises(DatasetLayoutError, match="no synthetic dataset"):
        open_dataset("synthetic", tmp_path / "missing", "train")
    with pytest.raises(UnknownNameError, match="unknown split 'dev'"):
        open_dataset("synthetic", path, "dev")
    with pytest.raises(DataError, match="view=3"):
        open_dataset("synthetic", path, "train", view=3)
    with pytest.raises(DataError, match="n_scenes=3"):
        generate_dataset(tmp_path, 3)


@pytest.mark.slow
def test_num_proc_gives_identical_rows(tmp_path, dataset):
    from datasets import load_from_disk

    _, path = dataset
    par = generate_dataset(tmp_path, N, image_size=SIZE, seed=0, num_proc=2)
    a, b = load_from_disk(str(path)), load_from_disk(str(par))
    for split in ("train", "val", "test"):
        ra, rb = a[split].with_format("numpy")[:], b[split].with_format("numpy")[:]
        for key in ("scene_id", "image", "depth", "normals_view2", "caption_view2"):
            assert np.array_equal(ra[key], rb[key]), (split, key)
    assert os.path.basename(par) == path.name
