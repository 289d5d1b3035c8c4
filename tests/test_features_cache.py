"""Feature engine: values, cache key, cache hits, memory-mapped reads, tamper detection, CacheIndex, CLI."""

from __future__ import annotations

import json
import logging
import os
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

import tips_eval
from tips_eval.cli import main as cli_main
from tips_eval.data.base import ListDataset, load_rgb
from tips_eval.errors import CacheError
from tips_eval.features import CacheIndex, FeatureSet, FeatureSpec, extract_features
from tips_eval.features.runner import dir_lock
from tips_eval.model_zoo.tips import random_tips

TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=14, grid=2, reg_tokens=1, mlp_hidden=64,
            swiglu=False, layer_scale=True, qkv_bias=True)


def write_pngs(folder, n, seed=0, size=(30, 40)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def count_calls(monkeypatch, enc):
    """Record the batch size of every encode_image call."""
    calls, orig = [], enc.encode_image

    def counted(pixels, *a, **k):
        calls.append(len(pixels))
        return orig(pixels, *a, **k)

    monkeypatch.setattr(enc, "encode_image", counted)
    return calls


def reference(enc, paths, layers=(), kinds=(), flip=False):
    imgs = [load_rgb(p) for p in paths]
    if flip:
        imgs = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in imgs]
    return enc.encode_image(torch.stack([enc.preprocess(im) for im in imgs]), layers=layers, kinds=kinds)


@pytest.fixture
def tiny_tips():
    return random_tips(TINY, None, name="tiny-tips", image_size=28)


@pytest.fixture
def paths(tmp_path):
    return write_pngs(tmp_path / "imgs", 10)


def run(enc, ds, spec=FeatureSpec(), cache=None, **kw):
    kw = {"batch_size": 3, "shard_size": 4, "progress": False, "device": "cpu", **kw}
    return extract_features(enc, ds, spec, cache_dir=cache, **kw)


def test_values_match_direct_forward_in_dataset_order(tiny_tips, paths, tmp_path):
    spec = FeatureSpec(layers=(0, -1), kinds=("value",))
    fs = run(tiny_tips, ListDataset(paths, name="toy"), spec, tmp_path / "c")
    ref = reference(tiny_tips, paths, layers=[0, 1], kinds=("value",))
    assert fs.n == 10 and fs.global_names == ("cls1", "cls2") and fs.layer_indices == (0, 1)
    assert fs.global_tokens.dtype == np.float32 and fs.patch_tokens.dtype == np.float16
    np.testing.assert_allclose(fs.global_tokens, ref.global_tokens.numpy(), atol=1e-6)
    np.testing.assert_array_equal(fs.patch_tokens, ref.patch_tokens.numpy().astype(np.float16))
    np.testing.assert_allclose(fs.global_token("cls2"), ref.global_token("cls2").numpy(), atol=1e-6)
    for (c, p), (rc, rp) in zip(fs.layers, ref.layers):
        np.testing.assert_allclose(c, rc.numpy(), atol=1e-6)
        np.testing.assert_array_equal(p, rp.numpy().astype(np.float16))
    np.testing.assert_array_equal(fs.value_tokens, ref.value_tokens.numpy().astype(np.float16))
    assert fs.bad_indices == [] and fs.good_mask.all()
    m = fs.manifest
    assert m["n"] == 10 and m["shard_size"] == 4 and len(m["checksums"]["patch_tokens"]) == 3
    assert m["extraction"]["precision"] == "32" and m["dataset_name"] == "toy" and m["model"] == "tiny-tips"
    assert fs.path == tmp_path / "c" / fs.key and (fs.path / "manifest.json").is_file()
    assert not (fs.path / "progress.json").exists() and not (fs.path / "shards").exists()


