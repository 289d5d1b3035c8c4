"""One-pass linear-probe sweep: exact SGD per head, selection, determinism, input handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tips_eval.decoders import linear_sweep as ls
from tips_eval.decoders.linear_sweep import LinearHeads, LinearProbeSweep, stratified_split

from tips_eval.errors import DataError


def blobs(seed, n, dim=16, classes=6, spread=0.9):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(100).normal(size=(classes, dim)) * spread
    y = rng.integers(0, classes, n)
    return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def test_batched_heads_equal_independent_torch_sgd_heads():
    torch.manual_seed(0)
    d, c = 7, 5
    lrs, wds = [0.5, 0.1, 0.02, 0.3], [0.0, 1e-2, 1e-3, 0.05]
    heads = LinearHeads(d, c, lrs, wds, 0.9, torch.Generator().manual_seed(1), torch.device("cpu"))
    ref = []
    for h in range(len(lrs)):
        lin = torch.nn.Linear(d, c)
        with torch.no_grad():
            lin.weight.copy_(heads.weight[:, h].T)
            lin.bias.copy_(heads.bias[h])
        opt = torch.optim.SGD([{"params": [lin.weight], "weight_decay": wds[h]}, {"params": [lin.bias], "weight_decay": 0.0}],
                              lr=lrs[h], momentum=0.9)
        ref.append((lin, opt))
    total = 6
    for it in range(total):
        x, y = torch.randn(9, d), torch.randint(0, c, (9,))
        factor = 0.5 * (1 + math.cos(math.pi * it / total))
        heads.step(x, y, factor)
        for h, (lin, opt) in enumerate(ref):
            for g in opt.param_groups:
                g["lr"] = lrs[h] * factor
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(x), y).backward()
            opt.step()
    for h, (lin, _) in enumerate(ref):
        torch.testing.assert_close(heads.weight[:, h].T, lin.weight.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(heads.bias[h], lin.bias.detach(), atol=1e-5, rtol=1e-5)
    # heads really train differently (an lr/wd mix-up across heads would show here)
    assert not torch.allclose(heads.weight[:, 0], heads.weight[:, 1], atol=1e-3)


def test_fit_selects_on_heldout_and_reports_the_protocol():
    x, y = blobs(0, 1500)
    xv, yv = blobs(1, 500)
    sweep = LinearProbeSweep(16, 6, epochs=4, batch_size=128, seed=0)
    res = sweep.fit(x, y, xv, yv, heldout_fraction=0.2)
    held = [h["heldout_top1"] for h in res["heads"]]
    assert len(held) == 13 * 3 and res["best_head"] == int(np.argmax(held))
    assert res["heldout_top1"] == max(held)
    assert held[0] < max(held) - 20  # the smallest lr barely moves from the init
    assert res["val_top1"] > 80 and res["sweep_head_val_top1"] > 80 and res["val_top5"] >= res["val_top1"]
    best = res["heads"][res["best_head"]]
    assert best["lr"] == pytest.approx(best["base_lr"] * 128 / 256) == pytest.approx(res["best_lr"])
    p = res["protocol"]
    assert p["base_lrs"] == list(ls.DINOV2_LRS) and p["wds"] == list(ls.DEFAULT_WDS)
    assert p["num_fit"] + p["num_heldout"] == 1500 and p["num_heldout"] == pytest.approx(300, abs=6)
    assert p["refit_on_full_train"] is True and p["num_heads"] == 39


def test_accuracy_agrees_with_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(2, 2000, dim=20, classes=8, spread=0.45)
    xv, yv = blobs(3, 1000, dim=20, classes=8, spread=0.45)
    res = LinearProbeSweep(20, 8, wds=(0.0,), epochs=6, batch_size=64, seed=0).fit(x, y, xv, yv)
    sk = 100 * LogisticRegression(max_iter=2000).fit(x, y).score(xv, yv)
    assert 40 < sk < 95  # a problem where the probe can be wrong
    assert abs(res["val_top1"] - sk) < 3.0


def test_deterministic_for_a_seed_and_memmap_input_matches(tmp_path):
    x, y = blobs(4, 600)
    xv, yv = blobs(5, 200)
    kw = {"lrs": (1e-3, 1e-2, 1e-1), "wds": (0.0, 1e-3), "epochs": 2, "batch_size": 32}
    a = LinearProbeSweep(16, 6, seed=3, **kw).fit(x, y, xv, yv)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    mm.flush()
    b = LinearProbeSweep(16, 6, seed=3, **kw).fit(np.load(tmp_path / "x.npy", mmap_mode="r"), y, torch.from_numpy(xv), yv)
    c = LinearProbeSweep(16, 6, seed=4, **kw).fit(x, y, xv, yv)
    for r in (a, b, c):
        r.pop("wall_time_s")
    assert a == b
    assert a["heads"] != c["heads"]


def test_each_epoch_reads_every_training_row_once_for_all_heads(monkeypatch):
    x, y = blobs(6, 300)
    reads = []
    orig = ls.FeatureRows.rows
    monkeypatch.setattr(ls.FeatureRows, "rows", lambda self, idx: reads.append(len(idx)) or orig(self, idx))
    sweep = LinearProbeSweep(16, 6, epochs=3, batch_size=50, refit=False)
    feats = ls.FeatureRows(x, "x")
    reads.clear()
    sweep.train_heads(feats, y, np.arange(300), sweep.grid, seed=0)
    assert sum(reads) == 3 * 300 and len(reads) == 3 * 6  # 39 heads, yet one read per batch


def test_stratified_split_is_per_class_and_seeded():
    y = np.array([0] * 50 + [1] * 20 + [2] * 1 + [3] * 2)
    tr, held = stratified_split(y, 0.1, seed=0)
    assert np.bincount(y[held], minlength=4).tolist() == [5, 2, 0, 1]  # a 2-item class still holds one out
    assert len(np.intersect1d(tr, held)) == 0 and len(tr) + len(held) == len(y)
    assert np.array_equal(held, stratified_split(y, 0.1, seed=0)[1])
    assert not np.array_equal(held, stratified_split(y, 0.1, seed=1)[1])


def test_bad_inputs_raise_data_error():
    x, y = blobs(7, 100)
    sweep = LinearProbeSweep(16, 6, lrs=(0.01,), wds=(0.0,), epochs=1)
    bad = x.copy()
    bad[42, 3] = np.nan
    with pytest.raises(DataError, match="train_x.*rows 0..99"):
        sweep.fit(bad, y, x, y)
    with pytest.raises(DataError, match="train_y has class id 6"):
        sweep.fit(x, np.where(y == 0, 6, y), x, y)
    with pytest.raises(DataError, match="val_x has dim 8"):
        sweep.fit(x, y, x[:, :8], y)
    with pytest.raises(DataError, match="val_y"):
        sweep.fit(x, y, x, y[:-1])
    with pytest.raises(DataError, match="heldout_fraction"):
        sweep.fit(x, y, x, y, heldout_fraction=0.0)
    with pytest.raises(DataError, match="lrs"):
        LinearProbeSweep(16, 6, lrs=(0.0,))
