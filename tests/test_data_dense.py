"""Dense readers (VOC, ADE20K, Pascal Context, NYUv2, NAVI) and depth/normal geometry,
on tiny copies of each real layout built by ``layouts_dense``."""

from __future__ import annotations

import os
import pickle
import shutil
import warnings

import h5py
import numpy as np
import pytest
from PIL import Image

from layouts_dense import (NAVI_FOCAL, NAVI_SIZE, PLANE_NORMAL, RECT, RECT_CLASSES, SIZE, _image, _nyu_depths,
                           _ring, make_ade20k, make_navi, make_nyu_mat, make_nyu_sync, make_pascal_context,
                           make_voc, nyu_plane_depth)
from tips_eval.data import load_readers, open_dataset
from tips_eval.data.class_names import ADE150, PC59, PC60, VOC21, voc_palette
from tips_eval.data.geometry import (backproject, crop_intrinsics, decode_normals, encode_normals_png, intrinsics,
                                     normals_from_depth, resize_nearest, scale_intrinsics)
from tips_eval.data.navi import decode_navi_depth
from tips_eval.data.nyu import convert_probe3d_pkl, eigen_crop_mask, nyu_intrinsics
from tips_eval.errors import DataError, DatasetLayoutError


def angle_deg(a, b):
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1, 1)))


def expected_voc_mask(i):
    m = np.zeros(SIZE, np.int64)
    m[RECT] = RECT_CLASSES[i % 3]
    m[_ring()] = 255
    return m


# ---------------------------------------------------------------- class names / registry
def test_class_names_and_palette():
    assert (len(VOC21), len(ADE150), len(PC59), len(PC60)) == (21, 150, 59, 60)
    assert len(set(ADE150)) == 150 and all(n == n.strip() for n in ADE150) and ADE150[7] == "bed"
    assert PC60[0] == "background" and PC60[1:] == PC59 and VOC21[0] == "background"
    pal = voc_palette()
    assert pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]
    assert pal[255].tolist() == [224, 224, 192]


def test_dense_readers_registered():
    names = set(load_readers())
    assert {"voc2012", "ade20k", "pascal_context", "pascal_context59", "pascal_context60", "nyuv2", "navi"} <= names


# ---------------------------------------------------------------- VOC
def test_voc_splits_keys_and_both_roots(tmp_path):
    voc = make_voc(tmp_path)
    lens = {s: len(open_dataset("voc2012", voc, s)) for s in ("train", "val", "trainval")}
    assert lens == {"train": 4, "val": 4, "trainval": 8}
    a, b = open_dataset("voc2012", voc, "val"), open_dataset("voc2012", voc.parent, "val")  # VOC2012 or VOCdevkit
    assert a.image_key(0) == "JPEGImages/2007_000004.jpg" and a.fingerprint() == b.fingerprint()
    assert a.num_classes == 21 and a.ignore_index == 255 and a.class_names == VOC21


def test_voc_palette_indices_and_ignore(tmp_path):
    ds = open_dataset("voc2012", make_voc(tmp_path), "train")
    for i in range(len(ds)):
        item = ds[i]
        assert item["mask"].dtype == np.int64 and item["image"].size == (SIZE[1], SIZE[0])
        np.testing.assert_array_equal(item["mask"], expected_voc_mask(i))  # palette index, not the RGB colour


def test_voc_pixels_predict_labels(tmp_path):
    """The layout's colours carry the labels, so later tests can train probes on it."""
    ds = open_dataset("voc2012", make_voc(tmp_path), "train")
    item = ds[1]
    img, mask = np.asarray(item["image"], np.float32), item["mask"]
    keep = mask != 255
    centroids = {c: img[mask == c].mean(0) for c in np.unique(mask[keep])}
    classes = np.array(list(centroids))
    dist = np.stack([np.linalg.norm(img - centroids[c], axis=-1) for c in classes], -1)
    assert (classes[dist.argmin(-1)][keep] == mask[keep]).mean() > 0.99


