"""Feature engine under faults: crash + resume, corrupt images, NaN/overflow, full disk."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tips_eval.data.base import ListDataset, load_rgb
from tips_eval.errors import BadImageError, CacheError, DataError
from tips_eval.features import CacheIndex, FeatureSet, FeatureSpec, extract_features
from tips_eval.features import runner as runner_mod
from tips_eval.features import store
from tips_eval.model_zoo.tips import random_tips

TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=14, grid=2, reg_tokens=1, mlp_hidden=64,
            swiglu=False, layer_scale=True, qkv_bias=True)


def write_pngs(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(p)
        out.append(str(p))
    return out


def truncated_jpeg(path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


@pytest.fixture
def enc():
    return random_tips(TINY, None, name="tiny-tips", image_size=28)


@pytest.fixture
def paths(tmp_path):
    return write_pngs(tmp_path / "imgs", 10)


def run(enc, ds, cache, spec=FeatureSpec(), **kw):
    kw = {"batch_size": 2, "shard_size": 4, "progress": False, "device": "cpu", **kw}
    return extract_features(enc, ds, spec, cache_dir=cache, **kw)


def patch_encode(monkeypatch, enc, after=None):
    """Wrap encode_image: log the first pixel of every image seen; ``after(pixels, feats, call)`` may alter."""
    seen, orig = [], enc.encode_image

    def wrapped(pixels, *a, **k):
        seen.append(pixels.shape[0])
        f = orig(pixels, *a, **k)
        return after(pixels, f, len(seen)) if after else f

    monkeypatch.setattr(enc, "encode_image", wrapped)
    return seen


def shard_records(fs_root):
    return sorted(store.read_shard_records(fs_root))


def test_resume_after_crash_computes_only_missing_shards(enc, paths, tmp_path, monkeypatch):
    ds = ListDataset(paths, name="toy")
    clean = run(enc, ds, tmp_path / "clean")

    def crash(pixels, f, call):
        if call == 5:  # probe, 2 batches of shard 0, 1 of shard 1, then boom
            raise RuntimeError("simulated crash")
        return f

    patch_encode(monkeypatch, enc, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(enc, ds, tmp_path / "c")
    root = tmp_path / "c" / clean.key
    assert shard_records(root) == [0] and not (root / "manifest.json").exists()
    entry = CacheIndex(tmp_path / "c").entries()[0]
    assert (entry.complete, entry.shards_done, entry.shards_total) == (False, 1, 3)
    with pytest.raises(CacheError, match="incomplete"):
        FeatureSet.open(root)

    seen = patch_encode(monkeypatch, enc)
    resumed = run(enc, ds, tmp_path / "c")
    assert sum(seen) == 6  # shards 1 and 2 (items 4..9); no probe, shard 0 reused
    assert resumed.manifest["extraction"]["shards_reused"] == 1
    for name in clean.arrays:
        np.testing.assert_array_equal(resumed.arrays[name], clean.arrays[name])


def test_resume_recomputes_a_finished_shard_whose_bytes_changed(enc, paths, tmp_path, monkeypatch):
    ds = ListDataset(paths, name="toy")
    clean = run(enc, ds, tmp_path / "clean")
    patch_encode(monkeypatch, enc, lambda p, f, call: (_ for _ in ()).throw(KeyboardInterrupt) if call == 6 else f)
    with pytest.raises(KeyboardInterrupt):
        run(enc, ds, tmp_path / "c")
    root = tmp_path / "c" / clean.key
    assert shard_records(root) == [0]
    mm = np.load(root / "global_tokens.npy", mmap_mode="r+")
    mm[1] = 7.0  # corrupt finished shard 0 behind the engine's back
    mm.flush()
    del mm
    seen = patch_encode(monkeypatch, enc)
    resumed = run(enc, ds, tmp_path / "c")
    assert sum(seen) == 10  # shard 0 failed its checksum and was recomputed
    np.testing.assert_array_equal(resumed.global_tokens, clean.global_tokens)


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_fails_with_one_line_naming_the_file(enc, paths, tmp_path, workers):
    bad = truncated_jpeg(tmp_path / "broken.jpg")
    ds = ListDataset(paths[:5] + [bad] + paths[5:], name="toy")
    with pytest.raises(BadImageError) as info:
        run(enc, ds, tmp_path / "c", num_workers=workers)
    msg = str(info.value)
    assert "broken.jpg" in msg and "\n" not in msg and "Traceback" not in msg and "worker" not in msg
    assert not (tmp_path / "c" / CacheIndex(tmp_path / "c").entries()[0].key / "manifest.json").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_skip_bad_images_records_them_and_keeps_rows_in_place(enc, paths, tmp_path, workers):
    bad0 = truncated_jpeg(tmp_path / "first.jpg")
    bad = truncated_jpeg(tmp_path / "broken.jpg")
    items = [bad0] + paths[:5] + [bad] + paths[5:]  # bad items 0 (the shape probe skips it) and 6
    fs = run(enc, ListDataset(items, name="toy"), tmp_path / "c", skip_bad_images=True, num_workers=workers)
    assert fs.n == 12 and fs.bad_indices == [0, 6] and fs.manifest["bad_indices"] == [0, 6]
    assert fs.manifest["bad_keys"] == [bad0, bad] and list(np.flatnonzero(~fs.good_mask)) == [0, 6]
    assert not fs.global_tokens[[0, 6]].any() and not fs.patch_tokens[[0, 6]].any()
    ref = enc.encode_image(torch.stack([enc.preprocess(load_rgb(p)) for p in paths]))
    np.testing.assert_allclose(fs.global_tokens[fs.good_mask], ref.global_tokens.numpy(), atol=1e-6)
    again = run(enc, ListDataset(items, name="toy"), tmp_path / "c", skip_bad_images=True)
    assert again.bad_indices == [0, 6]  # served from the cache, same record


def test_nan_features_fail_naming_dataset_and_first_bad_item(enc, paths, tmp_path, monkeypatch):
    gray = tmp_path / "gray.png"
    Image.new("RGB", (40, 30), (128, 128, 128)).save(gray)
    items = paths[:5] + [str(gray)] + paths[5:]

    def poison(pixels, f, call):  # NaN for the uniform image only
        uniform = pixels.flatten(2).std(-1).amax(1) == 0
        f.patch_tokens[uniform] = float("nan")
        return f

    patch_encode(monkeypatch, enc, poison)
    with pytest.raises(DataError) as info:
        run(enc, ListDataset(items, name="toyset"), tmp_path / "c", skip_bad_images=True)
    msg = str(info.value)
    assert "patch_tokens" in msg and "toyset" in msg and "item 5" in msg and "gray.png" in msg
    assert "\n" not in msg
    assert not any((tmp_path / "c").glob("*/manifest.json"))


def test_float16_overflow_is_an_error_with_a_hint(enc, paths, tmp_path, monkeypatch):
    def scale(pixels, f, call):
        f.patch_tokens.mul_(1e6)
        return f

    patch_encode(monkeypatch, enc, scale)
    ds = ListDataset(paths, name="toy")
    with pytest.raises(DataError, match="patch_dtype='float32'") as info:
        run(enc, ds, tmp_path / "c")
    assert "item 0" in str(info.value)
    fs = run(enc, ds, tmp_path / "c", FeatureSpec(patch_dtype="float32"))
    assert np.isfinite(fs.patch_tokens).all() and np.abs(fs.patch_tokens).max() > 65504


def test_disk_full_at_preallocation(enc, paths, tmp_path, monkeypatch):
    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(CacheError) as info:
        run(enc, ListDataset(paths, name="toy"), tmp_path / "c")
    msg = str(info.value)
    assert "disk full" in msg and str(tmp_path / "c") in msg and "\n" not in msg
    assert not any((tmp_path / "c").glob("*/manifest.json")) and not any((tmp_path / "c").glob("*/shards/*"))


def test_disk_full_while_sealing_a_shard_leaves_no_valid_partial(enc, paths, tmp_path, monkeypatch):
    ds = ListDataset(paths, name="toy")
    clean = run(enc, ds, tmp_path / "clean")
    calls = []
    real_fsync = runner_mod._fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 2:  # shard 0 (2 arrays) is flushed, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(runner_mod, "_fsync", fsync)
    with pytest.raises(CacheError, match="disk full") as info:
        run(enc, ds, tmp_path / "c")
    root = tmp_path / "c" / clean.key
    assert str(root) in str(info.value)
    assert shard_records(root) == [0] and not (root / "manifest.json").exists()
    with pytest.raises(CacheError):
        FeatureSet.open(root)
    monkeypatch.setattr(runner_mod, "_fsync", real_fsync)
    seen = patch_encode(monkeypatch, enc)
    fixed = run(enc, ds, tmp_path / "c")
    assert sum(seen) == 6
    np.testing.assert_array_equal(fixed.patch_tokens, clean.patch_tokens)


def test_disk_full_writing_a_record_is_a_cache_error(enc, paths, tmp_path, monkeypatch):
    real = store.os.replace

    def replace(src, dst):
        if "shards" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(store.os, "replace", replace)
    with pytest.raises(CacheError, match="disk full"):
        run(enc, ListDataset(paths, name="toy"), tmp_path / "c")
    assert not any((tmp_path / "c").glob("*/shards/*.json")) and not any((tmp_path / "c").glob("*/shards/.*tmp"))