def test_flip_patch_false_and_float32_storage(tiny_tips, paths, tmp_path):
    ds = ListDataset(paths, name="toy")
    fs = run(tiny_tips, ds, FeatureSpec(flip=True, patch=False, global_dtype="float32"), tmp_path / "c")
    assert fs.patch_tokens is None and fs.value_tokens is None and fs.layers == []
    np.testing.assert_allclose(fs.global_tokens, reference(tiny_tips, paths, flip=True).global_tokens, atol=1e-6)
    fs32 = run(tiny_tips, ds, FeatureSpec(patch_dtype="float32"), tmp_path / "c")
    np.testing.assert_allclose(fs32.patch_tokens, reference(tiny_tips, paths).patch_tokens, atol=1e-6)


def test_cache_hit_does_no_forward_and_decodes_nothing(tiny_tips, paths, tmp_path, monkeypatch, caplog):
    ds = ListDataset(paths, name="toy")
    calls = count_calls(monkeypatch, tiny_tips)
    first = run(tiny_tips, ds, cache=tmp_path / "c")
    assert sum(calls) == 1 + 10  # one-image shape probe, then every item once
    calls.clear()
    monkeypatch.setattr(ds, "load_image", lambda i: pytest.fail("cache hit decoded an image"))
    with caplog.at_level(logging.INFO, logger="tips_eval.features"):
        again = run(tiny_tips, ds, cache=tmp_path / "c", batch_size=7)  # loader settings are not in the key
    assert calls == [] and again.key == first.key
    assert any("cache hit" in r.message and first.key in r.message for r in caplog.records)
    np.testing.assert_array_equal(again.patch_tokens, first.patch_tokens)


def test_key_covers_weights_data_transform_spec_precision(tiny_tips, paths, tmp_path):
    from tips_eval.features.spec import cache_key

    ds = ListDataset(paths, name="toy")
    pre = tiny_tips.preprocess

    def key(enc=tiny_tips, d=ds, spec=FeatureSpec(), tr=pre, prec="32"):
        return cache_key(enc, d, spec, tr, prec)[0]

    base = key()
    assert base == key(spec=FeatureSpec(layers=()))  # equal specs, equal keys
    other_weights = random_tips(TINY, None, name="tiny-tips", image_size=28, seed=1)
    variants = [key(enc=other_weights), key(d=ListDataset(paths[:-1], name="toy")),
                key(d=ListDataset(paths, name="toy", split="val")), key(tr=pre.replace(resize="shortest")),
                key(spec=FeatureSpec(flip=True)), key(spec=FeatureSpec(patch_dtype="float32")),
                key(spec=FeatureSpec(layers=(1,))), key(spec=FeatureSpec(kinds=("value",))),
                key(spec=FeatureSpec(patch=False)), key(prec="bf16")]
    assert len({base, *variants}) == len(variants) + 1
    # -1 and the last block are the same layer
    assert key(spec=FeatureSpec(layers=(-1,))) == key(spec=FeatureSpec(layers=(1,)))
    assert base.startswith("tiny-tips-toy-test-")


def test_memmapped_reads_stay_bounded(tmp_path):
    enc = tips_eval.load_encoder("raw-pixels", image_size=56)
    paths = write_pngs(tmp_path / "imgs", 48, size=(56, 56))
    fs = run(enc, ListDataset(paths, name="big"), cache=tmp_path / "c", batch_size=16, shard_size=16)
    assert isinstance(fs.patch_tokens, np.memmap) and isinstance(fs.global_token("mean"), np.memmap)
    assert not fs.patch_tokens.flags.writeable
    with pytest.raises(ValueError):
        fs.patch_tokens[0, 0, 0, 0] = 1
    full = fs.patch_tokens.nbytes  # 48 x 4 x 4 x 588 float16
    chunk_bytes = full // 12
    tracemalloc.start()
    seen, total = 0, 0.0
    for start, rows in fs.iter_chunks("patch_tokens", chunk=4):
        assert type(rows) is np.ndarray and start == seen and rows.shape[0] == 4
        seen += len(rows)
        total += float(rows.astype(np.float32).sum())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == 48 and peak < 4 * chunk_bytes < full
    assert np.isclose(total, float(fs.patch_tokens.astype(np.float64).sum()), rtol=1e-5)
    rows = [r for _, r in fs.iter_chunks("mean", chunk=20)]
    assert [len(r) for r in rows] == [20, 20, 8] and rows[0].shape[1:] == (588,)
    with pytest.raises(KeyError):
        next(fs.iter_chunks("nope"))