@pytest.mark.parametrize("aug_list", ["train_aug", "deeplab", "mmseg"])
def test_voc_aug_lists_and_mask_sources(tmp_path, aug_list):
    ds = open_dataset("voc2012", make_voc(tmp_path, aug=True, aug_list=aug_list), "train", aug=True)
    assert len(ds) == 8 and ds.split == "train_aug"
    assert ds.mask_key(0) == "SegmentationClass/2007_000000.png"  # official mask preferred (mmseg does too)
    assert ds.mask_key(4) == "SegmentationClassAug/2008_000000.png"
    np.testing.assert_array_equal(ds.target(0)["mask"], expected_voc_mask(0))
    aug_mask = ds.target(5)["mask"]
    assert 255 not in aug_mask and (aug_mask[RECT] == RECT_CLASSES[5 % 3]).all()
    assert ds.describe()["masks_from_aug"] == 4
    val = open_dataset("voc2012", tmp_path / "VOCdevkit", "val", aug=True)
    assert len(val) == 4 and val.split == "val"


def test_voc_aug_errors(tmp_path):
    voc = make_voc(tmp_path, aug=True)
    (voc / "ImageSets/Segmentation/train_aug.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="train_aug.txt.*trainaug.txt.*aug.txt"):
        open_dataset("voc2012", voc, "train", aug=True)
    with pytest.raises(DataError, match="trainval"):
        open_dataset("voc2012", voc, "trainval", aug=True)


def test_voc_root_too_high_or_too_low(tmp_path):
    voc = make_voc(tmp_path / "data")
    with pytest.raises(DatasetLayoutError, match=f"root looks like {voc}"):
        open_dataset("voc2012", voc / "JPEGImages", "val")
    with pytest.raises(DatasetLayoutError, match=f"root looks like {voc}"):
        open_dataset("voc2012", tmp_path / "data", "val")  # the parent of VOCdevkit
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        open_dataset("voc2012", tmp_path / "nope", "val")


def test_voc_missing_split_file(tmp_path):
    voc = make_voc(tmp_path)
    (voc / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"looked for .*ImageSets/Segmentation/val\.txt"):
        open_dataset("voc2012", voc, "val")


def test_voc_bad_masks(tmp_path):
    voc = make_voc(tmp_path)
    ds = open_dataset("voc2012", voc, "train")
    mask_path = voc / "SegmentationClass/2007_000001.png"
    Image.fromarray(np.zeros((10, 12), np.uint8), "L").save(mask_path)
    with pytest.raises(DataError, match=r"2007_000001\.png is 12x10 .*2007_000001\.jpg is 64x48"):
        ds.target(1)
    bad = np.zeros(SIZE, np.uint8)
    bad[0, 0], bad[1, 1], bad[2, 2] = 21, 40, 255
    Image.fromarray(bad, "L").save(mask_path)
    with pytest.raises(DataError, match=r"2007_000001\.png has values 21, 40 outside 0\.\.20"):
        ds.target(1)
    Image.fromarray(np.zeros(SIZE + (3,), np.uint8), "RGB").save(mask_path)
    with pytest.raises(DataError, match="'RGB' image; expected class indices"):
        ds.target(1)


# ---------------------------------------------------------------- ADE20K / Pascal Context
def test_ade20k_reduce_zero_label_and_splits(tmp_path):
    ade = make_ade20k(tmp_path)
    ds = open_dataset("ade20k", ade, "val")
    assert len(ds) == 4 and len(open_dataset("ade20k", ade, "train")) == 4
    assert ds.image_key(0) == "images/validation/ADE_val_00000001.jpg" and ds.num_classes == 150
    m = ds.target(2)["mask"]
    assert (m[:2] == 255).all() and m[5, 5] == 0 and m[20, 20] == RECT_CLASSES[2]  # 0 -> 255, k -> k-1
    raw = np.full(SIZE, 150, np.uint8)
    Image.fromarray(raw, "L").save(ade / "annotations/validation/ADE_val_00000001.png")
    assert ds.target(0)["mask"].max() == 149
    raw[3, 3] = 151
    Image.fromarray(raw, "L").save(ade / "annotations/validation/ADE_val_00000001.png")
    with pytest.raises(DataError, match=r"values 151 outside 0\.\.150"):
        ds.target(0)


def test_ade20k_errors(tmp_path):
    ade = make_ade20k(tmp_path)
    with pytest.raises(DataError, match="expected 'train' or 'val'"):
        open_dataset("ade20k", ade, "validation")
    with pytest.raises(DatasetLayoutError, match=f"root looks like {ade}"):
        open_dataset("ade20k", ade / "images", "val")
    (ade / "annotations/validation/ADE_val_00000003.png").unlink()
    with pytest.raises(DatasetLayoutError, match="1 of 4 images .* no annotation.*ADE_val_00000003.png"):
        open_dataset("ade20k", ade, "val")


def test_pascal_context_59_and_60(tmp_path):
    pc = make_pascal_context(tmp_path)
    d60 = open_dataset("pascal_context60", pc.parent, "val")
    d59 = open_dataset("pascal_context", pc, "val", num_classes=59)
    assert len(d60) == len(d59) == 4 and len(open_dataset("pascal_context59", pc, "train")) == 4
    assert (d60.num_classes, d59.num_classes, d60.name, d59.name) == (60, 59, "pascal_context60", "pascal_context59")
    m60, m59 = d60.target(0)["mask"], d59.target(0)["mask"]
    k = RECT_CLASSES[4 % 3]
    assert (m60[0, 0], m60[10, 60], m60[20, 20]) == (59, 0, k)  # background is class 0
    assert (m59[0, 0], m59[10, 60], m59[20, 20]) == (58, 255, k - 1)  # background ignored, shift by one
    with pytest.raises(DataError, match="num_classes=None; expected 59 or 60"):
        open_dataset("pascal_context", pc, "val")


# ---------------------------------------------------------------- NYUv2
def test_nyu_mat_splits_orientation_and_depth(tmp_path):
    root = make_nyu_mat(tmp_path)
    train, test = open_dataset("nyuv2", root, "train"), open_dataset("nyuv2", root / "nyu_depth_v2_labeled.mat", "test")
    assert (len(train), len(test)) == (3, 3) and test.image_key(0) == "nyu_depth_v2_labeled.mat[0004]"
    depths, raw = _nyu_depths(6)
    item = test[1]  # 1-based index 5 -> depth stack row 4
    assert item["image"].size == (SIZE[1], SIZE[0])
    expected_image = _image((depths[4] * 40).astype(np.int64) % 256, 4)  # as the layout wrote it
    np.testing.assert_array_equal(np.asarray(item["image"]), np.asarray(expected_image))
    valid = (raw[4] > 0) & (raw[4] <= 10)
    np.testing.assert_array_equal(item["valid"], valid)
    np.testing.assert_allclose(item["depth"][valid], raw[4][valid])
    assert (item["depth"][~valid] == 0).all() and not item["valid"][:6, :8].any() and not item["valid"][-6:, -8:].any()
    inpainted = open_dataset("nyuv2", root, "test", depth_key="depths").target(1)
    assert inpainted["valid"].all() and np.allclose(inpainted["depth"], depths[4])
    far = open_dataset("nyuv2", root, "test", max_depth=15).target(1)
    assert far["valid"][-6:, -8:].all() and np.allclose(far["depth"][-6:, -8:], 12.0)
    np.testing.assert_allclose(item["K"], nyu_intrinsics(*SIZE))


def test_nyu_mat_normals_file_from_depth_and_center_crop(tmp_path):
    root = make_nyu_mat(tmp_path)
    f = open_dataset("nyuv2", root, "test", normals="file").target(0)
    assert f["normals_valid"].all() and angle_deg(f["normals"], PLANE_NORMAL).max() < 0.01
    full = open_dataset("nyuv2", root, "test", normals="from_depth", depth_key="depths").target(0)
    assert angle_deg(full["normals"], PLANE_NORMAL)[full["normals_valid"]].max() < 1.0
    assert not full["normals_valid"][0].any() and full["normals_valid"][1:-1, 1:-1].all()
    ds = open_dataset("nyuv2", root, "test", normals="from_depth", depth_key="depths", center_crop=True)
    crop = ds[0]
    assert crop["image"].size == (48, 48) and crop["depth"].shape == (48, 48)  # 64 wide -> columns 8:56
    np.testing.assert_array_equal(crop["depth"], full["depth"][:, 8:56])
    np.testing.assert_array_equal(crop["normals"], full["normals"][:, 8:56])
    assert crop["K"][0, 2] == pytest.approx(full["K"][0, 2] - 8)


def test_nyu_sync_layout(tmp_path):
    root = make_nyu_sync(tmp_path / "nyu")
    train, test = open_dataset("nyuv2", root, "train", normals="file"), open_dataset("nyuv2", root, "test")
    assert (len(train), len(test)) == (4, 4) and train.image_key(1) == "kitchen_0001a/rgb_00001.jpg"
    _, raw = _nyu_depths(8)
    t = train.target(1)
    valid = (raw[1] > 0) & (raw[1] <= 10)
    np.testing.assert_array_equal(t["valid"], valid)
    np.testing.assert_allclose(t["depth"][valid], raw[1][valid], atol=6e-4)  # millimetres -> metres
    assert t["K"][0, 0] == pytest.approx(nyu_intrinsics(*SIZE)[0, 0], abs=1e-3)
    assert angle_deg(t["normals"], PLANE_NORMAL).max() < 1.0  # (n + 1) / 2 * 255 PNG
    assert test[0]["image"].size == (SIZE[1], SIZE[0]) and train.describe()["layout"] == "sync"


def test_nyu_layout_errors(tmp_path):
    root = make_nyu_mat(tmp_path / "data" / "nyu", normals=False)
    with pytest.raises(DatasetLayoutError, match=r"normals='file' but .*normals/0004\.npy"):
        open_dataset("nyuv2", root, "test", normals="file").target(0)
    with pytest.raises(DatasetLayoutError, match=f"root looks like {root}"):
        open_dataset("nyuv2", tmp_path / "data", "test")
    with pytest.raises(DatasetLayoutError, match="nyu_depth_v2_labeled.mat / nyu_test.txt"):
        open_dataset("nyuv2", (tmp_path / "empty").mkdir() or tmp_path / "empty", "test")
    (root / "splits.mat").unlink()
    with pytest.raises(DatasetLayoutError, match=r"looked for .*splits\.mat"):
        open_dataset("nyuv2", root, "test")
    with pytest.raises(DataError, match="normals="):
        open_dataset("nyuv2", root, "test", normals=True)
    sync = make_nyu_sync(tmp_path / "sync", normals=False)
    Image.fromarray(np.zeros(SIZE, np.uint8), "L").save(sync / "kitchen_0000a/sync_depth_00000.png")
    with pytest.raises(DataError, match=r"sync_depth_00000\.png is a 'L' image; expected a 16-bit PNG in mm"):
        open_dataset("nyuv2", sync, "train").target(0)


def test_nyu_warns_once_on_millimetres(tmp_path):
    root = make_nyu_mat(tmp_path)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "r+") as f:
        f["rawDepths"][...] = f["rawDepths"][...] * 1000
    ds = open_dataset("nyuv2", root, "test", max_depth=1e9)
    with pytest.warns(UserWarning, match=r"nyu_depth_v2_labeled\.mat\[0004\] is 2.*millimetres"):
        ds.target(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.target(1)  # once per dataset
        open_dataset("nyuv2", make_nyu_mat(tmp_path / "m"), "test").target(0)  # metres: no warning


def test_nyu_dataset_pickles_for_workers(tmp_path):
    ds = open_dataset("nyuv2", make_nyu_mat(tmp_path), "train")
    first = ds.target(0)["depth"]
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone.target(0)["depth"], first)


