"""A real 2-process Lightning DDP extraction (gloo, CPU) equals the 1-process one, in dataset order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from tips_eval.data.base import ListDataset
from tips_eval.features import FeatureSet, FeatureSpec, extract_features
from tips_eval.model_zoo.tips import random_tips

TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=14, grid=2, reg_tokens=1, mlp_hidden=64,
            swiglu=False, layer_scale=True, qkv_bias=True)

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from tips_eval.data.base import ListDataset
    from tips_eval.features import FeatureSpec, extract_features
    from tips_eval.model_zoo.tips import random_tips

    cache, paths = sys.argv[1], sys.argv[2:]
    enc = random_tips({tiny!r}, None, name="tiny-tips", image_size=28)
    ds = ListDataset(paths, name="toy")
    fs = extract_features(enc, ds, FeatureSpec(layers=(0,)), cache_dir=cache, batch_size=3, shard_size=2,
                          device="cpu", devices=2, strategy="ddp", progress=False, skip_bad_images=True)
    # a second extraction in the same processes reuses the process group
    fs2 = extract_features(enc, ListDataset(paths[:3], name="toy3"), FeatureSpec(), cache_dir=cache,
                           batch_size=2, shard_size=1, device="cpu", devices=2, strategy="ddp", progress=False,
                           skip_bad_images=True)
    with open(os.path.join(cache, f"result-{{os.getpid()}}.json"), "w") as f:
        json.dump({{"key": fs.key, "key2": fs2.key, "world": fs.manifest["extraction"]["world_size"],
                   "bad": fs.bad_indices}}, f)
""")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_equal_one_process(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    paths = []
    for i in range(11):
        p = tmp_path / "imgs" / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    (tmp_path / "imgs" / "img07.png").write_bytes(b"not a png")  # a bad item on rank 1's shard 3

    script = tmp_path / "extract_ddp.py"
    script.write_text(SCRIPT.format(tiny=TINY))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for k in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RANK"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "ddp"), *paths], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "ddp").glob("result-*.json")]
    assert len(results) == 2 and results[0] == results[1], proc.stdout  # both ranks got the same FeatureSet
    info = results[0]
    assert info["world"] == 2 and info["bad"] == [7]

    enc = random_tips(TINY, None, name="tiny-tips", image_size=28)
    single = extract_features(enc, ListDataset(paths, name="toy"), FeatureSpec(layers=(0,)),
                              cache_dir=tmp_path / "one", batch_size=4, shard_size=2, device="cpu",
                              progress=False, skip_bad_images=True)
    assert single.key == info["key"] and single.manifest["extraction"]["world_size"] == 1

    multi = FeatureSet.open(tmp_path / "ddp" / info["key"], verify="full")
    assert multi.bad_indices == single.bad_indices == [7]
    assert set(multi.arrays) == set(single.arrays) == {"global_tokens", "patch_tokens", "layer00_cls",
                                                       "layer00_patch"}
    for name in single.arrays:
        np.testing.assert_allclose(np.asarray(multi.arrays[name], np.float32),
                                   np.asarray(single.arrays[name], np.float32), atol=1e-6, err_msg=name)
    assert not np.allclose(multi.global_tokens[0], multi.global_tokens[1])  # rows really differ per item
    two = FeatureSet.open(tmp_path / "ddp" / info["key2"])
    one = extract_features(enc, ListDataset(paths[:3], name="toy3"), cache_dir=tmp_path / "one", device="cpu",
                           progress=False, batch_size=2, shard_size=1)
    np.testing.assert_allclose(two.global_tokens, one.global_tokens, atol=1e-6)


SPAWN_SCRIPT = textwrap.dedent("""
    import sys
    from tips_eval.data.base import ListDataset
    from tips_eval.features import FeatureSpec, extract_features
    from tips_eval.model_zoo.tips import random_tips

    def main():
        cache, paths = sys.argv[1], sys.argv[2:]
        enc = random_tips({tiny!r}, None, name="tiny-tips", image_size=28)
        fs = extract_features(enc, ListDataset(paths, name="toy"), FeatureSpec(patch_dtype="float32"),
                              cache_dir=cache, batch_size=2, shard_size=2, device="cpu", devices=2,
                              strategy="ddp_spawn", progress=False)
        print("KEY", fs.key, fs.manifest["extraction"]["world_size"])

    if __name__ == "__main__":
        main()
""")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_spawn_strategy_pickles_the_job_and_matches(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "imgs").mkdir()
    paths = []
    for i in range(5):
        p = tmp_path / "imgs" / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    script = tmp_path / "extract_spawn.py"
    script.write_text(SPAWN_SCRIPT.format(tiny=TINY))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "RANK")}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "ddp"), *paths], cwd=tmp_path, timeout=240,
                          env={**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    key, world = next(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("KEY"))
    assert world == "2"
    enc = random_tips(TINY, None, name="tiny-tips", image_size=28)
    one = extract_features(enc, ListDataset(paths, name="toy"), FeatureSpec(patch_dtype="float32"),
                           cache_dir=tmp_path / "one", device="cpu", progress=False)
    multi = FeatureSet.open(tmp_path / "ddp" / key)
    np.testing.assert_allclose(multi.patch_tokens, one.patch_tokens, atol=1e-6)
    np.testing.assert_allclose(multi.global_tokens, one.global_tokens, atol=1e-6)
