"""Readers for the global tasks: ImageNet, UnED, COCO/Flickr30K (Karpathy), DOCCI and the HF source."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from layouts_global import (class_colour, make_coco_karpathy, make_docci, make_flickr_karpathy, make_hf_imagefolder,
                            make_imagenet, make_uned, write_image)
from tips_eval.data import open_dataset
from tips_eval.data.imagenet import check_same_classes, standard_wnids
from tips_eval.data.uned import DOMAINS, uned_query_index
from tips_eval.errors import BadImageError, DataError, DatasetLayoutError, UnknownNameError


def _close(pixel, colour, tol=20):
    return all(abs(int(p) - int(c)) <= tol for p, c in zip(pixel, colour))


# ---------------------------------------------------------------- ImageNet

def test_imagenet_folder_layout(tmp_path):
    root = make_imagenet(tmp_path / "in", n_classes=3, per_class=4)
    (root / "val" / standard_wnids()[0] / "README.txt").write_text("not an image")
    (root / "val" / standard_wnids()[0] / ".DS_Store").write_bytes(b"\0")
    write_image(root / "val" / standard_wnids()[1] / "lower.jpeg", class_colour(1))
    ds = open_dataset("imagenet", root, "val")
    assert len(ds) == 13 and ds.split == "val"
    assert ds.classes == standard_wnids()[:3]
    assert ds.class_names == ["tench", "goldfish", "great white shark"]
    assert np.bincount(ds.labels).tolist() == [4, 5, 4]
    for i in range(len(ds)):
        wnid = ds.image_key(i).split("/")[1]
        assert ds.image_key(i).startswith("val/") and ds.target(i) == {"label": ds.classes.index(wnid)}
    item = ds[len(ds) - 1]
    assert item["image"].mode == "RGB" and _close(item["image"].getpixel((5, 5)), class_colour(2))
    assert len(open_dataset("imagenet", root, "train")) == 12
    assert open_dataset("imagenet", root, "validation").fingerprint() == ds.fingerprint()


def test_imagenet_labels_follow_sorted_wnids_and_standard_names(tmp_path):
    std = standard_wnids()
    picked = [std[900], std[5], std[1]]  # written out of order
    root = make_imagenet(tmp_path / "in", wnids=picked, per_class=1, splits=("val",))
    ds = open_dataset("imagenet", root, "val")
    assert ds.classes == sorted(picked)
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    assert ds.class_names == [IMAGENET_CLASSNAMES[i] for i in (1, 5, 900)]
    assert ds.labels.tolist() == [0, 1, 2]


def test_imagenet_class_names_fallback_and_argument(tmp_path):
    root = make_imagenet(tmp_path / "in", wnids=["cat", "dog"], per_class=1, splits=("val",))
    with pytest.warns(UserWarning, match="not an ILSVRC-2012 wnid"):
        ds = open_dataset("imagenet", root, "val")
    assert ds.class_names == ["cat", "dog"] and ds.class_names_source == "wnid"
    ds = open_dataset("imagenet", root, "val", class_names={"cat": "a cat", "dog": "a dog"})
    assert ds.class_names == ["a cat", "a dog"] and ds.class_names_source == "argument"
    with pytest.raises(DataError, match="2 classes"):
        open_dataset("imagenet", root, "val", class_names=["only one"])


def test_imagenet_per_class_is_deterministic(tmp_path):
    root = make_imagenet(tmp_path / "in", n_classes=2, per_class=6, splits=("train",))
    a = open_dataset("imagenet", root, "train", per_class=2)
    b = open_dataset("imagenet", root, "train", per_class=2)
    assert len(a) == 4 and np.bincount(a.labels).tolist() == [2, 2]
    assert a.paths == b.paths and a.fingerprint() == b.fingerprint()
    picks = {tuple(open_dataset("imagenet", root, "train", per_class=2, seed=s).paths) for s in range(6)}
    assert len(picks) > 1  # the seed matters: not simply the first n files
    assert a.fingerprint() != open_dataset("imagenet", root, "train").fingerprint()
    with pytest.raises(DataError, match="per_class"):
        open_dataset("imagenet", root, "train", per_class=0)


def test_imagenet_flat_val_with_solution_csv(tmp_path):
    root = tmp_path / "kaggle"
    split_dir = root / "ILSVRC" / "Data" / "CLS-LOC"
    std = standard_wnids()
    rows = ["ImageId,PredictionString"]
    for k, c in enumerate([2, 0, 2, 1]):
        name = f"ILSVRC2012_val_{k + 1:08d}"
        write_image(split_dir / "val" / f"{name}.JPEG", class_colour(c))
        rows.append(f"{name},{std[c]} 10 20 30 40 {std[c]} 1 2 3 4")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    ds = open_dataset("imagenet", split_dir, "val")
    assert len(ds) == 4 and ds.classes == std[:3]
    by_key = {ds.image_key(i): int(ds.labels[i]) for i in range(len(ds))}
    assert by_key == {"val/ILSVRC2012_val_00000001.JPEG": 2, "val/ILSVRC2012_val_00000002.JPEG": 0,
                      "val/ILSVRC2012_val_00000003.JPEG": 2, "val/ILSVRC2012_val_00000004.JPEG": 1}
    i = ds.paths.index("val/ILSVRC2012_val_00000004.JPEG")
    assert _close(ds.load_image(i).getpixel((3, 3)), class_colour(1))
    (root / "LOC_val_solution.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="4 images but no class folders") as e:
        open_dataset("imagenet", split_dir, "val")
    assert "valprep.sh" in str(e.value)


def test_imagenet_wrong_level_roots_suggest_the_right_one(tmp_path):
    make_imagenet(tmp_path / "ILSVRC2012", n_classes=2, per_class=1)
    with pytest.raises(DatasetLayoutError, match="has no val/ folder") as e:
        open_dataset("imagenet", tmp_path, "val")
    assert f"did you mean {tmp_path / 'ILSVRC2012'}?" in str(e.value)
    with pytest.raises(DatasetLayoutError, match="holds class folders itself") as e:
        open_dataset("imagenet", tmp_path / "ILSVRC2012" / "train", "train")
    assert f"did you mean {tmp_path / 'ILSVRC2012'}?" in str(e.value)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        open_dataset("imagenet", tmp_path / "nowhere", "val")
    with pytest.raises(DataError, match="splits train and val"):
        open_dataset("imagenet", tmp_path / "ILSVRC2012", "test")


def test_imagenet_class_mismatch_empty_split_and_bad_image(tmp_path):
    root = make_imagenet(tmp_path / "in", n_classes=3, per_class=1)
    shutil.rmtree(root / "val" / standard_wnids()[2])
    train, val = open_dataset("imagenet", root, "train"), open_dataset("imagenet", root, "val")
    with pytest.raises(DataError, match="train has 3 classes but val has 2") as e:
        check_same_classes(train, val)
    assert standard_wnids()[2] in str(e.value)
    check_same_classes(train, train)
    empty = tmp_path / "empty"
    (empty / "val" / "n01440764").mkdir(parents=True)
    (empty / "val" / "n01440764" / "notes.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match="no images"):
        open_dataset("imagenet", empty, "val")
    bad = root / "val" / standard_wnids()[0] / "truncated.JPEG"
    bad.write_bytes((root / "train" / standard_wnids()[0]).joinpath(
        sorted(p.name for p in (root / "train" / standard_wnids()[0]).iterdir())[0]).read_bytes()[:60])
    ds = open_dataset("imagenet", root, "val")
    with pytest.raises(BadImageError, match="truncated.JPEG"):
        ds.load_image(ds.paths.index(f"val/{standard_wnids()[0]}/truncated.JPEG"))


# ---------------------------------------------------------------- UnED

def test_uned_split_over_present_domains(tmp_path):
    root = make_uned(tmp_path / "data", n_classes=2, per_class=2)
    ds = open_dataset("uned", root, "test")
    assert len(ds) == 8 * 4 and ds.domain_names == list(DOMAINS)
    assert DOMAINS == ("cars", "sop", "inshop", "inat", "met", "gldv2", "food2k", "rp2k")
    for d, name in enumerate(DOMAINS):
        sl = ds.domain_slice(name)
        assert (ds.domains[sl] == d).all() and ds.target(sl.start)["domain_name"] == name
    i = ds.domain_slice("food2k").start + 3
    assert ds.target(i) == {"label": 1, "labels": [1], "domain": 6, "domain_name": "food2k"}
    assert ds.image_key(i) == "images/food2k/Food2k_complete/test_c1/001.jpg"
    assert _close(ds.load_image(i).getpixel((4, 4)), class_colour(61))
    g = ds.domain_slice("gldv2").start
    assert ds.target(g)["labels"] == [0, 99] and ds.label[g] == 0 and ds.is_multilabel
    index = open_dataset("uned", root, "index")
    assert index.domain_names == ["inshop", "met", "gldv2"] and len(index) == 3 * 6
    sub = open_dataset("uned", root, "train", domains=["rp2k", 0])
    assert sub.domain_names == ["cars", "rp2k"] and len(sub) == 8
    with pytest.raises(UnknownNameError, match="stanford"):
        open_dataset("uned", root, "test", domains=["stanford"])
    with pytest.raises(DatasetLayoutError, match="cars/index.json"):
        open_dataset("uned", root, "index", domains=["cars"])


def test_uned_query_index_protocol(tmp_path):
    root = make_uned(tmp_path / "data", n_classes=2, per_class=2)
    query, index = uned_query_index(root)
    assert len(query) == 32 and index.domain_names == list(DOMAINS)  # merged over all 8 domains
    assert index.domain_splits == {d: ("index" if d in ("inshop", "met", "gldv2") else "test") for d in DOMAINS}
    assert len(index) == 5 * 4 + 3 * 6
    for name in DOMAINS:
        qs = query.domain_slice(name)
        if name in ("inshop", "met", "gldv2"):
            assert (query.index_position[qs] == -1).all() and not query.in_index[qs].any()
        else:  # query == index: each query's own image sits in the index and must be dropped
            for i in range(qs.start, qs.stop):
                j = query.index_position[i]
                assert query.image_key(i) == index.image_key(j) and index.domains[j] == query.domains[i]
    # val protocol: met searches small_index, the others search val itself
    q_val, i_val = uned_query_index(root, split="val", domains=["met", "cars"])
    assert i_val.domain_splits == {"cars": "val", "met": "small_index"} and len(i_val) == 4 + 4
    # a domain whose index also holds a query image: flagged by path, not by split name
    info = root / "info_files" / "inshop"
    idx = json.loads((info / "index.json").read_text())
    idx.append(json.loads((info / "test.json").read_text())[1])
    (info / "index.json").write_text(json.dumps(idx))
    query, index = uned_query_index(root)
    k = query.domain_slice("inshop").start + 1
    assert query.in_index[k] and index.image_key(query.index_position[k]) == query.image_key(k)
    assert query.in_index.sum() == 5 * 4 + 1


def test_uned_errors(tmp_path):
    root = make_uned(tmp_path / "data", domains=["cars", "met"], n_classes=1, per_class=1)
    with pytest.raises(DatasetLayoutError, match="missing info files") as e:
        uned_query_index(root)
    assert "domains=" in str(e.value)
    with pytest.raises(DatasetLayoutError, match="has no info_files/ folder") as e:
        open_dataset("uned", tmp_path, "test")
    assert f"did you mean {root}?" in str(e.value)
    with pytest.raises(DatasetLayoutError, match="is the info_files/ folder") as e:
        open_dataset("uned", root / "info_files", "test")
    assert f"did you mean {root}?" in str(e.value)
    (root / "images" / "cars" / "car_ims" / "test_c0" / "000.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match=r"UnED cars/test: 1 of 1 images .* missing, first .*test_c0/000.jpg"):
        open_dataset("uned", root, "test")
    assert len(open_dataset("uned", root, "test", check_files=False)) == 2
    (root / "info_files" / "met" / "val.json").write_text(json.dumps([{"path": "met/MET/x.jpg"}]))
    with pytest.raises(DataError, match=r"met/val.json: entry 0 .*class_id"):
        open_dataset("uned", root, "val", domains=["met"])
    with pytest.raises(DataError, match="splits train, val, test"):
        open_dataset("uned", root, "query")


def test_uned_rp2k_escaped_file_names(tmp_path):
    root = make_uned(tmp_path / "data", domains=["rp2k"], n_classes=1, per_class=1, splits=("test",))
    rel = "rp2k/all/test/可口可乐/é.jpg"
    escaped = "rp2k/all/test/#U53ef#U53e3#U53ef#U4e50/#U00e9.jpg"
    write_image(root / "images" / escaped, class_colour(7))
    (root / "info_files" / "rp2k" / "test.json").write_text(json.dumps([{"path": rel, "class_id": 3}]))
    for check in (True, False):
        ds = open_dataset("uned", root, "test", check_files=check)
        assert ds.image_key(0) == "images/" + rel
        assert _close(ds.load_image(0).getpixel((2, 2)), class_colour(7))


# ---------------------------------------------------------------- COCO / Flickr30K / DOCCI

def test_coco_karpathy(tmp_path):
    root = make_coco_karpathy(tmp_path / "coco", n_test=3, n_val=2, n_train=2, n_restval=2)
    ds = open_dataset("coco", root, "test")
    assert len(ds) == 3 and ds.name == "coco"
    assert ds.image_key(0) == "val2014/COCO_val2014_000000500000.jpg"
    assert [len(ds.target(i)["captions"]) for i in range(3)] == [5, 6, 5]
    assert len(ds.captions) == 16 and ds.text_to_image.tolist() == [0] * 5 + [1] * 6 + [2] * 5
    for j, c in enumerate(ds.captions):
        i = ds.text_to_image[j]
        assert c in ds.target(i)["captions"] and c == c.strip() and c.startswith(f"Image {i} ")
        assert ds.image_to_text[i][0] <= j < ds.image_to_text[i][1]
    assert ds.image_ids == [500000, 500001, 500002]
    assert _close(ds.load_image(2).getpixel((1, 1)), class_colour(2))
    train = open_dataset("coco", root, "train+restval")
    assert len(train) == 4 and {p.split("/")[0] for p in train.paths} == {"train2014", "val2014"}
    with pytest.raises(DataError, match=r"no split 'testing'.*restval \(2\).*test \(3\)"):
        open_dataset("coco", root, "testing")


def test_coco_errors(tmp_path):
    root = make_coco_karpathy(tmp_path / "coco", n_test=3)
    with pytest.raises(DatasetLayoutError, match="dataset_coco.json not found") as e:
        open_dataset("coco", root / "val2014", "test")
    assert f"did you mean {root}?" in str(e.value)
    with pytest.raises(DatasetLayoutError, match="dataset_coco.json not found") as e:
        open_dataset("coco", tmp_path, "test")
    assert f"did you mean {root}?" in str(e.value)
    (root / "val2014" / "COCO_val2014_000000500001.jpg").unlink()
    (root / "val2014" / "COCO_val2014_000000500002.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match=r"coco test: 2 of 3 images .* missing, first .*000000500001.jpg"):
        open_dataset("coco", root, "test")
    (root / "dataset_coco.json").write_text("{not json")
    with pytest.raises(DataError, match="not a Karpathy caption file"):
        open_dataset("coco", root, "test")


def test_flickr30k_karpathy(tmp_path):
    root = make_flickr_karpathy(tmp_path / "flickr", n_test=3, n_val=1)
    ds = open_dataset("flickr30k", root, "test")
    assert len(ds) == 3 and ds.image_key(1) == "flickr30k-images/1000001.jpg"
    assert len(ds.captions) == 16 and ds.text_to_image[-1] == 2
    assert _close(ds.load_image(0).getpixel((0, 0)), class_colour(40))
    assert len(open_dataset("flickr30k", root, "val")) == 1
    with pytest.raises(DatasetLayoutError, match="not found") as e:
        open_dataset("flickr30k", root / "flickr30k-images", "test")
    assert f"did you mean {root}?" in str(e.value)
    kaggle = make_flickr_karpathy(tmp_path / "kaggle", image_dir="flickr30k_images/flickr30k_images")
    assert open_dataset("flickr30k", kaggle, "test").image_key(0) == "flickr30k_images/flickr30k_images/1000000.jpg"


def test_docci(tmp_path):
    root = make_docci(tmp_path / "docci", n_test=3, n_train=2)
    ds = open_dataset("docci", root, "test")
    assert len(ds) == 3 and ds.image_key(0) == "images/test_00000.jpg" and ds.image_ids[2] == "test_00002"
    assert all(len(ds.target(i)["captions"]) == 1 for i in range(3)) and ds.text_to_image.tolist() == [0, 1, 2]
    assert len(ds.captions[0].split()) > 64  # long: tokenizers must cut them
    assert _close(ds.load_image(0).getpixel((2, 2)), class_colour(82))
    assert len(open_dataset("docci", root, "train")) == 2
    no_field = make_docci(tmp_path / "plain", n_test=2, image_file=False)  # file name from example_id
    assert open_dataset("docci", no_field, "test").image_key(1) == "images/test_00001.jpg"
    with pytest.raises(DataError, match=r"no split 'dev'.*qual_dev \(1\)"):
        open_dataset("docci", root, "dev")
    with pytest.raises(DatasetLayoutError, match="jsonlines not found") as e:
        open_dataset("docci", root / "images", "test")
    assert f"did you mean {root}?" in str(e.value)
    (root / "images" / "test_00001.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match=r"docci test: 1 of 3 images .* first .*test_00001.jpg"):
        open_dataset("docci", root, "test")
    with open(root / "docci_descriptions.jsonlines", "a") as f:
        f.write('{"example_id": "x"}\n')
    with pytest.raises(DataError, match=r"jsonlines:7: not a DOCCI record"):
        open_dataset("docci", root, "test")


# ---------------------------------------------------------------- Hugging Face source

def test_hf_source_save_to_disk(tmp_path):
    path = make_hf_imagefolder(tmp_path / "hfds", n_classes=3, per_class=2, captions=True)
    ds = open_dataset("hf", path, "train")
    assert len(ds) == 6 and ds.classes == ["class_0", "class_1", "class_2"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2] and ds.captions is None
    item = ds[4]
    assert item["label"] == 2 and item["image"].mode == "RGB" and _close(item["image"].getpixel((3, 3)), class_colour(2))
    assert ds.fingerprint() != open_dataset("hf", path, "test").fingerprint()
    caps = open_dataset("hf", path, "test", caption_column="caption")
    assert len(caps.captions) == 12 and caps.text_to_image.tolist() == np.repeat(np.arange(6), 2).tolist()
    assert caps.target(1)["captions"] == ["class 0 image 1", f"colour {class_colour(0)}"]
    with pytest.raises(DataError, match=r"no split 'validation'; it has train, test"):
        open_dataset("hf", path, "validation")
    with pytest.raises(DataError, match=r"no column 'txt' \(caption_column\); columns: image, label, caption"):
        open_dataset("hf", path, "train", caption_column="txt")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        open_dataset("hf", tmp_path / "nothing", "train")


def test_hf_single_dataset_parquet_and_imagenet_source(tmp_path):
    single = make_hf_imagefolder(tmp_path / "single", splits=("val",), as_dict=False)
    assert len(open_dataset("hf", single, "val")) == 6
    import datasets

    parquet_dir = tmp_path / "pq" / "data"
    parquet_dir.mkdir(parents=True)
    datasets.load_from_disk(str(single)).to_parquet(str(parquet_dir / "validation-00000-of-00001.parquet"))
    pq = open_dataset("hf", tmp_path / "pq", "validation", cache_dir=str(tmp_path / "cache"))
    assert len(pq) == 6 and pq.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert _close(pq.load_image(2).getpixel((0, 0)), class_colour(1))
    inet = open_dataset("imagenet", single, "val", source="hf")
    assert inet.name == "imagenet" and inet.target(5) == {"label": 2}
    named = open_dataset("imagenet", single, "val", source="hf", class_names=["a", "b", "c"])
    assert named.class_names == ["a", "b", "c"]