def test_convert_probe3d_pkl(tmp_path):
    root = make_nyu_mat(tmp_path / "nyu", normals=False)
    n = np.random.default_rng(0).normal(size=(6, 3) + SIZE).astype(np.float32)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    data = {"depths": np.zeros((6,) + SIZE, np.float32), "images": np.zeros((6, 3) + SIZE, np.uint8), "snorms": n,
            "scene_types": [["kitchen"]] * 6, "train_indices": np.arange(3), "test_indices": np.arange(3, 6)}
    pkl = tmp_path / "nyuv2_snorm_all.pkl"
    for protocol in (2, 4, 5):
        pkl.write_bytes(pickle.dumps(data, protocol=protocol))
        shutil.rmtree(root / "normals", ignore_errors=True)
        assert convert_probe3d_pkl(pkl, root) == 6
        t = open_dataset("nyuv2", root, "test", normals="file").target(0)  # 1-based index 4 = pickle row 3
        np.testing.assert_allclose(t["normals"], n[3].transpose(1, 2, 0), atol=1e-6)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


def test_convert_probe3d_pkl_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"snorms": _Evil()}))
    with pytest.raises(DataError, match="refusing to load global"):
        convert_probe3d_pkl(pkl, tmp_path / "out")
    assert not (tmp_path / "EVIL_RAN").exists()