def _tamper(path, array, row):
    mm = np.load(path / f"{array}.npy", mmap_mode="r+")
    mm[row] = mm[row] + 1
    mm.flush()
    del mm


def test_tampered_shard_is_recomputed_not_used(tiny_tips, paths, tmp_path, monkeypatch, caplog):
    ds = ListDataset(paths, name="toy")
    clean = run(tiny_tips, ds, cache=tmp_path / "c")
    good = np.array(clean.patch_tokens)
    _tamper(clean.path, "patch_tokens", 5)  # shard 1 = items 4..7
    assert CacheIndex(tmp_path / "c").verify()[clean.key].startswith("invalid")
    calls = count_calls(monkeypatch, tiny_tips)
    with caplog.at_level(logging.WARNING, logger="tips_eval.features"):
        fixed = run(tiny_tips, ds, cache=tmp_path / "c")
    assert sum(calls) == 4  # only shard 1, no shape probe
    assert any("checksum" in r.message for r in caplog.records)
    np.testing.assert_array_equal(fixed.patch_tokens, good)
    assert CacheIndex(tmp_path / "c").verify() == {clean.key: "ok"}


def test_tampered_bytes_with_restored_mtime_caught_by_full_verify(tiny_tips, paths, tmp_path, monkeypatch):
    ds = ListDataset(paths, name="toy")
    clean = run(tiny_tips, ds, cache=tmp_path / "c")
    good = np.array(clean.global_tokens)
    st = os.stat(clean.path / "global_tokens.npy")
    _tamper(clean.path, "global_tokens", 9)
    os.utime(clean.path / "global_tokens.npy", ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(CacheError, match="checksum mismatch"):
        FeatureSet.open(clean.path, verify="full")
    calls = count_calls(monkeypatch, tiny_tips)
    fixed = run(tiny_tips, ds, cache=tmp_path / "c", verify="full")
    assert sum(calls) == 2  # shard 2 = items 8, 9
    np.testing.assert_allclose(fixed.global_tokens, good, atol=1e-6)


@pytest.mark.parametrize("edit", ["field", "truncate"])
def test_tampered_manifest_is_rebuilt(tiny_tips, paths, tmp_path, monkeypatch, caplog, edit):
    ds = ListDataset(paths, name="toy")
    clean = run(tiny_tips, ds, cache=tmp_path / "c")
    good = np.array(clean.patch_tokens)
    mpath = clean.path / "manifest.json"
    if edit == "field":
        m = json.loads(mpath.read_text())
        m["checksums"]["patch_tokens"][0] = "0" * 32
        mpath.write_text(json.dumps(m))
    else:
        mpath.write_text(mpath.read_text()[:50])
    assert not CacheIndex(tmp_path / "c").entries()[0].complete
    with pytest.raises(CacheError):
        FeatureSet.open(clean.path)
    calls = count_calls(monkeypatch, tiny_tips)
    with caplog.at_level(logging.WARNING, logger="tips_eval.features"):
        fixed = run(tiny_tips, ds, cache=tmp_path / "c")
    assert sum(calls) == 1 + 10 and any("rebuild" in r.message for r in caplog.records)
    np.testing.assert_array_equal(fixed.patch_tokens, good)


def test_cache_index_ls_rm_verify_and_lock(tiny_tips, paths, tmp_path):
    ds = ListDataset(paths, name="toy")
    a = run(tiny_tips, ds, cache=tmp_path / "c")
    b = run(tiny_tips, ListDataset(paths[:3], name="small", split="val"), cache=tmp_path / "c")
    index = CacheIndex(tmp_path / "c")
    rows = {e.key: e for e in index.entries()}
    assert set(rows) == {a.key, b.key} and len(index) == 2
    ea = rows[a.key]
    assert (ea.model, ea.dataset, ea.split, ea.n, ea.complete, ea.shards_total) == ("tiny-tips", "toy", "test", 10,
                                                                                    True, 3)
    assert ea.size_bytes >= a.nbytes() and rows[b.key].split == "val"
    assert index.open(b.key[:-6]).n == 3  # unique prefix
    with dir_lock(a.path):
        with pytest.raises(CacheError, match="being written"):
            index.remove(a.key)
    assert index.remove(a.key) > 0 and not a.path.exists() and len(index) == 1
    with pytest.raises(KeyError):
        index.find(a.key)


def test_cli_cache_commands(tiny_tips, paths, tmp_path, capsys):
    fs = run(tiny_tips, ListDataset(paths, name="toy"), cache=tmp_path / "c")
    d = str(tmp_path / "c")
    assert cli_main(["cache", "ls", "--dir", d, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["key"], r["n"], r["complete"]) for r in rows] == [(fs.key, 10, True)]
    assert cli_main(["cache", "ls", "--dir", d]) == 0
    assert fs.key in capsys.readouterr().out
    assert cli_main(["cache", "verify", "--dir", d]) == 0
    _tamper(fs.path, "patch_tokens", 0)
    assert cli_main(["cache", "verify", "--dir", d]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert cli_main(["cache", "rm", "--dir", d, "nope"]) == 2
    assert "not in" in capsys.readouterr().err
    assert cli_main(["cache", "rm", "--dir", d, "--all"]) == 0
    assert CacheIndex(d).entries() == []
    with pytest.raises(SystemExit):
        cli_main(["cache", "ls", "--help"])
    assert "--format" in capsys.readouterr().out


def test_bad_arguments(tiny_tips, paths, tmp_path):
    ds = ListDataset(paths, name="toy")
    with pytest.raises(ValueError, match="precision"):
        run(tiny_tips, ds, cache=tmp_path, precision="fp8")
    with pytest.raises(ValueError, match="twice"):
        run(tiny_tips, ds, FeatureSpec(layers=(1, -1)), cache=tmp_path)
    with pytest.raises(ValueError, match="kind"):
        FeatureSpec(kinds=("attn",))
    with pytest.raises(ValueError, match="patch_dtype"):
        FeatureSpec(patch_dtype="bfloat16")
    with pytest.raises(tips_eval.errors.DataError, match="empty"):
        run(tiny_tips, ListDataset([], name="none"), cache=tmp_path)


def test_bf16_autocast_is_keyed_and_recorded(tiny_tips, paths, tmp_path):
    ds = ListDataset(paths, name="toy")
    fp32 = run(tiny_tips, ds, cache=tmp_path / "c")
    bf16 = run(tiny_tips, ds, cache=tmp_path / "c", precision="bf16")
    assert bf16.key != fp32.key and bf16.manifest["extraction"]["precision"] == "bf16"
    diff = np.abs(bf16.global_tokens - fp32.global_tokens)
    assert 0 < diff.max() < 0.1 * np.abs(fp32.global_tokens).max()  # autocast really ran, and is close


def test_concurrent_extraction_of_one_key_waits_for_the_lock(tiny_tips, paths, tmp_path):
    import threading
    import time

    ds = ListDataset(paths, name="toy")
    from tips_eval.features.spec import cache_key

    key = cache_key(tiny_tips, ds, FeatureSpec(), tiny_tips.preprocess, "32")[0]
    out = {}
    with dir_lock(tmp_path / "c" / key):
        t = threading.Thread(target=lambda: out.setdefault("fs", run(tiny_tips, ds, cache=tmp_path / "c")))
        t.start()
        time.sleep(0.5)
        assert t.is_alive() and not (tmp_path / "c" / key).exists()
    t.join(60)
    assert out["fs"].key == key and out["fs"].n == 10