def test_eigen_crop_mask():
    m = eigen_crop_mask()
    assert m.shape == (480, 640) and m.sum() == 426 * 560
    assert m[45, 41] and m[470, 600] and not m[44, 41] and not m[45, 40] and not m[471, 600] and not m[45, 601]
    c = eigen_crop_mask(480, 480, center_crop=True)
    assert c.shape == (480, 480) and c[45:471].all() and not c[:45].any()


# ---------------------------------------------------------------- NAVI
def test_navi_splits_skip_and_stride(tmp_path):
    root = make_navi(tmp_path)
    lens = {s: len(open_dataset("navi", root, s, stride=1)) for s in ("train", "val", "trainval", "test")}
    assert lens == {"train": 16, "val": 8, "trainval": 24, "test": 8}  # 3 scenes/object: 2 train, 1 val
    tv = open_dataset("navi", root, "trainval", stride=1)
    keys = [tv.image_key(i) for i in range(len(tv))]
    assert not any("obj_zz" in k or "video" in k for k in keys)
    assert any("/multiview-00-pixel_5/" in k for k in keys) and any("/multiview_01_canon_t4i/" in k for k in keys)
    assert tv.describe()["skipped_objects"] == ["obj_zz_no_wild"]
    val = open_dataset("navi", root, "valid", stride=1)
    assert {val.image_key(i).split("/")[1] for i in range(len(val))} == {"multiview_01_canon_t4i"}
    test4 = open_dataset("navi", root, "test")  # Probe3D's [::4]
    assert [test4.image_key(i) for i in range(len(test4))] == ["obj_00/wild_set/images/000.jpg",
                                                                "obj_01/wild_set/images/000.jpg"]


def test_navi_depth_units_exif_and_intrinsics(tmp_path):
    np.testing.assert_allclose(decode_navi_depth(np.array([0, 1, 1311, 65535], np.uint16)),
                               [0, 655.35, 655.35 / 1311, 0.01], rtol=1e-6)
    ds = open_dataset("navi", make_navi(tmp_path), "test", stride=1, object_mask=True)
    raw = Image.open(ds.root / "obj_00/wild_set/images/000.jpg")
    assert raw.size == (NAVI_SIZE[0], NAVI_SIZE[1])  # stored rotated
    item = ds[0]
    img = np.asarray(item["image"], np.float32)
    assert item["image"].size == (NAVI_SIZE[1], NAVI_SIZE[0]) and img[:5, :, 0].mean() > img[-5:, :, 0].mean() + 100
    assert item["depth"].shape == NAVI_SIZE and item["depth"].dtype == np.float32
    np.testing.assert_array_equal(item["valid"], item["object_mask"])
    assert 0.3 < np.median(item["depth"][item["valid"]]) < 0.8  # metres
    np.testing.assert_allclose(item["K"], [[NAVI_FOCAL, 0, 27.5], [0, NAVI_FOCAL, 19.5], [0, 0, 1]])


def test_navi_normals_and_resized_copies(tmp_path):
    root = make_navi(tmp_path, objects=1)
    t = open_dataset("navi", root, "test", stride=1, normals="from_depth").target(1)
    err = angle_deg(t["normals"], PLANE_NORMAL)[t["normals_valid"]]
    assert t["normals_valid"].sum() > 0.8 * t["valid"].sum() and np.median(err) < 2.0
    assert not (t["normals_valid"] & ~t["valid"]).any()
    scene = root / "obj_00/wild_set"
    for name in ("001", "002"):  # Probe3D's resize_navi.py writes half-size downsampled_ copies
        for kind, ext in (("images", "jpg"), ("depth", "png")):
            im = Image.open(scene / kind / f"{name}.{ext}")
            im.resize((28, 20), Image.Resampling.NEAREST).save(scene / kind / f"downsampled_{name}.{ext}")
    ds = open_dataset("navi", root, "test", stride=1, image_prefix="downsampled_")
    assert len(ds) == 2 and ds.image_key(0) == "obj_00/wild_set/images/downsampled_001.jpg"
    np.testing.assert_allclose(ds.target(0)["K"][:2], [[30, 0, 13.5], [0, 30, 9.5]])


def test_navi_errors(tmp_path):
    root = make_navi(tmp_path)
    with pytest.raises(DatasetLayoutError, match=f"root looks like {root}"):
        open_dataset("navi", root / "obj_00", "test")
    with pytest.raises(DatasetLayoutError, match=f"root looks like {root}"):
        open_dataset("navi", tmp_path, "test")
    with pytest.raises(DataError, match="unknown split 'bogus'"):
        open_dataset("navi", root, "bogus")
    ds = open_dataset("navi", root, "test", stride=1)
    depth = root / "obj_00/wild_set/depth/001.png"
    Image.fromarray(np.ones((10, 10), np.uint16)).save(depth)
    with pytest.raises(DataError, match=r"depth .*001\.png is 10x10 \(WxH\) but image .*001\.jpg is 56x40"):
        ds.target(1)
    shutil.copy(root / "obj_01/wild_set/images/002.jpg", root / "obj_01/wild_set/images/777.jpg")
    with pytest.raises(DataError, match=r"777\.jpg has no entry in .*annotations\.json"):
        open_dataset("navi", root, "test")


# ---------------------------------------------------------------- geometry
@pytest.mark.parametrize("normal", [(0, 0, -1), (0.4, 0.1, -1), (-0.3, -0.5, -1)])
def test_normals_on_a_plane_within_a_degree(normal):
    n0 = np.array(normal, float) / np.linalg.norm(normal)
    K = intrinsics(50.0, 55.0, 25.3, 18.9)  # principal point off-centre: Probe3D's cx = cy = 0 would fail
    depth = nyu_plane_depth((40, 52), K, normal=n0)
    n, valid = normals_from_depth(depth, K)
    assert valid[1:-1, 1:-1].all() and not valid[0].any() and not valid[:, -1].any()
    assert angle_deg(n[valid], n0).max() < 1.0
    assert ((n * backproject(depth, K)).sum(-1)[valid] < 0).all()  # towards the camera


def test_normals_on_a_sphere():
    h, w, K = 64, 64, intrinsics(60.0, 60.0, 31.5, 31.5)
    centre, radius = np.array([0.1, -0.05, 2.0]), 0.6
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    rays = np.stack([(u - 31.5) / 60, (v - 31.5) / 60, np.ones((h, w))], -1)
    a, b, c = (rays ** 2).sum(-1), -2 * rays @ centre, centre @ centre - radius ** 2
    hit = b * b - 4 * a * c > 0
    t = np.where(hit, (-b - np.sqrt(np.maximum(b * b - 4 * a * c, 0))) / (2 * a), 0.0)
    truth = (rays * t[..., None] - centre) / radius
    n, valid = normals_from_depth(t.astype(np.float32), K)
    assert (valid <= hit).all() and valid.sum() > 0.9 * hit.sum()
    err = angle_deg(n, truth)
    from scipy.ndimage import binary_erosion
    inner = binary_erosion(hit, iterations=3)
    assert np.median(err[valid]) < 0.5 and err[inner].max() < 1.0


def test_normals_next_to_holes():
    K = intrinsics(50.0, 50.0, 20.0, 15.0)
    depth = np.full((30, 40), 2.0, np.float32)
    depth[10:20, 10:20] = 0
    n, valid = normals_from_depth(depth, K)
    assert not valid[10:20, 10:20].any() and valid[9, 15] and valid[15, 9]  # one-sided arms at the hole's edge
    assert angle_deg(n[valid], np.array([0, 0, -1.0])).max() < 1e-3
    assert not normals_from_depth(np.zeros((5, 5)), K)[1].any()


def test_geometry_helpers():
    K = intrinsics(100.0, 90.0, 31.5, 23.5)
    pts = backproject(np.full((48, 64), 2.0, np.float32), K)
    np.testing.assert_allclose(pts[23, 31], [-0.01, -0.5 * 2 / 90, 2.0], atol=1e-6)
    half = scale_intrinsics(K, (48, 64), (24, 32))
    np.testing.assert_allclose(half[:2], [[50, 0, 15.5], [0, 45, 11.5]])
    np.testing.assert_allclose(scale_intrinsics(half, (24, 32), (48, 64)), K)
    np.testing.assert_allclose(crop_intrinsics(K, 3, 8)[:2, 2], [23.5, 20.5])
    d = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(resize_nearest(d, (6, 8)), np.repeat(np.repeat(d, 2, 0), 2, 1))
    np.testing.assert_array_equal(resize_nearest(np.repeat(np.repeat(d, 2, 0), 2, 1), (3, 4)), d)
    assert resize_nearest(np.zeros((5, 7, 3)), (2, 3)).shape == (2, 3, 3)
    n = np.stack([PLANE_NORMAL] * 4).reshape(2, 2, 3)
    dec, ok = decode_normals(encode_normals_png(n))
    assert ok.all() and angle_deg(dec, PLANE_NORMAL).max() < 1.0
    dec, ok = decode_normals(np.zeros((3, 2, 2), np.float32))  # (3, H, W) accepted; zero vectors invalid
    assert dec.shape == (2, 2, 3) and not ok.any()
